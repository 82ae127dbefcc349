//! Never a 2xx for what is not stored, and never a hang: with Kafka out of reach every request
//! is answered 503 with `Retry-After` within the publish deadline.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::*;

async fn app_without_kafka(extra: &[(&str, &str)]) -> TestApp {
    let mut overrides = vec![("BRIDGE_PUBLISH_TIMEOUT_MS", "1000")];
    overrides.extend_from_slice(extra);
    spawn_app_on(
        &format!("127.0.0.1:{}", free_port()),
        TestTopics::new(),
        &overrides,
    )
    .await
}

#[tokio::test]
async fn answers_503_with_retry_after_within_the_deadline_when_kafka_is_unreachable() {
    let app = app_without_kafka(&[]).await;
    for body in [SEED.as_bytes().to_vec(), b"{not json".to_vec()] {
        let started = Instant::now();
        let response = tokio::time::timeout(Duration::from_secs(10), app.post(body.clone()))
            .await
            .expect("answered, not hung");
        let took = started.elapsed();
        assert_eq!(response.status(), 503, "{}", String::from_utf8_lossy(&body));
        assert!(response.headers().contains_key("retry-after"));
        let answer: Value = response.json().await.expect("json");
        assert_eq!(answer["error"]["code"], "publish_timeout");
        assert!(
            answer.get("deadLettered").is_none(),
            "a dead letter that was not stored is not claimed"
        );
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(3),
            "took {took:?}"
        );
    }
    assert_eq!(
        app.get_admin("/healthz").await.status(),
        200,
        "alive while Kafka is down"
    );
    let ready = app.get_admin("/readyz").await;
    assert_eq!(ready.status(), 503);
}

#[tokio::test]
async fn sheds_load_past_the_in_flight_limit_at_once() {
    let app = std::sync::Arc::new(app_without_kafka(&[("BRIDGE_MAX_IN_FLIGHT", "1")]).await);
    let holder = {
        let app = app.clone();
        tokio::spawn(async move { app.post(SEED).await.status() })
    };
    // Wait until the first request holds the only slot.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = app.metrics().await;
        if metrics.contains("omnichat_bridge_in_flight_requests 1") {
            break;
        }
        assert!(Instant::now() < deadline, "the first request never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let response = app.post(SEED).await;
    assert_eq!(response.status(), 503);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["error"]["code"], "overloaded");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "shed at once, not queued"
    );
    assert_eq!(holder.await.expect("holder"), 503);
}
