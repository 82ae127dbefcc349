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
        let (attempts, replacements) = {
            let kafka = sink.0.lock().expect("sink");
            (kafka.deadletter_attempts, kafka.replacements)
        };
        assert!((1..=12).contains(&attempts), "{attempts} attempts in 12 s");
        assert!(
            replacements <= 3,
            "{replacements} producer replacements: one per quarantine attempt"
        );
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

/// A producer that acknowledges every record as it is handed over: Kafka always keeping up.
#[derive(Default)]
struct InstantSink {
    failed: tokio::sync::watch::Sender<u64>,
}

impl super::Sink for InstantSink {
    fn generation(&self) -> Option<u64> {
        Some(0)
    }

    fn send(
        &self,
        _record: &crate::publish::Record,
        _generation: u64,
    ) -> Result<crate::publish::kafka::Delivery, crate::publish::kafka::SendError> {
        let (reply, delivery) = tokio::sync::oneshot::channel();
        let acked = crate::publish::kafka::Acked {
            partition: 0,
            offset: 0,
        };
        let _ = reply.send(Ok(acked));
        Ok(delivery)
    }

    fn replace(&self, _generation: u64, _why: &str) {}

    fn failures(&self) -> tokio::sync::watch::Receiver<u64> {
        self.failed.subscribe()
    }
}

/// While a backlog drains as fast as Kafka takes it, the forwarder always has an outcome to
/// take; its checkpoint (which deletes forwarded segments and frees their room) must still
/// come every 200 ms, not only once it goes idle.
#[test]
fn a_draining_backlog_deletes_forwarded_segments_as_it_goes() {
    use crate::spool::segments::{self, SegmentWriter};
    use std::sync::atomic::Ordering;
    let dir = dir("drain");
    let recovered = segments::recover(&dir, crate::config::OnDamage::Refuse).expect("recover");
    let mut writer = SegmentWriter::new(&dir, recovered.next_segment, 256 << 10);
    let shared = Arc::new(crate::spool::Shared::new(
        u64::MAX,
        0,
        &recovered,
        writer.end(),
        Arc::default(),
    ));
    const RECORDS: u64 = 600_000;
    let mut frames = Vec::new();
    for id in 0..RECORDS {
        frames.extend(segments::encode(&super::record(id, false), id));
        if frames.len() > 64 << 10 || id == RECORDS - 1 {
            let (end, _) = writer.append(&frames).expect("append");
            frames.clear();
            shared.committed.send_replace(end);
        }
    }
    shared.records.store(RECORDS, Ordering::Release);
    let segment_files = || {
        std::fs::read_dir(&dir)
            .expect("dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
            .count()
    };
    let at_start = segment_files();
    let forwarder = super::super::Forwarder::new(
        &dir,
        recovered.start,
        shared.clone(),
        Arc::new(InstantSink::default()),
        Arc::new(crate::spool::quarantine::Quarantine::new(
            &dir,
            shared.clone(),
        )),
        Arc::from(super::DEADLETTER),
        1 << 20,
    );
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let thread = std::thread::spawn(move || forwarder.run_until(stopped));
    let started = std::time::Instant::now();
    let mut first_deletion = None;
    while shared.records.load(Ordering::Acquire) > 0 {
        if first_deletion.is_none() && segment_files() < at_start {
            first_deletion = Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let drained = started.elapsed();
    let _ = stop.send(());
    thread.join().expect("forwarder");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        drained < Duration::from_millis(600) || first_deletion.is_some_and(|d| d < drained / 2),
        "{at_start} segments drained in {drained:?}; the first was deleted at {first_deletion:?}"
    );
}

#[test]
fn a_record_set_aside_to_the_quarantine_does_not_hold_forwarding_up() {
    on_paused_clock(async {
        let sink = Arc::new(FakeSink::default());
        sink.0.lock().expect("sink").deadletter_refuses = Some(RDKafkaErrorCode::PolicyViolation);
        let mut harness = Harness::open(dir("quarantined"), sink.clone(), Vec::new(), Vec::new());
        harness.append(10, 3);
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The poison record fails before anything behind it lands.
        sink.0.lock().expect("sink").deliver(2, u8::MAX);
        for _ in 0..200 {
            for partition in 0..CHATS {
                sink.0.lock().expect("sink").deliver(partition, u8::MAX);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            if harness
                .shared
                .records
                .load(std::sync::atomic::Ordering::Acquire)
                == 0
            {
                break;
            }
        }
        let held = harness
            .shared
            .conditions
            .starts(crate::conditions::Condition::ForwardingHeld);
        let replacements = sink.0.lock().expect("sink").replacements;
        drop(harness.restart().await);
        assert_eq!(
            held, 0,
            "forwarding_held started {held} times for 3 quarantined records ({replacements} producer replacements)"
        );
    });
}

#[test]
fn a_producer_replaced_while_stuck_is_not_an_operators_error() {
    on_paused_clock(async {
        let sink = Arc::new(FakeSink::default());
        let mut harness = Harness::open(dir("held"), sink.clone(), Vec::new(), Vec::new());
        harness.append(30, 0);
        for _ in 0..10 {
            for partition in 1..CHATS {
                sink.0.lock().expect("sink").deliver(partition, u8::MAX);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let generation = sink.0.lock().expect("sink").generation;
        super::Sink::replace(&*sink, generation, "stuck");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let held = harness
            .shared
            .conditions
            .starts(crate::conditions::Condition::ForwardingHeld);
        drop(harness.restart().await);
        assert_eq!(held, 0, "forwarding_held raised for a purge");
    });
}
