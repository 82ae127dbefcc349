//! What a webhook becomes: the record handed to the backend, as consumers will read it.

use std::sync::OnceLock;

use serde_json::{Value, json};

use crate::app::*;

fn assert_valid_event(value: &Value) {
    static SCHEMA: OnceLock<jsonschema::Validator> = OnceLock::new();
    let schema = SCHEMA.get_or_init(|| {
        let text = include_str!("../../schema/event-v1.json");
        let schema: Value = serde_json::from_str(text).expect("schema is JSON");
        jsonschema::validator_for(&schema).expect("schema compiles")
    });
    let errors: Vec<String> = schema.iter_errors(value).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}\n{value}");
}

#[tokio::test]
async fn the_seed_webhook_becomes_a_keyed_cloudevent_on_the_messages_topic() {
    let app = spawn(&[]).await;
    let answer = app.post_accepted(SEED).await;
    let record = &app.recorder.stored()[0];
    assert_eq!(&*record.topic, "omnichat.messages");
    assert_eq!(record.key, "dE5fgIIi8o");
    for (name, expected) in [
        ("ce_specversion", "1.0"),
        ("ce_source", "omnichat"),
        ("ce_type", "chat.omni.message.created"),
        ("ce_time", "2023-04-18T13:47:35.283Z"),
        ("ce_subject", "dE5fgIIi8o"),
        ("content-type", "application/json"),
    ] {
        assert_eq!(header(record, name), Some(expected), "{name}");
    }
    assert_eq!(header(record, "ce_id"), answer["id"].as_str());
    let value = json(record);
    assert_valid_event(&value);
    assert_eq!(value["chatId"], "dE5fgIIi8o");
    assert_eq!(value["occurredAt"], "2023-04-18T13:47:35.283Z");
    assert_eq!(value["message"]["text"], "bom dia");
    assert_eq!(
        value["raw"],
        serde_json::from_str::<Value>(SEED).expect("seed")
    );
}

#[tokio::test]
async fn each_resource_goes_to_its_topic_keyed_by_object() {
    let app = spawn(&[]).await;
    let cases = [
        (
            r#"{"objectId":"int-1","resource":"Interaction","event":"UPDATE","timestamp":"2023-04-18T10:47:35-03:00"}"#,
            "omnichat.interactions",
            "chat.omni.interaction.updated",
        ),
        (
            r#"{"objectId":"ord-1","resource":"Order","event":"DELETE","timestamp":1681825655}"#,
            "omnichat.orders",
            "chat.omni.order.deleted",
        ),
        (
            r#"{"objectId":"con-1","resource":"Contact","event":"MERGE","timestamp":null}"#,
            "omnichat.other",
            "chat.omni.contact.merge",
        ),
    ];
    for (body, topic, kind) in cases {
        let answer = app.post_accepted(body).await;
        assert_eq!(answer["topic"], topic);
        let record = app.recorder.stored().pop().expect("stored");
        assert_eq!(
            (&*record.topic, header(&record, "ce_type")),
            (topic, Some(kind))
        );
        assert_eq!(
            Some(record.key.as_str()),
            json(&record)["objectId"].as_str()
        );
        assert_valid_event(&json(&record));
    }
}

#[tokio::test]
async fn traceparent_and_unknown_values_are_carried_through() {
    let app = spawn(&[]).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let body = r#"{"objectId":"m-ig","resource":"Message","event":"CREATE","timestamp":"2023-04-18T13:47:35.283Z","newTopLevel":{"x":1},
        "payload":{"chat":{"className":"Chat","objectId":"c-ig"},"platform":"INSTAGRAM","type":"SUMMARY","status":"INCOMING_DELETED","text":"ol\u00e1"}}"#;
    let response = app
        .client
        .post(app.webhook_url())
        .header("x-webhook-token", TOKEN)
        .header("traceparent", traceparent)
        .body(body)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 202);
    let record = &app.recorder.stored()[0];
    assert_eq!(header(record, "traceparent"), Some(traceparent));
    let value = json(record);
    assert_valid_event(&value);
    assert_eq!(value["message"]["platform"], "INSTAGRAM");
    assert_eq!(value["message"]["text"], "olá");
    assert_eq!(value["raw"]["newTopLevel"], json!({"x": 1}));
}

#[tokio::test]
async fn a_redelivered_webhook_keeps_its_event_id_and_another_gets_another() {
    let app = spawn(&[]).await;
    let first = app.post_accepted(SEED).await;
    let again = app.post_accepted(SEED).await;
    assert_eq!(first["id"], again["id"]);
    let later = app
        .post_accepted(SEED.replace("1681825655283", "1681825655999"))
        .await;
    assert_ne!(first["id"], later["id"]);
}

#[tokio::test]
async fn the_event_source_setting_names_the_source() {
    let app = spawn(&[("BRIDGE_EVENT_SOURCE", "omnichat/tenant-7")]).await;
    app.post_accepted(SEED).await;
    let record = &app.recorder.stored()[0];
    assert_eq!(header(record, "ce_source"), Some("omnichat/tenant-7"));
}
