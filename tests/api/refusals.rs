//! Records Kafka refuses for good, and producers replaced with records in flight, injected
//! with librdkafka's mock cluster. Its errors apply per produce request, not per record, so
//! these tests count requests exactly and send records one at a time where it matters.

use std::time::{Duration, Instant};

use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use serde_json::Value;

use crate::faults::{MockSetup, mock_setup, status_and_code};
use crate::helpers::*;

const TOO_LARGE: RDKafkaRespErr = RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE;

/// Polls readiness until `done` holds for its body.
async fn wait_for_readiness(app: &TestApp, within: Duration, done: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + within;
    loop {
        let (_, body) = app.readiness().await;
        if done(&body) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "readiness never got there: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn in_spool_mode_a_record_kafka_refuses_for_good_is_set_aside_and_the_rest_goes_on_in_order()
{
    let dir = spool_dir();
    let MockSetup { cluster, app } = mock_setup(1, &overrides(&spool_vars(&dir))).await;
    let chat = "chat-poison";
    app.post_accepted(message(chat, 0)).await;
    app.wait_spool_drained(Duration::from_secs(30)).await;

    // Its first request is refused (maybe a batch), so it is sent again on its own: refused
    // again, it is the record itself. The third request, its dead letter, is taken.
    cluster.request_errors(RDKafkaApiKey::Produce, &[TOO_LARGE, TOO_LARGE]);
    let poison = message(chat, 1);
    let answer = app.post_accepted(poison.clone()).await;
    wait_for_readiness(&app, Duration::from_secs(30), |body| {
        body["spool"]["setAside"]["toDeadLetterTopic"] == 1
    })
    .await;
    for n in 2..10 {
        app.post_accepted(message(chat, n)).await;
    }
    app.wait_spool_drained(Duration::from_secs(30)).await;

    let records = read_all_records(&app.bootstrap, &app.topics.messages, 9).await;
    let texts = texts_of(&records, chat);
    assert_eq!(
        first_occurrences(&texts),
        [0, 2, 3, 4, 5, 6, 7, 8, 9],
        "the rest in order, the refused one not among them: {texts:?}"
    );
    assert!(texts.len() <= 9 + 1, "copies bounded: {texts:?}");

    let letters = read_all_records(&app.bootstrap, &app.topics.deadletter, 1).await;
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(
        letter.value,
        poison.as_bytes(),
        "the body exactly as received"
    );
    assert_eq!(
        letter.header("error_code"),
        Some("kafka_message_size_too_large")
    );
    assert_eq!(letter.header("ce_id"), answer["id"].as_str());
    assert_eq!(letter.header("original_topic"), Some(&*app.topics.messages));
    assert!(
        letter
            .header("received_at")
            .is_some_and(|t| t.ends_with('Z'))
    );
    assert_eq!(letter.key.as_deref(), Some(chat));

    let (status, body) = app.readiness().await;
    assert_eq!(status, 200, "{body}");
    let last = body["spool"]["setAside"]["last"]
        .as_str()
        .unwrap_or_default();
    assert!(
        last.contains(answer["id"].as_str().unwrap_or("?")),
        "{body}"
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("omnichat_bridge_spool_set_aside_records_total{to=\"deadletter\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn in_spool_mode_a_record_the_dead_letter_topic_refuses_too_goes_to_the_quarantine() {
    let dir = spool_dir();
    let MockSetup { cluster, app } = mock_setup(1, &overrides(&spool_vars(&dir))).await;
    let chat = "chat-quarantine";
    app.post_accepted(message(chat, 0)).await;
    app.wait_spool_drained(Duration::from_secs(30)).await;
    cluster.request_errors(RDKafkaApiKey::Produce, &[TOO_LARGE; 3]);
    app.post_accepted(message(chat, 1)).await;
    wait_for_readiness(&app, Duration::from_secs(30), |body| {
        body["spool"]["setAside"]["toQuarantine"] == 1
    })
    .await;
    app.post_accepted(message(chat, 2)).await;
    app.wait_spool_drained(Duration::from_secs(30)).await;
    let records = read_all_records(&app.bootstrap, &app.topics.messages, 2).await;
    assert_eq!(first_occurrences(&texts_of(&records, chat)), [0, 2]);

    // The quarantine holds the dead letter in the spool's own segment format.
    let quarantine = dir.join("quarantine");
    let segments: Vec<_> = std::fs::read_dir(&quarantine)
        .expect("quarantine exists")
        .flatten()
        .collect();
    assert_eq!(segments.len(), 1, "{segments:?}");
    let bytes = std::fs::read(segments[0].path()).expect("quarantine segment");
    assert!(bytes.starts_with(b"OCBSPOOL"));
    let body = message(chat, 1);
    assert!(
        bytes.windows(body.len()).any(|w| w == body.as_bytes()),
        "the body is in the quarantine"
    );
}

/// The dead-letter topic refuses the set-aside for a while (an operator's error): the record
/// waits at the head with backoff, readiness names `set_aside_failing`, and once the topic
/// takes it the condition clears by itself and the records behind it go on in order.
#[tokio::test]
async fn in_spool_mode_a_set_aside_the_dead_letter_topic_refuses_is_named_and_heals_by_itself() {
    let dir = spool_dir();
    let MockSetup { cluster, app } = mock_setup(1, &overrides(&spool_vars(&dir))).await;
    let chat = "chat-refused-twice";
    app.post_accepted(message(chat, 0)).await;
    app.wait_spool_drained(Duration::from_secs(30)).await;
    let unauthorized = RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED;
    let mut errors = vec![TOO_LARGE, TOO_LARGE];
    errors.extend([unauthorized; 5]);
    cluster.request_errors(RDKafkaApiKey::Produce, &errors);
    app.post_accepted(message(chat, 1)).await;
    for n in 2..5 {
        app.post_accepted(message(chat, n)).await;
    }
    let has = |body: &Value, code: &str| {
        body["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["code"] == code))
    };
    wait_for_readiness(&app, Duration::from_secs(30), |body| {
        has(body, "set_aside_failing")
            && body["spool"]["forwardError"]
                .as_str()
                .is_some_and(|e| e.contains("could not be set aside"))
    })
    .await;
    assert_eq!(app.readiness().await.0, 200, "the spool still takes events");
    wait_for_readiness(&app, Duration::from_secs(60), |body| {
        body["spool"]["setAside"]["toDeadLetterTopic"] == 1
            && body["spool"]["records"] == 0
            && !has(body, "set_aside_failing")
            && body["spool"]["forwardError"].is_null()
    })
    .await;
    let records = read_all_records(&app.bootstrap, &app.topics.messages, 4).await;
    assert_eq!(first_occurrences(&texts_of(&records, chat)), [0, 2, 3, 4]);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("omnichat_bridge_conditions_total{condition=\"set_aside_failing\"} 1"),
        "{metrics}"
    );
}

/// Several batches of one chat in flight, and the third produce request refused for good.
/// Without a gapless producer the batches after it land first, and the refused one is sent
/// again behind them.
#[tokio::test]
async fn in_spool_mode_a_refused_batch_with_later_batches_in_flight_never_reorders_a_chat() {
    let dir = spool_dir();
    let MockSetup { cluster, app } = mock_setup(1, &overrides(&spool_vars(&dir))).await;
    let chat = "chat-in-flight";
    cluster
        .broker_round_trip_time(1, Duration::from_millis(300))
        .expect("rtt");
    let ok = RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR;
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[ok, ok, RDKafkaRespErr::RD_KAFKA_RESP_ERR_POLICY_VIOLATION],
    );
    for n in 0..150 {
        app.post_accepted(message(chat, n)).await;
    }
    app.wait_spool_drained(Duration::from_secs(60)).await;
    let records = read_all_records(&app.bootstrap, &app.topics.messages, 150).await;
    let texts = texts_of(&records, chat);
    assert_eq!(
        first_occurrences(&texts),
        (0..150).collect::<Vec<_>>(),
        "first occurrences in order: {texts:?}"
    );
    let most = (0..150)
        .map(|n| texts.iter().filter(|t| **t == n).count())
        .max()
        .unwrap_or_default();
    assert!(most <= 2, "at most one window sent again: {most} copies");
    let letters = read_all_records(&app.bootstrap, &app.topics.deadletter, 0).await;
    assert!(
        letters.is_empty(),
        "a batch refusal is not the record's: {}",
        letters.len()
    );
}

#[tokio::test]
async fn in_kafka_mode_an_event_kafka_refuses_for_good_is_dead_lettered_and_answered_4xx() {
    let MockSetup { cluster, app } = mock_setup(1, &[("BRIDGE_PUBLISH_TIMEOUT_MS", "5000")]).await;
    let chat = "chat-refused-for-good";

    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_POLICY_VIOLATION],
    );
    let refused = message(chat, 0);
    let response = app.post(refused.clone()).await;
    assert_eq!(response.status(), 422);
    assert!(
        response.headers().get("retry-after").is_none(),
        "not to be retried"
    );
    let json: Value = response.json().await.expect("body");
    assert_eq!(json["error"]["code"], "refused_by_kafka");

    cluster.request_errors(RDKafkaApiKey::Produce, &[TOO_LARGE]);
    let (status, json, _) = status_and_code(&app, message(chat, 1)).await;
    assert_eq!(status, 413, "{json}");

    // The dead-letter topic refuses it too: still 413, nothing stored.
    cluster.request_errors(RDKafkaApiKey::Produce, &[TOO_LARGE, TOO_LARGE]);
    let (status, json, _) = status_and_code(&app, message(chat, 2)).await;
    assert_eq!(status, 413, "{json}");

    app.post_accepted(message(chat, 3)).await;
    let letters = read_all_records(&app.bootstrap, &app.topics.deadletter, 2).await;
    let bodies: Vec<&[u8]> = letters.iter().map(|l| l.value.as_slice()).collect();
    assert_eq!(bodies, [refused.as_bytes(), message(chat, 1).as_bytes()]);
    assert_eq!(
        letters[0].header("error_code"),
        Some("kafka_policy_violation")
    );
    let events = read_all_records(&app.bootstrap, &app.topics.messages, 1).await;
    assert_eq!(texts_of(&events, chat), [3]);
}

/// Threads and sockets of a process: what a leaked producer would leave behind.
fn threads_and_sockets(pid: u32) -> (usize, usize) {
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or_default();
    let sockets = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
        })
        .count();
    (threads, sockets)
}

