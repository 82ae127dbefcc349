//! `openapi.json` describes what the running server answers: each status the tests can provoke
//! is documented for its operation, and its body matches the documented schema.

use std::sync::OnceLock;

use serde_json::{Value, json};

use crate::helpers::*;

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
    let app = spawn_app_with(&[("BRIDGE_MAX_BODY_BYTES", "2048")]).await;
    app.wait_ready().await;
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
        assert_documented(admin, "get", app.get_admin(admin).await).await;
    }
    let metrics = app.get_admin("/metrics").await;
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
    let port = free_port();
    let app = spawn_app_on(
        &format!("127.0.0.1:{port}"),
        TestTopics::new(),
        &[("BRIDGE_PUBLISH_TIMEOUT_MS", "500")],
    )
    .await;
    let body = assert_documented("/webhooks/omnichat", "post", app.post(SEED).await).await;
    assert_eq!(body["error"]["code"], "publish_timeout");
    let body = assert_documented("/readyz", "get", app.get_admin("/readyz").await).await;
    assert_eq!(body["status"], "not_ready");
}

#[tokio::test]
async fn spool_mode_answers_match_the_openapi_document() {
    let dir = spool_dir();
    let vars = spool_vars(&dir);
    let overrides = overrides(&vars);
    let app = spawn_app_with(&overrides).await;
    app.wait_ready().await;
    let body = assert_documented("/webhooks/omnichat", "post", app.post(SEED).await).await;
    assert_eq!(body["spooled"], true);
    let body = assert_documented("/readyz", "get", app.get_admin("/readyz").await).await;
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
    let app = spawn_app().await;
    let response = app
        .client
        .post(format!("{}/quarantine/redrive", app.admin_address))
        .send()
        .await
        .expect("answer");
    let body = assert_documented("/quarantine/redrive", "post", response).await;
    assert_eq!(body["error"]["code"], "no_quarantine");
}
