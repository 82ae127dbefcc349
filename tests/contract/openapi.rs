//! `openapi.json` describes what the running server answers: each status the tests can provoke
//! is documented for its operation (or, for unknown paths and methods, among the answers every
//! path shares), with its required headers, and its body matches the documented schema.

use std::sync::OnceLock;

use serde_json::{Value, json};

use omnichat_bridge::publish::PublishError;
use omnichat_bridge::publish::refusal::Refused;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::app::*;

pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json"))
            .expect("openapi.json");
        serde_json::from_str(&text).expect("openapi.json is JSON")
    })
}

/// A validator for `schema`, with the document's components in scope so that
/// `#/components/...` references resolve.
pub fn validator(schema: &Value) -> jsonschema::Validator {
    let mut root = schema.clone();
    root["components"] = document()["components"].clone();
    jsonschema::validator_for(&root).expect("schema compiles")
}

/// Checks one answer against a documented response; returns the body.
async fn assert_matches(label: &str, documented: &Value, response: reqwest::Response) -> Value {
    assert!(documented.is_object(), "{label}: not in openapi.json");
    for (name, header) in documented["headers"].as_object().into_iter().flatten() {
        let Some(value) = response.headers().get(name.as_str()) else {
            assert!(header["required"] != true, "{label} lacks {name}");
            continue;
        };
        let value = value.to_str().expect("ASCII header");
        let typed = match header["schema"]["type"].as_str() {
            Some("integer") => json!(value.parse::<i64>().expect("an integer header")),
            _ => json!(value),
        };
        assert!(
            validator(&header["schema"]).is_valid(&typed),
            "{label}: {name}: {value}"
        );
    }
    let media_types = documented["content"].as_object().expect("content");
    let content_type = response.headers()["content-type"]
        .to_str()
        .expect("ASCII")
        .to_owned();
    let (_, media) = media_types
        .iter()
        .find(|(name, _)| content_type.starts_with(name.as_str()))
        .unwrap_or_else(|| panic!("{label}: content type {content_type} is not documented"));
    let text = response.text().await.expect("body");
    let body: Value = match content_type.starts_with("application/json") {
        true => serde_json::from_str(&text).expect("JSON body"),
        false => json!(text),
    };
    let errors: Vec<String> = validator(&media["schema"])
        .iter_errors(&body)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{label}: {errors:?}\n{body}");
    body
}

/// Checks an answer of `method path` against its operation's documented responses.
async fn assert_documented(path: &str, method: &str, response: reqwest::Response) -> Value {
    let status = response.status().as_u16().to_string();
    let documented = &document()["paths"][path][method]["responses"][&status];
    let label = format!("{method} {path} {status}");
    assert_matches(&label, documented, response).await
}

/// Checks an answer against one of the responses every path shares.
async fn assert_shared(name: &str, response: reqwest::Response) -> Value {
    let documented = &document()["components"]["responses"][name];
    let label = format!("{} {name}", response.url().path());
    assert_matches(&label, documented, response).await
}

#[tokio::test]
async fn every_answer_of_the_ingress_matches_the_openapi_document() {
    let app = spawn(&[("BRIDGE_MAX_BODY_BYTES", "2048")]).await;
    app.wait_readiness(200).await;
    let path = "/webhooks/omnichat";
    assert_documented(path, "post", app.post(SEED).await).await;
    let repeat = assert_documented(path, "post", app.post(SEED).await).await;
    assert_eq!(repeat["duplicate"], true);
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
    for admin in ["/healthz", "/readyz", "/metrics"] {
        assert_documented(admin, "get", app.admin(admin).await).await;
    }
}

#[tokio::test]
async fn the_unavailable_answers_match_the_openapi_document() {
    let app = spawn(&[]).await;
    app.recorder.script([Answer::Fail(PublishError::Timeout(
        std::time::Duration::from_millis(500),
    ))]);
    *app.kafka.lock().expect("kafka") =
        Err(KafkaError::MetadataFetch(RDKafkaErrorCode::AllBrokersDown));
    let body = assert_documented("/webhooks/omnichat", "post", app.post(SEED).await).await;
    assert_eq!(body["error"]["code"], "publish_timeout");
    app.wait_readiness(503).await;
    let body = assert_documented("/readyz", "get", app.admin("/readyz").await).await;
    assert_eq!(body["status"], "not_ready");
}

