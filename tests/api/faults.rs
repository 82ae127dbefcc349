//! Failures a real broker cannot be made to show on demand, injected with librdkafka's
//! in-process mock cluster: brokers down, slow acknowledgements, request errors, a moved
//! partition leader, and a peer that accepts connections and never answers.

use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use serde_json::Value;

use crate::helpers::*;

pub struct MockSetup {
    pub cluster: MockCluster<'static, DefaultProducerContext>,
    pub app: TestApp,
}

/// A mock cluster with the test topics, and a bridge on it, ready.
pub async fn mock_setup(brokers: i32, overrides: &[(&str, &str)]) -> MockSetup {
    let cluster = MockCluster::new(brokers).expect("mock cluster");
    let topics = TestTopics::new();
    for topic in topics.all() {
        cluster
            .create_topic(topic, PARTITIONS, 1)
            .expect("mock topic");
    }
    let mut all = vec![("BRIDGE_PUBLISH_TIMEOUT_MS", "1000")];
    all.extend_from_slice(overrides);
    let app = spawn_app_on(&cluster.bootstrap_servers(), topics, &all).await;
    app.wait_ready().await;
    MockSetup { cluster, app }
}

pub async fn status_and_code(app: &TestApp, body: String) -> (u16, Value, Duration) {
    let started = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(10), app.post(body))
        .await
        .expect("answered, not hung");
    let status = response.status().as_u16();
    let json = response.json().await.unwrap_or(Value::Null);
    (status, json, started.elapsed())
}

#[tokio::test]
async fn with_every_broker_down_it_answers_503_and_recovers_without_restart() {
    let MockSetup { cluster, app } = mock_setup(1, &[]).await;
    app.post_accepted(message("chat-outage", 0)).await;

    cluster.broker_down(1).expect("down");
    let (status, json, took) = status_and_code(&app, message("chat-outage", 1)).await;
    assert_eq!(status, 503, "{json}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    app.wait_not_ready().await;
    assert_eq!(app.get_admin("/healthz").await.status(), 200);

    cluster.broker_up(1).expect("up");
    app.post_until_accepted(message("chat-outage", 1), Duration::from_secs(30))
        .await;
    app.post_accepted(message("chat-outage", 2)).await;
    app.wait_ready().await;
    let records = app.read(&app.topics.messages, 3).await;
    // The 503'd attempt may also have been written (at least once); order is what matters.
    let mut texts = texts_of(&records, "chat-outage");
    texts.dedup();
    assert_eq!(texts, vec![0, 1, 2]);
}

#[tokio::test]
async fn acknowledgements_slower_than_the_deadline_get_503_not_a_hang() {
    let MockSetup { cluster, app } = mock_setup(1, &[]).await;
    cluster
        .broker_round_trip_time(1, Duration::from_secs(4))
        .expect("rtt");
    let (status, json, took) = status_and_code(&app, message("chat-slow", 0)).await;
    assert_eq!(status, 503, "{json}");
    assert_eq!(json["error"]["code"], "publish_timeout");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "took {took:?}"
    );
    cluster
        .broker_round_trip_time(1, Duration::ZERO)
        .expect("rtt");
    app.post_until_accepted(message("chat-slow", 1), Duration::from_secs(30))
        .await;
}

#[tokio::test]
async fn retriable_produce_errors_are_retried_by_the_producer_without_reordering() {
    let MockSetup { cluster, app } = mock_setup(1, &[("BRIDGE_PUBLISH_TIMEOUT_MS", "5000")]).await;
    let retriable = [RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 6];
    cluster.request_errors(RDKafkaApiKey::Produce, &retriable);
    for n in 0..30 {
        app.post_accepted(message("chat-retry", n)).await;
        if n % 10 == 9 {
            cluster.request_errors(RDKafkaApiKey::Produce, &retriable);
        }
    }
    let records = app.read(&app.topics.messages, 30).await;
    assert_eq!(
        texts_of(&records, "chat-retry"),
        (0..30).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_refused_record_is_answered_503_at_once() {
    let MockSetup { cluster, app } = mock_setup(1, &[("BRIDGE_PUBLISH_TIMEOUT_MS", "5000")]).await;
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
    );
    let (status, json, took) = status_and_code(&app, message("chat-denied", 0)).await;
    assert_eq!(status, 503, "{json}");
    assert_eq!(json["error"]["code"], "publish_failed");
    assert!(
        took < Duration::from_secs(4),
        "a permanent error does not wait out the deadline: {took:?}"
    );
}

#[tokio::test]
async fn a_moved_partition_leader_does_not_reorder_a_chat() {
    let MockSetup { cluster, app } = mock_setup(3, &[("BRIDGE_PUBLISH_TIMEOUT_MS", "5000")]).await;
    let chat = "chat-moving";
    let partition = java_partition(chat, PARTITIONS);
    for n in 0..60 {
        if n % 20 == 10 {
            let leader = 1 + (n / 20) as i32 % 3;
            cluster
                .partition_leader(&app.topics.messages, partition, Some(leader))
                .expect("move leader");
        }
        app.post_accepted(message(chat, n)).await;
    }
    let records = app.read(&app.topics.messages, 60).await;
    assert_eq!(texts_of(&records, chat), (0..60).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_peer_that_accepts_connections_and_never_answers_gets_503() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("addr");
    // Accept and hold every connection without a byte of reply, until the test ends.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().take(64).flatten() {
            held.push(stream);
        }
    });
    let app = spawn_app_on(
        &address.to_string(),
        TestTopics::new(),
        &[("BRIDGE_PUBLISH_TIMEOUT_MS", "1000")],
    )
    .await;
    let (status, json, took) = status_and_code(&app, SEED.to_owned()).await;
    assert_eq!(status, 503, "{json}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert_eq!(app.get_admin("/readyz").await.status(), 503);
}

#[tokio::test]
async fn in_spool_mode_refused_records_are_sent_again_without_reordering_a_chat() {
    let dir = spool_dir();
    let vars = spool_vars(&dir);
    let overrides = overrides(&vars);
    let MockSetup { cluster, app } = mock_setup(1, &overrides).await;
    let chat = "chat-refused";
    // Kafka refuses produce requests for good (not retriable by the producer), then a sequence
    // error kills the idempotent producer: the forwarder must pause, replace what is dead and
    // send again from the oldest unacknowledged record, while the sender keeps getting 202s.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 3],
    );
    for n in 0..40 {
        app.post_accepted(message(chat, n)).await;
    }
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
    );
    for n in 40..80 {
        app.post_accepted(message(chat, n)).await;
    }
    app.wait_spool_drained(Duration::from_secs(60)).await;
    let records = read_all_records(&app.bootstrap, &app.topics.messages, 80).await;
    let texts = texts_of(&records, chat);
    assert_eq!(
        first_occurrences(&texts),
        (0..80).collect::<Vec<_>>(),
        "in order, at least once: {texts:?}"
    );
    assert_eq!(app.get_admin("/healthz").await.status(), 200);
}
