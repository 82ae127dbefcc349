//! What the broker holds for the ingress's answers: dead letters byte for byte, and readiness
//! naming missing topics. The status table itself is checked in-process by tests/contract.

use serde_json::Value;

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
