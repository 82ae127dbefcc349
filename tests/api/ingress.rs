//! Every row of the contract's status table, seen from the sender and from the broker.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::helpers::*;

async fn error_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{status}: {content_type}"
    );
    let body: Value = response.json().await.expect("JSON error body");
    assert!(body["error"]["code"].is_string(), "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    (status, body)
}

#[tokio::test]
#[ignore = "needs the broker: scripts/test.sh starts it and runs these"]
async fn accepts_the_token_in_each_place_the_contract_names() {
    let app = spawn_app().await;
    app.wait_ready().await;
    let requests = [
        app.client.post(app.webhook_url()).bearer_auth(TOKEN),
        app.client
            .post(app.webhook_url())
            .header("X-Webhook-Token", TOKEN),
        app.client
            .post(format!("{}?token={TOKEN}", app.webhook_url())),
    ];
    for request in requests {
        let response = request.body(SEED).send().await.expect("sent");
        assert_eq!(response.status(), 202);
    }
    assert_eq!(record_count(&app.bootstrap, &app.topics.messages).await, 3);
}

#[tokio::test]
#[ignore = "needs the broker: scripts/test.sh starts it and runs these"]
async fn refuses_strangers_with_401_and_publishes_nothing() {
    let app = spawn_app().await;
    app.wait_ready().await;
    let requests = [
        app.client.post(app.webhook_url()),
        app.client
            .post(app.webhook_url())
            .bearer_auth("wrong-token"),
        app.client
            .post(app.webhook_url())
            .header("X-Webhook-Token", format!("{TOKEN}x")),
        app.client.post(format!("{}?token=nope", app.webhook_url())),
        app.client
            .post(app.webhook_url())
            .header("webhook-id", "msg_1")
            .header("webhook-timestamp", "1")
            .header("webhook-signature", "v1,AAAA"),
    ];
    for request in requests {
        let (status, body) = error_of(request.body(SEED).send().await.expect("sent")).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    // Not even a dead letter for a stranger's bytes.
    let (status, _) = error_of(
        app.client
            .post(app.webhook_url())
            .body("not json")
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!(status, 401);
    for topic in app.topics.all() {
        assert_eq!(record_count(&app.bootstrap, topic).await, 0, "{topic}");
    }
}

fn sign(secret_bytes: &[u8], id: &str, timestamp: u64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret_bytes).expect("key");
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

#[tokio::test]
#[ignore = "needs the broker: scripts/test.sh starts it and runs these"]
async fn a_standard_webhooks_signature_authenticates_and_names_the_event() {
    let key = b"a signing key of the bridge tests";
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    let app = spawn_app_with(&[
        ("BRIDGE_AUTH_TOKENS", ""),
        ("BRIDGE_WEBHOOK_SECRETS", &secret),
    ])
    .await;
    app.wait_ready().await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let signed = |id: &str, ts: u64, signature: String| {
        app.client
            .post(app.webhook_url())
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .body(SEED)
    };
    let response = signed("msg_abc", now, sign(key, "msg_abc", now, SEED))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["id"], "msg_abc");
    let record = &app.read(&app.topics.messages, 1).await[0];
    assert_eq!(record.header("ce_id"), Some("msg_abc"));

    let stale = now - 600;
    let response = signed("msg_old", stale, sign(key, "msg_old", stale, SEED))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 401, "outside the five-minute window");
    let response = signed("msg_x", now, sign(b"another key", "msg_x", now, SEED))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 401);
    let response = app
        .client
        .post(app.webhook_url())
        .bearer_auth(TOKEN)
        .body(SEED)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 401, "tokens are not configured here");
}

#[tokio::test]
#[ignore = "needs the broker: scripts/test.sh starts it and runs these"]
async fn bodies_over_the_limit_get_413_and_publish_nothing() {
    let app = spawn_app_with(&[("BRIDGE_MAX_BODY_BYTES", "1024")]).await;
    app.wait_ready().await;
    let big = format!(
        r#"{{"objectId":"o","resource":"Order","event":"CREATE","pad":"{}"}}"#,
        "x".repeat(2000)
    );
    let (status, body) = error_of(app.post(big.clone()).await).await;
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "payload_too_large");
    // Without a Content-Length the limit holds too.
    let stream = futures_stream(big.into_bytes());
    let response = app
        .client
        .post(app.webhook_url())
        .bearer_auth(TOKEN)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 413);
    app.post_accepted(r#"{"objectId":"o","resource":"Order","event":"CREATE"}"#)
        .await;
    for topic in app.topics.all() {
        let expected = i64::from(topic == app.topics.orders);
        assert_eq!(
            record_count(&app.bootstrap, topic).await,
            expected,
            "{topic}"
        );
    }
}

fn futures_stream(
    bytes: Vec<u8>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::iter(
        bytes
            .chunks(100)
            .map(|c| Ok(c.to_vec()))
            .collect::<Vec<_>>(),
    )
}

