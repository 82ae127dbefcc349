//! `openapi.json`'s request schema says exactly which bodies are stored: over generated bodies
//! near the schema's edges, one the schema rejects is never 202 (it is 400 or 422), and one it
//! accepts is 202. The refusals no JSON Schema can express (size, nesting, duplicated keys,
//! unpaired surrogates) are each named in the document, and answered as it says.

use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Map, Value, json};

use crate::app::*;
use crate::openapi::{document, validator};

fn request_body() -> &'static Value {
    &document()["paths"]["/webhooks/omnichat"]["post"]["requestBody"]
}

fn webhook_schema() -> jsonschema::Validator {
    validator(&request_body()["content"]["application/json"]["schema"])
}

/// Any JSON value, shallow, from a few leaves the envelope's fields are tried with.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(Value::from),
        prop_oneof![
            Just(String::new()),
            Just("Message".to_owned()),
            Just("2023-04-18T13:47:35.283Z".to_owned()),
            "\\PC{0,8}",
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(key(), inner, 0..3)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("objectId".to_owned()),
        Just("chat".to_owned()),
        Just("className".to_owned()),
        "[a-z]{1,6}",
    ]
}

/// A string most of the time, since that is what the routing fields need.
fn mostly_string(strings: impl Strategy<Value = String> + 'static) -> BoxedStrategy<Value> {
    prop_oneof![9 => strings.prop_map(Value::from), 1 => any_json()].boxed()
}

/// A field that is there most of the time.
fn mostly_present(value: BoxedStrategy<Value>) -> BoxedStrategy<Option<Value>> {
    prop_oneof![9 => value.prop_map(Some), 1 => Just(None)].boxed()
}

fn object(fields: Vec<(&str, Option<Value>)>, extra: Map<String, Value>) -> Value {
    let mut map = extra;
    for (name, value) in fields {
        match value {
            Some(value) => map.insert(name.to_owned(), value),
            None => map.remove(name),
        };
    }
    Value::Object(map)
}

/// A Message's payload, or what stands in for one.
fn payload() -> impl Strategy<Value = Value> {
    let chat = (
        mostly_present(mostly_string("[a-zA-Z0-9]{0,10}".boxed())),
        prop::collection::btree_map(key(), any_json(), 0..2),
    )
        .prop_map(|(id, extra)| object(vec![("objectId", id)], extra.into_iter().collect()));
    let shaped = (
        mostly_present(prop_oneof![4 => chat.boxed(), 1 => any_json()].boxed()),
        prop::collection::btree_map("[a-zA-Z]{1,10}", any_json(), 0..3),
    )
        .prop_map(|(chat, extra)| object(vec![("chat", chat)], extra.into_iter().collect()));
    prop_oneof![4 => shaped, 1 => any_json()]
}

/// Envelopes around the schema's edges, now and then something that is not one.
fn body() -> impl Strategy<Value = Value> {
    let resource = prop_oneof![
        Just("Message".to_owned()),
        Just("Order".to_owned()),
        Just("Interaction".to_owned()),
        Just("message".to_owned()),
        "[A-Za-z]{0,10}",
    ];
    let envelope = (
        mostly_present(mostly_string("[a-zA-Z0-9]{0,10}".boxed())),
        mostly_present(mostly_string(resource.boxed())),
        mostly_present(mostly_string("[A-Z]{0,8}".boxed())),
        prop::option::of(any_json()),
        prop::option::weighted(0.8, payload()),
        prop::collection::btree_map("[a-z]{1,8}", any_json(), 0..3),
    )
        .prop_map(|(object_id, resource, event, timestamp, payload, extra)| {
            object(
                vec![
                    ("objectId", object_id),
                    ("resource", resource),
                    ("event", event),
                    ("timestamp", timestamp),
                    ("payload", payload),
                ],
                extra.into_iter().collect(),
            )
        });
    prop_oneof![12 => envelope, 1 => any_json()]
}

