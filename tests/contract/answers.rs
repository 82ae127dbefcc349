//! Every row of the contract's status table that a sender can provoke, with what is stored.

use omnichat_bridge::publish::PublishError;
use omnichat_bridge::publish::refusal::Refused;
use rdkafka::error::RDKafkaErrorCode;
use serde_json::Value;
use std::time::Duration;

use crate::app::*;

#[tokio::test]
async fn a_stored_webhook_is_answered_202_with_its_id_and_place() {
    let app = spawn(&[]).await;
    let answer = app.post_accepted(SEED).await;
    assert_eq!(answer["status"], "accepted");
    assert_eq!(answer["topic"], "omnichat.messages");
    assert_eq!(
        (answer["partition"].as_i64(), answer["offset"].as_i64()),
        (Some(0), Some(0))
    );
    let stored = app.recorder.stored();
    assert_eq!(answer["id"].as_str(), header(&stored[0], "ce_id"));
}

#[tokio::test]
async fn unusable_bodies_are_dead_lettered_byte_for_byte_then_answered_400_or_422() {
    let app = spawn(&[]).await;
    let cases: Vec<(&[u8], u16, &str)> = vec![
        (b"{not json", 400, "invalid_json"),
        (b"", 400, "invalid_json"),
        (b"\xff\xfe binary \x00", 400, "invalid_json"),
        (b"[1,2,3]", 400, "not_an_object"),
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
            br#"{"objectId":"m","resource":"Message","event":"CREATE"}"#,
            422,
            "missing_chat",
        ),
    ];
    for (body, expected, code) in &cases {
        let (status, answer) = error_of(app.post(body.to_vec()).await).await;
        assert_eq!(
            (status, &answer["error"]["code"]),
            (*expected, &serde_json::json!(code))
        );
        assert_eq!(answer["deadLettered"], true);
    }
    let letters = app.recorder.stored_to("omnichat.deadletter");
    assert_eq!(letters.len(), cases.len());
    for ((body, _, code), letter) in cases.iter().zip(&letters) {
        assert_eq!(&letter.value, body, "the body exactly as received");
        assert_eq!(header(letter, "error_code"), Some(*code));
        assert!(header(letter, "received_at").is_some_and(|t| t.ends_with('Z')));
    }
}

#[tokio::test]
async fn nesting_deeper_than_consumers_read_is_refused_422() {
    let app = spawn(&[]).await;
    let deep = format!(
        r#"{{"objectId":"o","resource":"Order","event":"CREATE","x":{}1{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let (status, body) = error_of(app.post(deep).await).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (422, &serde_json::json!("too_deep"))
    );
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_and_store_nothing() {
    let app = spawn(&[("BRIDGE_MAX_BODY_BYTES", "1024")]).await;
    let big = format!(
        r#"{{"objectId":"o","resource":"Order","event":"CREATE","pad":"{}"}}"#,
        "x".repeat(2000)
    );
    let (status, body) = error_of(app.post(big.clone()).await).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (413, &serde_json::json!("payload_too_large"))
    );
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big
        .into_bytes()
        .chunks(100)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let streamed = app
        .client
        .post(app.webhook_url())
        .bearer_auth(TOKEN)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .expect("sent");
    assert_eq!(streamed.status(), 413, "without a Content-Length too");
    assert!(app.recorder.stored().is_empty());
}

#[tokio::test]
async fn other_paths_are_404_and_other_methods_405() {
    let app = spawn(&[]).await;
    for path in ["/", "/webhooks", "/webhooks/omnichat/extra", "/metrics"] {
        let response = app
            .client
            .post(format!("{}{path}", app.address))
            .send()
            .await;
        let (status, _) = error_of(response.expect("sent")).await;
        assert_eq!(status, 404, "{path}");
    }
    let response = app
        .client
        .get(app.webhook_url())
        .send()
        .await
        .expect("sent");
    let (status, _) = error_of(response).await;
    assert_eq!(status, 405);
}