#[tokio::test]
#[ignore = "needs the broker: scripts/test.sh starts it and runs these"]
async fn unusable_bodies_are_dead_lettered_byte_for_byte_then_answered_400_or_422() {
    let app = spawn_app().await;
    app.wait_ready().await;
    let cases: Vec<(&[u8], u16, &str)> = vec![
        (b"{not json", 400, "invalid_json"),
        (b"", 400, "invalid_json"),
        (b"\xff\xfe binary \x00", 400, "invalid_json"),
        (b"[1,2,3]", 400, "not_an_object"),
        (b"\"just a string\"", 400, "not_an_object"),
        (
            br#"{"resource":"Order","event":"CREATE"}"#,
            422,
            "missing_field",
        ),
        (
            br#"{"objectId":42,"resource":"Order","event":"CREATE"}"#,
            422,
            "invalid_field",
        ),
        (
            br#"{"objectId":"m","resource":"Message","event":"CREATE","payload":{"chat":{}}}"#,
            422,
            "missing_chat",
        ),
        (
            br#"{"objectId":"m","resource":"Message","event":"CREATE"}"#,
            422,
            "missing_chat",
        ),
    ];
    for (body, expected_status, code) in &cases {
        let (status, answer) = error_of(app.post(body.to_vec()).await).await;
        assert_eq!(status, *expected_status, "{answer}");
        assert_eq!(answer["error"]["code"], *code);
        assert_eq!(answer["deadLettered"], true);
    }
    let dead = app.read(&app.topics.deadletter, cases.len()).await;
    assert_eq!(dead.len(), cases.len());
    for (body, _, code) in &cases {
        let record = dead
            .iter()
            .find(|r| r.value == *body)
            .unwrap_or_else(|| panic!("no dead letter holds {:?}", String::from_utf8_lossy(body)));
        assert_eq!(record.header("error_code"), Some(*code));
        assert!(
            record
                .header("error_message")
                .is_some_and(|m| !m.is_empty())
        );
        assert!(record.header("ce_id").is_some_and(|id| id.len() == 36));
    }
    assert_eq!(record_count(&app.bootstrap, &app.topics.messages).await, 0);
}

#[tokio::test]
#[ignore = "needs the broker: scripts/test.sh starts it and runs these"]
async fn other_paths_are_404_and_other_methods_405() {
    let app = spawn_app().await;
    for path in [
        "/",
        "/webhooks",
        "/webhooks/omnichat/extra",
        "/healthz",
        "/metrics",
    ] {
        let response = app
            .client
            .post(format!("{}{path}", app.address))
            .bearer_auth(TOKEN)
            .body(SEED)
            .send()
            .await
            .expect("sent");
        let (status, _) = error_of(response).await;
        assert_eq!(status, 404, "{path}");
    }
    for method in [
        reqwest::Method::GET,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
        reqwest::Method::PATCH,
    ] {
        let response = app
            .client
            .request(method.clone(), app.webhook_url())
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("sent");
        assert_eq!(
            response.headers().get("allow").map(|v| v.to_str().ok()),
            Some(Some("POST"))
        );
        let (status, _) = error_of(response).await;
        assert_eq!(status, 405, "{method}");
    }
}

#[tokio::test]
#[ignore = "needs the broker: scripts/test.sh starts it and runs these"]
async fn the_admin_port_reports_health_readiness_and_metrics() {
    let app = spawn_app().await;
    app.wait_ready().await;
    assert_eq!(app.get_admin("/healthz").await.status(), 200);
    app.post_accepted(SEED).await;
    let _ = app.post(b"nope".to_vec()).await;
    let metrics = app.metrics().await;
    for expected in [
        "omnichat_bridge_http_requests_total{status=\"202\"} 1",
        "omnichat_bridge_http_requests_total{status=\"400\"} 1",
        "omnichat_bridge_dead_letters_total{code=\"invalid_json\"} 1",
        "omnichat_bridge_kafka_up 1",
        "omnichat_bridge_publish_duration_seconds_count 1",
        "omnichat_bridge_in_flight_requests 0",
    ] {
        assert!(metrics.contains(expected), "missing {expected}:\n{metrics}");
    }
    let events = format!(
        "omnichat_bridge_events_total{{topic=\"{}\",resource=\"Message\",event=\"CREATE\"}} 1",
        app.topics.messages
    );
    assert!(metrics.contains(&events), "missing {events}:\n{metrics}");
}

#[tokio::test]
#[ignore = "needs the broker: scripts/test.sh starts it and runs these"]
async fn readiness_says_which_topics_are_missing() {
    let topics = TestTopics::new();
    let app = spawn_app_on(&bootstrap(), topics, &[]).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let response = app.get_admin("/readyz").await;
        assert_eq!(response.status(), 503, "the topics were never created");
        let body: Value = response.json().await.expect("json");
        let reason = body["reason"].as_str().unwrap_or_default().to_owned();
        if reason.contains("topics do not exist") {
            assert!(reason.contains(&app.topics.messages), "{reason}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "last reason: {reason}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
