//! The admin port: liveness, readiness with its stable codes, metrics.

use crate::app::*;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

#[tokio::test]
async fn the_admin_port_reports_health_readiness_and_metrics() {
    let app = spawn(&[]).await;
    app.wait_readiness(200).await;
    assert_eq!(app.admin("/healthz").await.status(), 200);
    app.post_accepted(SEED).await;
    let _ = app.post(b"nope".to_vec()).await;
    let metrics = app.metrics().await;
    for expected in [
        "omnichat_bridge_http_requests_total{status=\"202\"} 1",
        "omnichat_bridge_http_requests_total{status=\"400\"} 1",
        "omnichat_bridge_dead_letters_total{code=\"invalid_json\"} 1",
        "omnichat_bridge_kafka_up 1",
        "omnichat_bridge_ready 1",
        "omnichat_bridge_in_flight_requests 0",
        "omnichat_bridge_publish_duration_seconds_count 1",
        "omnichat_bridge_events_total{topic=\"omnichat.messages\",resource=\"Message\",event=\"CREATE\"} 1",
    ] {
        assert!(metrics.contains(expected), "missing {expected}:\n{metrics}");
    }
}

#[tokio::test]
async fn readiness_follows_kafka_with_a_stable_code_and_liveness_does_not() {
    let app = spawn(&[]).await;
    let ready = app.wait_readiness(200).await;
    assert_eq!(ready["status"], "ready");
    *app.kafka.lock().expect("kafka") =
        Err(KafkaError::MetadataFetch(RDKafkaErrorCode::AllBrokersDown));
    let body = app.wait_readiness(503).await;
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["code"], "kafka_unreachable");
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("All broker connections are down")),
        "{body}"
    );
    assert_eq!(
        app.admin("/healthz").await.status(),
        200,
        "Kafka down is not a reason to restart"
    );
    *app.kafka.lock().expect("kafka") = Ok(());
    app.wait_readiness(200).await;
}

#[tokio::test]
async fn resources_a_sender_invents_do_not_grow_the_metrics() {
    let app = spawn(&[]).await;
    for n in 0..50 {
        app.post_accepted(format!(
            r#"{{"objectId":"x{n}","resource":"Made{n}","event":"Up{n}"}}"#
        ))
        .await;
    }
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("omnichat_bridge_events_total{topic=\"omnichat.other\",resource=\"other\",event=\"other\"} 50"),
        "{metrics}"
    );
    assert!(!metrics.contains("Made1"), "a sender's names became labels");
}

#[tokio::test]
async fn spool_mode_answers_202_without_kafka_and_is_ready_while_the_spool_has_room() {
    let dir = std::env::temp_dir().join(format!("contract-spool-{}", uuid::Uuid::new_v4()));
    let dir_text = dir.display().to_string();
    let app = spawn_real(&[
        ("BRIDGE_ACK_MODE", "spool"),
        ("BRIDGE_SPOOL_DIR", &dir_text),
    ])
    .await;
    let answer = app.post_accepted(SEED).await;
    assert_eq!(answer["spooled"], true);
    let body = app.wait_readiness(200).await;
    assert_eq!(body["mode"], "spool");
    assert_eq!(body["spool"]["records"], 1);
    assert_ne!(
        body["kafka"], "reachable",
        "nothing listens at the broker's address"
    );
    let _ = std::fs::remove_dir_all(dir);
}
