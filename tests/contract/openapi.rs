//! `openapi.json` describes what the running server answers: each status the tests can provoke
//! is documented for its operation, and its body matches the documented schema.

use std::sync::OnceLock;

use serde_json::{Value, json};

use omnichat_bridge::publish::PublishError;

use crate::app::*;

fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json"))
            .expect("openapi.json");
        serde_json::from_str(&text).expect("openapi.json is JSON")
    })
}

/// Checks one answer against the document; returns the body.
async fn assert_documented(path: &str, method: &str, response: reqwest::Response) -> Value {
    let status = response.status().as_u16().to_string();
    let documented = &document()["paths"][path][method]["responses"][&status];
    assert!(
        documented.is_object(),
        "{method} {path} answered {status}, which openapi.json does not list"
    );
    for (name, header) in documented["headers"].as_object().into_iter().flatten() {
        if header["required"] == true {
            assert!(
                response.headers().contains_key(name.as_str()),
                "{method} {path} {status} lacks {name}"
            );
        }
    }
    let body: Value = response.json().await.expect("JSON body");
    let schema = documented["content"]["application/json"]["schema"].clone();
    // Validate with the document's components in scope, so `#/components/...` refs resolve.
    let root = json!({"$ref": schema["$ref"], "components": document()["components"]});
    let validator = jsonschema::validator_for(&root).expect("schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(&body)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {path} {status}: {errors:?}\n{body}"
    );
    body
}

#[tokio::test]
async fn every_answer_of_the_ingress_matches_the_openapi_document() {
    let app = spawn(&[("BRIDGE_MAX_BODY_BYTES", "2048")]).await;
    app.wait_readiness(200).await;
    let path = "/webhooks/omnichat";
    assert_documented(path, "post", app.post(SEED).await).await;
    assert_documented(path, "post", app.post("{oops").await).await;
    assert_documented(
        path,
        "post",
        app.post(r#"{"objectId":"m","resource":"Message","event":"CREATE"}"#)
            .await,
    )
    .await;
    assert_documented(
        path,
        "post",
        app.client
            .post(app.webhook_url())
            .body(SEED)
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_documented(path, "post", app.post("x".repeat(5000)).await).await;
    let get = app
        .client
        .get(app.webhook_url())
        .send()
        .await
        .expect("sent");
    assert_documented(path, "post", get).await;
    let missing = app
        .client
        .post(format!("{}/nope", app.address))
        .send()
        .await
        .expect("sent");
    assert_documented(path, "post", missing).await;
    for admin in ["/healthz", "/readyz"] {
        assert_documented(admin, "get", app.admin(admin).await).await;
    }
    let metrics = app.admin("/metrics").await;
    assert_eq!(metrics.status(), 200);
    assert!(
        metrics.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("application/openmetrics-text"),
        "as documented"
    );
}

#[tokio::test]
async fn the_unavailable_answers_match_the_openapi_document() {
    let app = spawn(&[]).await;
    app.recorder.script([Answer::Fail(PublishError::Timeout(
        std::time::Duration::from_millis(500),
    ))]);
    *app.kafka.lock().expect("kafka") = Err("Kafka is not reachable".into());
    let body = assert_documented("/webhooks/omnichat", "post", app.post(SEED).await).await;
    assert_eq!(body["error"]["code"], "publish_timeout");
    app.wait_readiness(503).await;
    let body = assert_documented("/readyz", "get", app.admin("/readyz").await).await;
    assert_eq!(body["status"], "not_ready");
}

#[tokio::test]
async fn spool_mode_answers_match_the_openapi_document() {
    let dir = std::env::temp_dir().join(format!("contract-spool-{}", uuid::Uuid::new_v4()));
    let dir_text = dir.display().to_string();
    let app = spawn_real(&[
        ("BRIDGE_ACK_MODE", "spool"),
        ("BRIDGE_SPOOL_DIR", &dir_text),
    ])
    .await;
    app.wait_readiness(200).await;
    let body = assert_documented("/webhooks/omnichat", "post", app.post(SEED).await).await;
    assert_eq!(body["spooled"], true);
    let body = assert_documented("/readyz", "get", app.admin("/readyz").await).await;
    assert_eq!(body["mode"], "spool");
    let redrive = |dry_run: &str| {
        app.client
            .post(format!(
                "{}/quarantine/redrive?dryRun={dry_run}",
                app.admin_address
            ))
            .send()
    };
    let path = "/quarantine/redrive";
    let body = assert_documented(path, "post", redrive("true").await.expect("answer")).await;
    assert_eq!(body["read"], 0);
    assert_documented(path, "post", redrive("false").await.expect("answer")).await;
}

#[tokio::test]
async fn kafka_mode_has_no_quarantine_as_documented() {
    let app = spawn(&[]).await;
    let response = app
        .client
        .post(format!("{}/quarantine/redrive", app.admin_address))
        .send()
        .await
        .expect("answer");
    let body = assert_documented("/quarantine/redrive", "post", response).await;
    assert_eq!(body["error"]["code"], "no_quarantine");
}