/// The forwarder's producer dies twenty times with records in flight (a sequence error
/// kills an idempotent producer). Each time it is replaced only after every record it held
/// was resolved and it was destroyed: the chat stays in order and the process does not
/// accumulate producers.
#[tokio::test]
async fn twenty_producer_replacements_with_records_in_flight_keep_order_and_leak_nothing() {
    let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    let topics = TestTopics::new();
    for topic in topics.all() {
        cluster.create_topic(topic, PARTITIONS, 1).expect("topic");
    }
    // No added round trip: an injected sequence error on the head request is answered by the
    // mock without the sequence-gap check a broker makes for the requests behind it, so with
    // several requests in flight the mock lets later ones land that a broker would refuse.
    // Several batches in flight are the subject of the refused-batch test above.
    let bootstrap = cluster.bootstrap_servers();
    let dir = spool_dir();
    let mut vars = base_vars(&bootstrap, &topics);
    vars.extend(spool_vars(&dir));
    let BridgeProcess {
        process: bridge,
        url,
        admin,
        client,
    } = spawn_bridge(vars).await;
    let pid = bridge.0.id();
    let readyz = format!("{admin}/readyz");
    let post = |body: String| {
        let request = client.post(&url).bearer_auth(TOKEN).body(body);
        async move {
            let response = request.send().await.expect("answered");
            assert_eq!(response.status(), 202);
        }
    };
    let drained = || async {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(response) = client.get(&readyz).send().await
                && let Ok(body) = response.json::<Value>().await
                && body["spool"]["records"] == 0
            {
                return;
            }
            assert!(Instant::now() < deadline, "the spool never drained");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get(&readyz).send().await.map(|r| r.status()).ok() != Some(reqwest::StatusCode::OK)
    {
        assert!(Instant::now() < deadline, "the bridge never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let chat = "chat-replaced";
    let mut n = 0;
    for _ in 0..10 {
        post(message(chat, n)).await;
        n += 1;
    }
    drained().await;
    let before = threads_and_sockets(pid);

    for _ in 0..20 {
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
        );
        for _ in 0..10 {
            post(message(chat, n)).await;
            n += 1;
        }
        drained().await;
    }
    // Destroyed producers' threads end a moment after the replacement returns.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = threads_and_sockets(pid);
    assert!(
        after.0 <= before.0 + 2 && after.1 <= before.1 + 2,
        "threads and sockets grew from {before:?} to {after:?}"
    );

    let records = read_all_records(&bootstrap, &topics.messages, n).await;
    let texts = texts_of(&records, chat);
    assert_eq!(
        first_occurrences(&texts),
        (0..n).collect::<Vec<_>>(),
        "{texts:?}"
    );
}

/// The stuck-producer path: the cluster answers metadata but the partitions' leader is down,
/// so records wait in the producer and, after max(2 x publish deadline, 10 s), the producer is
/// replaced while it still holds them. Records spooled before must not land after records
/// spooled later, whichever producer carries them once the leader is back.
#[tokio::test]
async fn a_producer_replaced_while_it_still_holds_records_never_reorders_a_chat() {
    let cluster = rdkafka::mocking::MockCluster::new(2).expect("mock cluster");
    let topics = TestTopics::new();
    for topic in topics.all() {
        cluster.create_topic(topic, PARTITIONS, 1).expect("topic");
        for partition in 0..PARTITIONS {
            cluster
                .partition_leader(topic, partition, Some(2))
                .expect("leader");
        }
    }
    let bootstrap = cluster.bootstrap_servers();
    let dir = spool_dir();
    let mut vars = base_vars(&bootstrap, &topics);
    vars.extend(spool_vars(&dir));
    vars.push(("BRIDGE_PUBLISH_TIMEOUT_MS".into(), "1000".into()));
    let BridgeProcess {
        process: bridge,
        url,
        admin,
        client,
    } = spawn_bridge(vars).await;
    let pid = bridge.0.id();
    let post = |n: usize| {
        let request = client
            .post(&url)
            .bearer_auth(TOKEN)
            .body(message("chat-stuck", n));
        async move {
            let response = request.send().await.expect("answered");
            assert_eq!(response.status(), 202);
        }
    };
    let records = || async {
        let response = client.get(format!("{admin}/readyz")).send().await.ok()?;
        let body: Value = response.json().await.ok()?;
        body["spool"]["records"].as_u64()
    };
    let drained = || async {
        let deadline = Instant::now() + Duration::from_secs(60);
        while records().await != Some(0) {
            assert!(Instant::now() < deadline, "the spool never drained");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    for n in 0..5 {
        post(n).await;
    }
    drained().await;
    let before = threads_and_sockets(pid);

    cluster.broker_down(2).expect("leader down");
    for n in 5..15 {
        post(n).await;
    }
    // Long enough for the stuck-producer rule (10 s without an acknowledgement while the
    // cluster answers), checked by the 2 s readiness probe.
    tokio::time::sleep(Duration::from_secs(14)).await;
    // Spooled after the replacement, while the leader is still down: if the old producer
    // still held 5 to 14, both producers would hold records when it returns, and the one that
    // reconnects first would land its records first.
    for n in 15..25 {
        post(n).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.broker_up(2).expect("leader up");
    drained().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = threads_and_sockets(pid);
    assert!(
        after.0 <= before.0 + 2 && after.1 <= before.1 + 2,
        "threads and sockets grew from {before:?} to {after:?}"
    );
    let records = read_all_records(&bootstrap, &topics.messages, 25).await;
    let texts = texts_of(&records, "chat-stuck");
    assert_eq!(
        first_occurrences(&texts),
        (0..25).collect::<Vec<_>>(),
        "{texts:?}"
    );
}