/// The schema's verdict and the bridge's answer agree on every generated body; both sides of
/// the schema are reached often, so the agreement is not vacuous.
#[tokio::test(flavor = "multi_thread")]
async fn the_request_schema_accepts_exactly_the_bodies_that_are_stored() {
    let app = spawn(&[]).await;
    let schema = webhook_schema();
    let (valid, invalid) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let handle = tokio::runtime::Handle::current();
    let mut runner = TestRunner::new(Config {
        cases: 600,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&body(), |body| {
        let accepted_by_schema = schema.is_valid(&body);
        let bytes = serde_json::to_vec(&body).expect("serializes");
        let (status, answer) = tokio::task::block_in_place(|| {
            handle.block_on(async {
                let response = app.post(bytes).await;
                let status = response.status().as_u16();
                (status, response.text().await.expect("answer"))
            })
        });
        let verdict = match accepted_by_schema {
            true => {
                valid.fetch_add(1, Ordering::Relaxed);
                status == 202
            }
            false => {
                invalid.fetch_add(1, Ordering::Relaxed);
                status == 400 || status == 422
            }
        };
        match verdict {
            true => Ok(()),
            false => Err(TestCaseError::fail(format!(
                "schema says {}, the bridge answered {status}: {answer}",
                if accepted_by_schema {
                    "valid"
                } else {
                    "invalid"
                }
            ))),
        }
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    let (valid, invalid) = (valid.into_inner(), invalid.into_inner());
    assert!(
        valid > 100 && invalid > 100,
        "valid {valid}, invalid {invalid}"
    );
}

/// Found by Schemathesis (issue 20): a Message without a chat was valid by the old schema and
/// answered 422.
#[tokio::test]
async fn a_message_without_a_chat_is_refused_by_the_schema_as_by_the_bridge() {
    let app = spawn(&[]).await;
    let body = json!({"resource": "Message", "event": "CREATE", "objectId": "", "timestamp": null, "payload": {}});
    assert!(!webhook_schema().is_valid(&body));
    let (status, answer) = error_of(app.post(body.to_string()).await).await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (422, &json!("missing_chat"))
    );
}

/// Found by Schemathesis (issue 20): an Order whose payload held a chat with a non-string id
/// was invalid by the old schema and stored, as it should be: only a Message's payload is read.
#[tokio::test]
async fn another_resources_payload_is_not_read_by_the_schema_or_the_bridge() {
    let app = spawn(&[]).await;
    let body = json!({"event": "CREATE", "objectId": "", "payload": {"chat": {"objectId": {}}}, "resource": "Order", "timestamp": null});
    assert!(webhook_schema().is_valid(&body));
    app.post_accepted(body.to_string()).await;
}

/// What the schema accepts and the bridge still refuses, each as the document names it.
#[tokio::test]
async fn the_refusals_beyond_the_schema_are_the_documented_ones() {
    let app = spawn(&[("BRIDGE_MAX_BODY_BYTES", "4096")]).await;
    let schema = webhook_schema();
    let order = r#""objectId":"o1","resource":"Order","event":"CREATE""#;
    let message = |payload: &str| {
        format!(r#"{{"objectId":"m1","resource":"Message","event":"CREATE","payload":{payload}}}"#)
    };
    let mut deep = json!(1);
    for _ in 0..128 {
        deep = json!([deep]);
    }
    let deep = json!({"objectId": "o1", "resource": "Order", "event": "CREATE", "x": deep});
    let cases: Vec<(String, &str)> = vec![
        (
            format!(r#"{{{order},"pad":"{}"}}"#, "x".repeat(5000)),
            "a body over BRIDGE_MAX_BODY_BYTES",
        ),
        (deep.to_string(), "129 levels of nesting"),
        (
            format!(r#"{{{order},"objectId":"o2"}}"#),
            "a repeated objectId",
        ),
        (
            message(r#"{"chat":{"objectId":"c1"},"text":"a","text":"b"}"#),
            "a Message payload repeating text",
        ),
        (
            message(r#"{"chat":{"objectId":"c1","objectId":"c2"}}"#),
            "a chat repeating objectId",
        ),
        (
            r#"{"objectId":"\ud800","resource":"Order","event":"CREATE"}"#.into(),
            "an unpaired surrogate in objectId",
        ),
        (
            format!(r#"{{"\udc00":1,{order}}}"#),
            "an unpaired surrogate in a top-level key",
        ),
        (
            message(r#"{"chat":{"objectId":"\ud800"}}"#),
            "an unpaired surrogate as the chat's objectId",
        ),
    ];
    let named: Vec<(u64, &str)> = request_body()["x-refusals-beyond-schema"]
        .as_array()
        .expect("the document names them")
        .iter()
        .map(|refusal| {
            let status = refusal["status"].as_u64().expect("status");
            (status, refusal["code"].as_str().expect("code"))
        })
        .collect();
    for (body, what) in cases {
        // As a JSON Schema validator reads the body: the last of repeated keys counts, and an
        // unpaired surrogate (which serde_json does not parse) stands as some other text.
        let value = match what {
            "129 levels of nesting" => deep.clone(),
            _ => serde_json::from_str(&body.replace(r"\ud800", "x").replace(r"\udc00", "y"))
                .expect("JSON"),
        };
        assert!(schema.is_valid(&value), "the schema accepts {what}");
        let (status, answer) = error_of(app.post(body).await).await;
        let code = answer["error"]["code"].as_str().expect("code");
        assert!(
            named.contains(&(u64::from(status), code)),
            "{what}: {status} {code} is not among the document's refusals {named:?}"
        );
    }
}

/// serde reads a struct from an array of its fields in order, so a five-element array was
/// taken for an envelope and a twelve-element one for a Message's payload; an object is what
/// the contract and the schema ask for.
#[tokio::test]
async fn arrays_in_place_of_the_envelope_the_payload_or_the_chat_are_refused() {
    let app = spawn(&[]).await;
    let nulls = |n: usize| vec!["null"; n].join(",");
    let cases = [
        (
            r#"["o1","Order","CREATE",null,null]"#.to_owned(),
            400,
            "not_an_object",
        ),
        (
            format!(
                r#"{{"objectId":"m1","resource":"Message","event":"CREATE","payload":[{{"objectId":"c1"}},{}]}}"#,
                nulls(11)
            ),
            422,
            "missing_chat",
        ),
        (
            r#"{"objectId":"m1","resource":"Message","event":"CREATE","payload":{"chat":["c1"]}}"#
                .to_owned(),
            422,
            "missing_chat",
        ),
    ];
    let schema = webhook_schema();
    for (body, expected, code) in cases {
        let value: Value = serde_json::from_str(&body).expect("JSON");
        assert!(!schema.is_valid(&value), "the schema refuses {body}");
        let (status, answer) = error_of(app.post(body.clone()).await).await;
        assert_eq!(
            (status, &answer["error"]["code"]),
            (expected, &json!(code)),
            "{body}"
        );
        assert_eq!(answer["deadLettered"], true);
    }
    assert!(app.recorder.stored_to("omnichat.orders").is_empty());
    assert!(app.recorder.stored_to("omnichat.messages").is_empty());
}
