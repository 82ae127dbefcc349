//! Spool mode (`BRIDGE_ACK_MODE=spool`) against a real broker: 202 once the record is on local
//! disk, forwarded in log order whenever Kafka can take it, through outages and restarts.

use std::time::{Duration, Instant};

use crate::helpers::*;
use crate::outage::{ProxiedBroker, proxied_broker};

#[tokio::test]
#[ignore = "needs the broker: scripts/test.sh starts it and runs these"]
async fn spooled_events_reach_kafka_in_order_with_the_same_records_as_kafka_mode() {
    let dir = spool_dir();
    let vars = spool_vars(&dir);
    let app = spawn_app_with(&overrides(&vars)).await;
    app.wait_ready().await;

    let chats = 4;
    let per_chat = 30;
    let mut ids = Vec::new();
    for n in 0..per_chat {
        for c in 0..chats {
            let answer = app.post_accepted(message(&format!("chat-{c}"), n)).await;
            assert_eq!(answer["status"], "accepted");
            assert_eq!(answer["spooled"], true, "{answer}");
            assert!(
                answer.get("offset").is_none(),
                "no offset before Kafka has it"
            );
            ids.push(answer["id"].as_str().expect("id").to_owned());
        }
    }
    let records = app.read(&app.topics.messages, chats * per_chat).await;
    assert_each_chat_in_order(&records, chats, per_chat);
    for record in &records {
        let key = record.key.as_deref().expect("keyed by chat");
        assert_eq!(record.partition, java_partition(key, PARTITIONS));
        assert_eq!(record.header("ce_specversion"), Some("1.0"));
        assert_eq!(record.header("content-type"), Some("application/json"));
        assert_valid_event(&record.json());
    }
    let stored: Vec<&str> = records.iter().filter_map(|r| r.header("ce_id")).collect();
    for id in &ids {
        assert!(stored.contains(&id.as_str()), "{id} not in Kafka");
    }

    app.wait_spool_drained(Duration::from_secs(20)).await;
    let (status, body) = app.readiness().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["mode"], "spool");
    assert_eq!(body["kafka"], "reachable");
    let metrics = app.metrics().await;
    for name in [
        "omnichat_bridge_spool_records 0",
        "omnichat_bridge_spool_forwarded_records_total 120",
        "omnichat_bridge_spool_oldest_record_age_seconds 0",
        "omnichat_bridge_spool_limit_bytes 1073741824",
    ] {
        assert!(metrics.contains(name), "{name} missing from\n{metrics}");
    }
}