/// Kafka refusing a record for good: the event (with `deadLettered` either way), or the dead
/// letter of an unusable body (without it), and a record larger than Kafka takes.
#[tokio::test]
async fn the_refusals_kafka_decides_match_the_openapi_document() {
    let app = spawn(&[]).await;
    let refused = |code| Answer::Fail(PublishError::Poison(Refused::new(code, "refused")));
    let path = "/webhooks/omnichat";
    let cases = [
        (
            vec![refused(RDKafkaErrorCode::PolicyViolation)],
            SEED,
            422,
            json!(true),
        ),
        (
            vec![
                refused(RDKafkaErrorCode::PolicyViolation),
                refused(RDKafkaErrorCode::PolicyViolation),
            ],
            SEED,
            422,
            json!(false),
        ),
        (
            vec![refused(RDKafkaErrorCode::MessageSizeTooLarge)],
            SEED,
            413,
            json!(true),
        ),
        (
            vec![refused(RDKafkaErrorCode::PolicyViolation)],
            "nope",
            422,
            json!(false),
        ),
        (
            vec![Answer::Fail(PublishError::TooLarge { size: 2, limit: 1 })],
            SEED,
            413,
            Value::Null,
        ),
    ];
    for (answers, body, status, dead_lettered) in cases {
        app.recorder.script(answers);
        let response = app.post(body).await;
        assert_eq!(response.status(), status, "{body}");
        let answer = assert_documented(path, "post", response).await;
        assert_eq!(answer["deadLettered"], dead_lettered, "{answer}");
    }
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
    let repeat = assert_documented("/webhooks/omnichat", "post", app.post(SEED).await).await;
    assert_eq!(
        (&repeat["spooled"], &repeat["duplicate"]),
        (&json!(true), &json!(true))
    );
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
    let _ = std::fs::remove_dir_all(dir);
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

/// Found by Schemathesis: actix's query extractor answered a plain-text 400.
#[tokio::test]
async fn a_dry_run_that_is_not_a_boolean_is_a_documented_400_error_object() {
    let app = spawn(&[]).await;
    for query in [
        "dryRun=-7e307",
        "dryRun=",
        "dryRun=TRUE",
        "dryRun=true&dryRun=false",
    ] {
        let response = app
            .client
            .post(format!("{}/quarantine/redrive?{query}", app.admin_address))
            .send()
            .await
            .expect("answer");
        assert_eq!(response.status(), 400, "{query}");
        let body = assert_documented("/quarantine/redrive", "post", response).await;
        assert_eq!(body["error"]["code"], "invalid_parameter", "{query}");
    }
}

/// Every method each port's paths do not declare, on both ports, answered 405 naming the
/// declared method; the paths of the other port and unknown ones 404.
#[tokio::test]
async fn undeclared_methods_are_405_with_allow_and_unknown_paths_404_on_both_ports() {
    let app = spawn(&[]).await;
    let methods = [
        "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE",
    ];
    let ports = [
        (&app.address, "public listener"),
        (&app.admin_address, "admin listener"),
    ];
    for (path, item) in document()["paths"].as_object().expect("paths") {
        let served_by = match item["servers"][0]["description"].as_str() {
            Some(description) => description,
            None => document()["servers"][0]["description"]
                .as_str()
                .expect("servers"),
        };
        for (address, listener) in ports {
            let on_its_port = served_by.starts_with(listener);
            for method in methods {
                let declared = item.get(method.to_lowercase()).is_some();
                if declared && on_its_port {
                    continue;
                }
                let request = app
                    .client
                    .request(method.parse().expect("method"), format!("{address}{path}"));
                let response = request.send().await.expect("answer");
                let label = format!("{method} {path} on the {listener}");
                if !on_its_port {
                    assert_eq!(response.status(), 404, "{label}");
                    if method != "HEAD" {
                        assert_shared("NotFound", response).await;
                    }
                    continue;
                }
                assert_eq!(response.status(), 405, "{label}");
                let allow = response.headers().get("allow").map(|v| v.to_owned());
                let declared_methods: Vec<String> = item
                    .as_object()
                    .expect("path item")
                    .keys()
                    .filter(|key| methods.contains(&key.to_uppercase().as_str()))
                    .map(|key| key.to_uppercase())
                    .collect();
                assert_eq!(
                    allow.as_ref().and_then(|v| v.to_str().ok()),
                    Some(declared_methods.join(", ").as_str()),
                    "{label}"
                );
                if method != "HEAD" {
                    assert_shared("MethodNotAllowed", response).await;
                }
            }
        }
    }
    for address in [&app.address, &app.admin_address] {
        let response = app
            .client
            .post(format!("{address}/nope"))
            .send()
            .await
            .expect("answer");
        assert_eq!(response.status(), 404);
        assert_shared("NotFound", response).await;
    }
}
