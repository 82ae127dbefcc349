//! What consumers read: topic, key, partition, headers and value of each record.

use crate::helpers::*;
use serde_json::{Value, json};

#[tokio::test]
#[ignore = "needs the broker: scripts/test.sh starts it and runs these"]
async fn the_seed_webhook_becomes_a_keyed_cloudevent_on_the_messages_topic() {
    let app = spawn_app().await;
    app.wait_ready().await;
    let answer = app.post_accepted(SEED).await;
    assert_eq!(answer["status"], "accepted");
    assert_eq!(answer["topic"], app.topics.messages.as_str());

    let records = app.read(&app.topics.messages, 1).await;
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.key.as_deref(), Some("dE5fgIIi8o"));
    assert_eq!(record.partition, java_partition("dE5fgIIi8o", PARTITIONS));
    assert_eq!(answer["partition"], record.partition);
    assert_eq!(answer["offset"], record.offset);
    assert_eq!(record.header("ce_specversion"), Some("1.0"));
    assert_eq!(record.header("ce_id"), answer["id"].as_str());
    assert_eq!(record.header("ce_source"), Some("omnichat"));
    assert_eq!(record.header("ce_type"), Some("chat.omni.message.created"));
    assert_eq!(record.header("ce_time"), Some("2023-04-18T13:47:35.283Z"));
    assert_eq!(record.header("ce_subject"), Some("dE5fgIIi8o"));
    assert_eq!(record.header("content-type"), Some("application/json"));

    let value = record.json();
    assert_valid_event(&value);
    assert_eq!(value["id"], answer["id"]);
    assert_eq!(value["chatId"], "dE5fgIIi8o");
    assert_eq!(value["occurredAt"], "2023-04-18T13:47:35.283Z");
    assert_eq!(value["message"]["text"], "bom dia");
    assert_eq!(
        value["raw"],
        serde_json::from_str::<Value>(SEED).expect("seed")
    );
}

#[tokio::test]
#[ignore = "needs the broker: scripts/test.sh starts it and runs these"]
async fn each_resource_goes_to_its_topic_keyed_by_object() {
    let app = spawn_app().await;
    app.wait_ready().await;
    let cases = [
        (
            r#"{"objectId":"int-1","resource":"Interaction","event":"UPDATE","timestamp":"2023-04-18T10:47:35-03:00"}"#,
            &app.topics.interactions,
            "chat.omni.interaction.updated",
        ),
        (
            r#"{"objectId":"ord-1","resource":"Order","event":"DELETE","timestamp":1681825655}"#,
            &app.topics.orders,
            "chat.omni.order.deleted",
        ),
        (
            r#"{"objectId":"con-1","resource":"Contact","event":"MERGE","timestamp":null,"extra":[1,2]}"#,
            &app.topics.other,
            "chat.omni.contact.merge",
        ),
    ];
    for (body, topic, kind) in cases {
        let answer = app.post_accepted(body).await;
        assert_eq!(answer["topic"], topic.as_str());
        let records = app.read(topic, 1).await;
        assert_eq!(records.len(), 1, "{body}");
        let record = &records[0];
        let key = serde_json::from_str::<Value>(body).expect("json")["objectId"]
            .as_str()
            .expect("id")
            .to_owned();
        assert_eq!(record.key.as_deref(), Some(key.as_str()));
        assert_eq!(record.partition, java_partition(&key, PARTITIONS), "{body}");
        assert_eq!(record.header("ce_type"), Some(kind));
        let value = record.json();
        assert_valid_event(&value);
        assert_eq!(value["chatId"], Value::Null);
        assert_eq!(value["message"], Value::Null);
    }
}

#[tokio::test]
#[ignore = "needs the broker: scripts/test.sh starts it and runs these"]
async fn keys_spread_over_partitions_exactly_as_kafkas_java_partitioner_would() {
    let app = spawn_app().await;
    app.wait_ready().await;
    let chats: Vec<String> = (0..24).map(|i| format!("chat-{i}")).collect();
    for chat in &chats {
        app.post_accepted(message(chat, 0)).await;
    }
    let records = app.read(&app.topics.messages, chats.len()).await;
    assert_eq!(records.len(), chats.len());
    let mut used = std::collections::HashSet::new();
    for record in &records {
        let key = record.key.clone().expect("key");
        assert_eq!(record.partition, java_partition(&key, PARTITIONS), "{key}");
        used.insert(record.partition);
    }
    assert!(
        used.len() > 1,
        "24 chats should not all hash to one partition"
    );
}

#[tokio::test]
#[ignore = "needs the broker: scripts/test.sh starts it and runs these"]
async fn copies_traceparent_and_unknown_values_through() {
    let app = spawn_app().await;
    app.wait_ready().await;
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
    let record = &app.read(&app.topics.messages, 1).await[0];
    assert_eq!(record.header("traceparent"), Some(traceparent));
    let value = record.json();
    assert_valid_event(&value);
    assert_eq!(value["message"]["platform"], "INSTAGRAM");
    assert_eq!(value["message"]["type"], "SUMMARY");
    assert_eq!(value["message"]["text"], "olá");
    assert_eq!(value["raw"]["newTopLevel"], json!({"x": 1}));
}

#[tokio::test]
#[ignore = "needs the broker: scripts/test.sh starts it and runs these"]
async fn a_redelivered_webhook_keeps_its_event_id_and_is_stored_once() {
    let app = spawn_app().await;
    app.wait_ready().await;
    let first = app.post_accepted(SEED).await;
    let again = app.post_accepted(SEED).await;
    assert_eq!(first["id"], again["id"]);
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(
        (&again["partition"], &again["offset"]),
        (&first["partition"], &first["offset"]),
        "the first answer's place"
    );
    let other = app
        .post_accepted(SEED.replace("1681825655283", "1681825655999"))
        .await;
    assert_ne!(first["id"], other["id"]);
    // Same chat, so the same partition: the next event is right behind the first, with no
    // copy of it in between.
    assert_eq!(other["partition"], first["partition"]);
    assert_eq!(
        other["offset"].as_i64(),
        first["offset"].as_i64().map(|o| o + 1)
    );
    let records = app.read(&app.topics.messages, 2).await;
    let ids: Vec<_> = records.iter().map(|r| r.header("ce_id")).collect();
    assert_eq!(ids, [first["id"].as_str(), other["id"].as_str()]);
}