#[tokio::test]
#[ignore = "needs the broker: scripts/test.sh starts it and runs these"]
async fn during_an_outage_the_spool_accepts_and_then_drains_in_order() {
    let ProxiedBroker {
        broker: _broker,
        proxy,
        bootstrap,
        topics,
    } = proxied_broker().await;
    let dir = spool_dir();
    let vars = spool_vars(&dir);
    let app = spawn_app_on(&bootstrap, topics, &overrides(&vars)).await;
    app.wait_ready().await;
    app.post_accepted(message("chat-outage", 0)).await;

    proxy.cut();
    // Every request is answered 202 at once while Kafka is away.
    for n in 1..=60 {
        let started = Instant::now();
        app.post_accepted(message("chat-outage", n)).await;
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let body = loop {
        let (status, body) = app.readiness().await;
        assert_eq!(status, 200, "ready while the spool has room: {body}");
        if body["kafka"] != "reachable" && body["spool"]["records"].as_u64() > Some(0) {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "readiness never reported the outage: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(body["mode"], "spool");
    assert!(
        body["spool"]["oldestRecordAgeSeconds"].as_f64() > Some(0.0),
        "{body}"
    );
    let metrics = app.metrics().await;
    assert!(
        !metrics.contains("omnichat_bridge_spool_records 0\n"),
        "{metrics}"
    );

    proxy.restore();
    // New events queue behind the backlog.
    for n in 61..=80 {
        app.post_accepted(message("chat-outage", n)).await;
    }
    app.wait_spool_drained(Duration::from_secs(60)).await;
    let records = read_all_records(&app.bootstrap, &app.topics.messages, 81).await;
    let texts = texts_of(&records, "chat-outage");
    assert_eq!(
        first_occurrences(&texts),
        (0..=80).collect::<Vec<_>>(),
        "every event once at least, in order: {texts:?}"
    );
}

#[tokio::test]
async fn a_full_spool_answers_503_with_retry_after_and_readiness_says_so() {
    // Kafka never answers: everything stays spooled until the limit.
    let topics = TestTopics::new();
    let dir = spool_dir();
    let mut vars = spool_vars(&dir);
    vars.extend([
        ("BRIDGE_SPOOL_MAX_BYTES".to_owned(), (1 << 20).to_string()),
        ("BRIDGE_MAX_BODY_BYTES".to_owned(), (64 << 10).to_string()),
    ]);
    let app = spawn_app_on(
        &format!("127.0.0.1:{}", free_port()),
        topics,
        &overrides(&vars),
    )
    .await;
    app.wait_ready().await;

    let padding = "x".repeat(8 << 10);
    let mut accepted = 0;
    let full = loop {
        let body = message("chat-full", accepted)
            .replace("\"text\":", &format!("\"pad\":\"{padding}\",\"text\":"));
        let response = app.post(body).await;
        if response.status() == 503 {
            break response;
        }
        assert_eq!(response.status(), 202);
        accepted += 1;
        assert!(accepted < 200, "1 MiB of 8 KiB events never filled");
    };
    assert!(accepted > 50, "filled after {accepted} events");
    assert!(full.headers().contains_key("retry-after"));
    let answer: serde_json::Value = full.json().await.expect("JSON");
    assert_eq!(answer["error"]["code"], "spool_full", "{answer}");

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = app.readiness().await;
        if status == 503 {
            assert!(
                body["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("spool is full")),
                "{body}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readiness never reported the full spool: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        app.get_admin("/healthz").await.status(),
        200,
        "full is not dead"
    );
}

#[tokio::test]
#[ignore = "needs the broker: scripts/test.sh starts it and runs these"]
async fn a_record_larger_than_kafka_takes_is_refused_before_it_is_spooled() {
    let dir = spool_dir();
    let mut vars = spool_vars(&dir);
    vars.push(("KAFKA_MESSAGE_MAX_BYTES".to_owned(), "10000".to_owned()));
    let app = spawn_app_with(&overrides(&vars)).await;
    app.wait_ready().await;
    let big = message("chat-big", 0).replace(
        "\"text\":",
        &format!("\"pad\":\"{}\",\"text\":", "x".repeat(20_000)),
    );
    let response = app.post(big).await;
    assert_eq!(response.status(), 413);
    let answer: serde_json::Value = response.json().await.expect("JSON");
    assert_eq!(answer["error"]["code"], "payload_too_large", "{answer}");
    // It does not hold up what comes after it.
    app.post_accepted(message("chat-big", 1)).await;
    let records = app.read(&app.topics.messages, 1).await;
    assert_eq!(texts_of(&records, "chat-big"), [1]);
}

#[tokio::test]
#[ignore = "needs the broker: scripts/test.sh starts it and runs these"]
async fn what_a_stop_during_an_outage_leaves_spooled_is_forwarded_first_on_the_next_start() {
    let ProxiedBroker {
        broker: _broker,
        proxy,
        bootstrap,
        topics,
    } = proxied_broker().await;
    let dir = spool_dir();
    let mut vars = spool_vars(&dir);
    vars.push(("BRIDGE_SHUTDOWN_TIMEOUT_MS".to_owned(), "1500".to_owned()));

    proxy.cut();
    let mut first = spawn_app_on(&bootstrap, topics.clone(), &overrides(&vars)).await;
    first.wait_ready().await;
    for n in 0..40 {
        first.post_accepted(message("chat-restart", n)).await;
    }
    let started = Instant::now();
    first.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown waited {:?} with Kafka away",
        started.elapsed()
    );

    proxy.restore();
    let second = spawn_app_on(&bootstrap, topics, &overrides(&vars)).await;
    for n in 40..60 {
        second.post_accepted(message("chat-restart", n)).await;
    }
    second.wait_spool_drained(Duration::from_secs(60)).await;
    let records = read_all_records(&second.bootstrap, &second.topics.messages, 60).await;
    let texts = texts_of(&records, "chat-restart");
    assert_eq!(
        first_occurrences(&texts),
        (0..60).collect::<Vec<_>>(),
        "the earlier run's records first, in order: {texts:?}"
    );
}

#[tokio::test]
#[ignore = "needs the broker: scripts/test.sh starts it and runs these"]
async fn a_clean_stop_with_kafka_up_drains_the_spool() {
    let dir = spool_dir();
    let vars = spool_vars(&dir);
    let mut app = spawn_app_with(&overrides(&vars)).await;
    app.wait_ready().await;
    let load = start_load(&app.webhook_url(), 8);
    let deadline = Instant::now() + Duration::from_secs(20);
    while app
        .metrics()
        .await
        .contains("omnichat_bridge_spool_forwarded_records_total 0\n")
    {
        assert!(Instant::now() < deadline, "nothing forwarded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;
    let accepted = load.finish().await;
    assert!(!accepted.is_empty());
    assert_all_stored(&app.bootstrap, &app.topics.messages, &accepted).await;
    // Nothing is left to forward: a new start finds an empty spool.
    let again = spawn_app_on(&app.bootstrap, app.topics.clone(), &overrides(&vars)).await;
    again.wait_ready().await;
    let (_, body) = again.readiness().await;
    assert_eq!(body["spool"]["records"], 0, "{body}");
}