/// What the sender is told when the backend does not store the record.
#[tokio::test]
async fn unstored_records_are_503_with_retry_after_and_a_code_per_cause() {
    let app = spawn(&[("BRIDGE_PUBLISH_TIMEOUT_MS", "200")]).await;
    let cases = [
        (Answer::Fail(PublishError::QueueFull), "queue_full"),
        (
            Answer::Fail(PublishError::Timeout(std::time::Duration::from_millis(200))),
            "publish_timeout",
        ),
        (
            Answer::Fail(PublishError::Refused(Refused::new(
                RDKafkaErrorCode::TopicAuthorizationFailed,
                "broker gone",
            ))),
            "publish_failed",
        ),
        (
            Answer::Fail(PublishError::DiskFull { limit: 1 }),
            "spool_full",
        ),
    ];
    for (answer, code) in cases {
        app.recorder.script([answer]);
        let response = app.post(SEED).await;
        assert!(response.headers().contains_key("retry-after"), "{code}");
        let (status, body) = error_of(response).await;
        assert_eq!((status, body["error"]["code"].as_str()), (503, Some(code)));
    }
}

#[tokio::test]
async fn a_record_kafka_refuses_for_good_is_dead_lettered_and_answered_4xx() {
    let app = spawn(&[]).await;
    let refusals = [
        (RDKafkaErrorCode::MessageSizeTooLarge, 413),
        (RDKafkaErrorCode::PolicyViolation, 422),
    ];
    for (code, expected) in refusals {
        app.recorder
            .script([Answer::Fail(PublishError::Poison(Refused::new(
                code, "refused",
            )))]);
        let (status, body) = error_of(app.post(SEED).await).await;
        assert_eq!(status, expected, "{body}");
        assert_eq!(body["deadLettered"], true, "{body}");
    }
    let letters = app.recorder.stored_to("omnichat.deadletter");
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0].value, SEED.as_bytes());
    assert_eq!(
        header(&letters[0], "error_code"),
        Some("kafka_message_size_too_large")
    );
    assert_eq!(
        header(&letters[0], "original_topic"),
        Some("omnichat.messages")
    );
}

#[tokio::test]
async fn past_the_in_flight_limit_requests_are_503_overloaded_at_once() {
    let app = spawn(&[("BRIDGE_MAX_IN_FLIGHT", "2")]).await;
    let slow = Answer::After(std::time::Duration::from_secs(2));
    app.recorder.script([slow.clone(), slow]);
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn({
                let request = app
                    .client
                    .post(app.webhook_url())
                    .bearer_auth(TOKEN)
                    .body(SEED)
                    .send();
                async move { request.await.map(|r| r.status().as_u16()) }
            })
        })
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        if app
            .metrics()
            .await
            .contains("omnichat_bridge_in_flight_requests 2")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the two never got in flight"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (status, body) = error_of(app.post(SEED).await).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("overloaded"))
    );
    for request in waiting {
        assert_eq!(request.await.expect("task").expect("answered"), 202);
    }
    app.post_accepted(SEED).await;
}

#[tokio::test]
async fn a_refused_event_whose_dead_letter_may_still_be_stored_is_503_not_4xx() {
    let app = spawn(&[]).await;
    let passing = [
        PublishError::Timeout(Duration::from_secs(5)),
        PublishError::QueueFull,
        PublishError::Replacing,
    ];
    for error in passing {
        app.recorder.script([
            Answer::Fail(PublishError::Poison(Refused::new(
                RDKafkaErrorCode::PolicyViolation,
                "refused",
            ))),
            Answer::Fail(error.clone()),
        ]);
        let response = app.post(SEED).await;
        assert!(
            response.headers().contains_key("retry-after"),
            "{error}: no Retry-After"
        );
        let (status, body) = error_of(response).await;
        assert_eq!(status, 503, "{error}: the body was never stored: {body}");
    }
    // Only when no topic could ever take the body: a 4xx saying nothing was stored.
    app.recorder.script([
        Answer::Fail(PublishError::Poison(Refused::new(
            RDKafkaErrorCode::PolicyViolation,
            "refused",
        ))),
        Answer::Fail(PublishError::Poison(Refused::new(
            RDKafkaErrorCode::PolicyViolation,
            "refused too",
        ))),
    ]);
    let (status, body) = error_of(app.post(SEED).await).await;
    assert_eq!((status, &body["deadLettered"]), (422, &Value::Bool(false)));
    assert!(app.recorder.stored().is_empty());
}
