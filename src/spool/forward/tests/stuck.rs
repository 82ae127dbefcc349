//! The forwarder when one thing stays broken: the dead-letter topic refusing the records it
//! must set aside, or one partition taking nothing while the others take everything.

use std::time::Duration;

use rdkafka::error::RDKafkaErrorCode;

use super::{CHATS, FakeSink, Harness};
use std::sync::Arc;

/// Runs `case` on a paused clock on a thread of its own: a forwarder that spins without
/// awaiting never lets virtual time pass, and the thread's deadline turns that into a failure.
fn on_paused_clock(case: impl std::future::Future<Output = ()> + Send + 'static) {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        runtime.block_on(case);
        let _ = done.send(());
    });
    match finished.recv_timeout(Duration::from_secs(60)) {
        Ok(()) => {}
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("the forwarder never yielded: it spins instead of backing off")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("the case failed"),
    }
}

fn dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "omnichat-bridge-stuck-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn a_set_aside_the_dead_letter_topic_refuses_backs_off_says_why_and_stops_when_told() {
    on_paused_clock(async {
        let sink = Arc::new(FakeSink::default());
        sink.0.lock().expect("sink").deadletter_refuses =
            Some(RDKafkaErrorCode::TopicAuthorizationFailed);
        let mut harness = Harness::open(dir("refused"), sink.clone(), Vec::new(), Vec::new());
        // Record 2 is refused for good, on its own too; the others wait behind it.
        harness.append(5, 3);
        for _ in 0..20 {
            for partition in 0..CHATS {
                sink.0.lock().expect("sink").deliver(partition, u8::MAX);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        {
            let kafka = sink.0.lock().expect("sink");
            assert!(
                (1..=12).contains(&kafka.deadletter_attempts),
                "{} set-aside attempts in 12 s: no backoff",
                kafka.deadletter_attempts
            );
            assert!(
                kafka.replacements <= kafka.deadletter_attempts + 2,
                "{} producer replacements for {} attempts",
                kafka.replacements,
                kafka.deadletter_attempts
            );
        }
        let error = crate::spool::lock(&harness.shared.forward_error).clone();
        assert!(
            error.as_deref().is_some_and(|e| e.contains("set aside")),
            "readiness does not say why forwarding is held: {error:?}"
        );

        // The cause goes away: the record is set aside and the rest goes on.
        sink.0.lock().expect("sink").deadletter_refuses = None;
        for _ in 0..400 {
            for partition in 0..CHATS {
                sink.0.lock().expect("sink").deliver(partition, u8::MAX);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            if harness
                .shared
                .records
                .load(std::sync::atomic::Ordering::Acquire)
                == 0
            {
                break;
            }
        }
        assert_eq!(sink.0.lock().expect("sink").dead_letters, vec![2]);
        assert_eq!(
            crate::spool::lock(&harness.shared.forward_error).clone(),
            None
        );
        drop(harness.restart().await);
    });
}

#[test]
fn a_set_aside_that_cannot_reach_the_quarantine_backs_off_and_honours_stop() {
    on_paused_clock(async {
        let sink = Arc::new(FakeSink::default());
        sink.0.lock().expect("sink").deadletter_refuses = Some(RDKafkaErrorCode::PolicyViolation);
        let dir = dir("quarantine");
        std::fs::create_dir_all(&dir).expect("dir");
        // The quarantine cannot be created: a file stands where its directory would be.
        std::fs::write(dir.join("quarantine"), b"not a directory").expect("blocker");
        let mut harness = Harness::open(dir.clone(), sink.clone(), Vec::new(), Vec::new());
        harness.append(3, 3);
        for _ in 0..20 {
            for partition in 0..CHATS {
                sink.0.lock().expect("sink").deliver(partition, u8::MAX);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        let attempts = sink.0.lock().expect("sink").deadletter_attempts;
        assert!((1..=12).contains(&attempts), "{attempts} attempts in 12 s");
        let error = crate::spool::lock(&harness.shared.forward_error).clone();
        assert!(
            error.as_deref().is_some_and(|e| e.contains("quarantine")),
            "{error:?}"
        );
        // SIGTERM: the forwarder stops although the record is still at the head.
        let stop = harness.stop.take().expect("running");
        let _ = stop.send(());
        let task = harness.task.take().expect("task");
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("the forwarder stops when told")
            .expect("forwarder ends");
    });
}

#[test]
fn a_replacement_sends_again_only_what_kafka_did_not_acknowledge() {
    on_paused_clock(async {
        let sink = Arc::new(FakeSink::default());
        let mut harness = Harness::open(dir("partition"), sink.clone(), Vec::new(), Vec::new());
        // Partition 0 takes nothing (its leader is away); 1 and 2 take everything. More
        // records than tokio's cooperative budget lets one turn poll (128).
        harness.append(150, 0);
        harness.append(150, 0);
        for _ in 0..10 {
            for partition in 1..CHATS {
                sink.0.lock().expect("sink").deliver(partition, u8::MAX);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for _ in 0..3 {
            let generation = sink.0.lock().expect("sink").generation;
            super::Sink::replace(&*sink, generation, "stuck");
            for _ in 0..10 {
                for partition in 1..CHATS {
                    sink.0.lock().expect("sink").deliver(partition, u8::MAX);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        {
            let kafka = sink.0.lock().expect("sink");
            let copies_on_healthy = (0..300u64)
                .filter(|id| id % CHATS != 0)
                .map(|id| kafka.sent.get(&id).copied().unwrap_or(0))
                .max();
            assert_eq!(
                copies_on_healthy,
                Some(1),
                "acknowledged records were sent again by replacements: {:?}",
                kafka.resent_after_ack
            );
        }
        // The partition comes back: everything lands, each chat in order.
        for _ in 0..100 {
            for partition in 0..CHATS {
                sink.0.lock().expect("sink").deliver(partition, u8::MAX);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let landed = sink.0.lock().expect("sink").partitions.get(&0).cloned();
        let expected: Vec<u64> = (0..300).filter(|id| id % CHATS == 0).collect();
        let mut first = Vec::new();
        for id in landed.unwrap_or_default() {
            if !first.contains(&id) {
                first.push(id);
            }
        }
        assert_eq!(first, expected);
        drop(harness.restart().await);
    });
}
