use serde_json::Value;

use super::*;
use crate::config::Topics;

const SEED: &str = r#"{"objectId": "c1KjTsOhDP", "resource": "Message", "event": "CREATE", "timestamp": 1681825655283,
 "payload": {"chat": {"className": "Chat", "objectId": "dE5fgIIi8o"}, "platform": "WAB-OMNICHAT",
   "status": "INCOMING_RECEIVED", "system": false, "type": "TEXT", "text": "bom dia",
   "createdAt": "2023-04-18T13:47:35.255Z", "updatedAt": "2023-04-18T13:47:35.255Z",
   "objectId": "c1KjTsOhDP", "unknownField": {"kept": true}}}"#;

fn normalizer() -> Normalizer {
    Normalizer::new(
        Topics {
            messages: "m".into(),
            interactions: "i".into(),
            orders: "o".into(),
            other: "x".into(),
            deadletter: "d".into(),
        },
        "omnichat".into(),
    )
}

fn receipt<'a>(body: &'a str, traceparent: Option<&'a str>) -> Receipt<'a> {
    Receipt {
        body: body.as_bytes(),
        received_at: time::macros::datetime!(2026-11-25 10:00:00.123 UTC),
        signed_id: None,
        traceparent,
    }
}

fn record_for(body: &str) -> Record {
    let webhook = Webhook::parse(body.as_bytes()).expect("test webhook parses");
    normalizer().event(&webhook, &receipt(body, None))
}

fn value_of(record: &Record) -> Value {
    serde_json::from_slice(&record.value).expect("the value is JSON")
}

#[test]
fn normalizes_the_seed_webhook_to_schema_1() {
    let record = record_for(SEED);
    assert_eq!(&*record.topic, "m");
    assert_eq!(record.key, "dE5fgIIi8o");
    let value = value_of(&record);
    let id = record.header("ce_id").expect("id").to_owned();
    assert_eq!(
        value,
        serde_json::json!({
            "id": id, "type": "chat.omni.message.created", "source": "omnichat",
            "resource": "Message", "event": "CREATE", "objectId": "c1KjTsOhDP", "chatId": "dE5fgIIi8o",
            "occurredAt": "2023-04-18T13:47:35.283Z", "receivedAt": "2026-11-25T10:00:00.123Z",
            "message": {"objectId": "c1KjTsOhDP", "chatId": "dE5fgIIi8o", "platform": "WAB-OMNICHAT",
                "status": "INCOMING_RECEIVED", "system": false, "type": "TEXT", "text": "bom dia",
                "createdAt": "2023-04-18T13:47:35.255Z", "updatedAt": "2023-04-18T13:47:35.255Z",
                "userId": null, "routeToUserId": null, "routeToTeamId": null},
            "raw": serde_json::from_str::<Value>(SEED).expect("seed is JSON"),
        })
    );
}

#[test]
fn raw_is_the_body_byte_for_byte() {
    let record = record_for(SEED);
    let text = String::from_utf8(record.value).expect("utf-8");
    assert!(text.ends_with(&format!(",\"raw\":{SEED}}}")), "{text}");
}

#[test]
fn sets_cloudevents_headers() {
    let record = record_for(SEED);
    let expected = [
        ("ce_specversion", "1.0"),
        ("ce_source", "omnichat"),
        ("ce_type", "chat.omni.message.created"),
        ("ce_time", "2023-04-18T13:47:35.283Z"),
        ("ce_subject", "dE5fgIIi8o"),
        ("content-type", "application/json"),
    ];
    for (name, value) in expected {
        assert_eq!(record.header(name), Some(value), "{name}");
    }
    assert_eq!(record.header("traceparent"), None);
}

#[test]
fn copies_a_well_formed_traceparent_only() {
    let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let webhook = Webhook::parse(SEED.as_bytes()).expect("parses");
    let record = normalizer().event(&webhook, &receipt(SEED, Some(good)));
    assert_eq!(record.header("traceparent"), Some(good));
    for bad in [
        "",
        "00-xyz",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ] {
        assert!(!is_traceparent(bad), "{bad}");
    }
    assert!(is_traceparent(good));
}

#[test]
fn falls_back_to_the_receive_time_when_the_timestamp_is_unreadable() {
    for timestamp in ["\"soon\"", "null", "true"] {
        let body = format!(
            r#"{{"objectId":"o1","resource":"Order","event":"CREATE","timestamp":{timestamp}}}"#
        );
        let record = record_for(&body);
        assert_eq!(value_of(&record)["occurredAt"], Value::Null, "{timestamp}");
        assert_eq!(record.header("ce_time"), Some("2026-11-25T10:00:00.123Z"));
    }
    let record = record_for(r#"{"objectId":"o1","resource":"Order","event":"CREATE"}"#);
    assert_eq!(value_of(&record)["occurredAt"], Value::Null);
}

#[test]
fn routes_each_resource_to_its_topic_with_its_type_and_key() {
    let cases = [
        (
            r#"{"objectId":"i1","resource":"Interaction","event":"UPDATE"}"#,
            "i",
            "chat.omni.interaction.updated",
            "i1",
        ),
        (
            r#"{"objectId":"o1","resource":"Order","event":"DELETE"}"#,
            "o",
            "chat.omni.order.deleted",
            "o1",
        ),
        (
            r#"{"objectId":"k1","resource":"Contact","event":"CREATE"}"#,
            "x",
            "chat.omni.contact.created",
            "k1",
        ),
        (
            r#"{"objectId":"o2","resource":"Order","event":"ARCHIVE"}"#,
            "o",
            "chat.omni.order.archive",
            "o2",
        ),
        (
            r#"{"objectId":"m1","resource":"Message","event":"UPDATE","payload":{"chat":{"objectId":"c7"}}}"#,
            "m",
            "chat.omni.message.updated",
            "c7",
        ),
    ];
    for (body, topic, kind, key) in cases {
        let record = record_for(body);
        assert_eq!(&*record.topic, topic, "{body}");
        assert_eq!(record.header("ce_type"), Some(kind), "{body}");
        assert_eq!(record.key, key, "{body}");
        assert_eq!(record.header("ce_subject"), Some(key), "{body}");
        let value = value_of(&record);
        assert_eq!(value["type"], kind);
        if topic != "m" {
            assert_eq!(value["chatId"], Value::Null);
            assert_eq!(value["message"], Value::Null);
        }
    }
}

#[test]
fn a_signed_request_uses_the_senders_id() {
    let webhook = Webhook::parse(SEED.as_bytes()).expect("parses");
    let mut receipt = receipt(SEED, None);
    receipt.signed_id = Some("msg_2Lx");
    let record = normalizer().event(&webhook, &receipt);
    assert_eq!(record.header("ce_id"), Some("msg_2Lx"));
    assert_eq!(value_of(&record)["id"], "msg_2Lx");
}

#[test]
fn a_dead_letter_keeps_the_exact_bytes_and_says_why() {
    let body = "{\"objectId\": 5, \u{e9}}";
    let rejection = Webhook::parse(body.as_bytes()).expect_err("invalid");
    let record = normalizer().dead_letter(&rejection, &receipt(body, None));
    assert_eq!(&*record.topic, "d");
    assert_eq!(record.value, body.as_bytes());
    assert_eq!(record.header("error_code"), Some("invalid_json"));
    assert!(
        record
            .header("error_message")
            .is_some_and(|m| !m.is_empty())
    );
    assert_eq!(
        record.header("ce_id"),
        Some(id::for_bytes(body.as_bytes()).as_str())
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Keys an OmniChat envelope uses, so generated documents often come close to one.
    const KEYS: [&str; 12] = [
        "objectId",
        "resource",
        "event",
        "timestamp",
        "payload",
        "chat",
        "text",
        "updatedAt",
        "createdAt",
        "type",
        "className",
        "status",
    ];

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            prop_oneof![
                Just("Message".to_owned()),
                Just("Order".to_owned()),
                Just("CREATE".to_owned()),
                Just("2023-04-18T13:47:35.255Z".to_owned()),
                Just("1681825655283".to_owned()),
                ".{0,12}",
                "[\\x00-\\x1f\"\\\\\u{fffd}\u{1F600}]{0,6}",
            ]
            .prop_map(Value::String),
        ]
    }

    fn json() -> impl Strategy<Value = Value> {
        scalar().prop_recursive(6, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec(
                    (
                        prop_oneof![
                            proptest::sample::select(&KEYS[..]).prop_map(str::to_owned),
                            ".{0,6}"
                        ],
                        inner
                    ),
                    0..6
                )
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
            ]
        })
    }

    /// An object with most of an envelope's fields, any of them possibly odd.
    fn envelope() -> impl Strategy<Value = String> {
        (
            proptest::collection::vec((proptest::sample::select(&KEYS[..]), json()), 0..8),
            prop_oneof![
                Just("Message"),
                Just("Order"),
                Just("Interaction"),
                Just("Other")
            ],
            any::<bool>(),
        )
            .prop_map(|(fields, resource, pretty)| {
                let mut object = serde_json::Map::new();
                object.insert("objectId".into(), "o1".into());
                object.insert("resource".into(), resource.into());
                object.insert("event".into(), "CREATE".into());
                object.insert(
                    "payload".into(),
                    serde_json::json!({"chat": {"objectId": "c1"}, "text": "t"}),
                );
                for (key, value) in fields {
                    object.insert(key.to_owned(), value);
                }
                let value = Value::Object(object);
                if pretty {
                    serde_json::to_string_pretty(&value).expect("serializes")
                } else {
                    value.to_string()
                }
            })
    }

    /// What must hold for any body: no panic; an event's value is JSON a stock parser reads,
    /// carrying the body verbatim as `raw`; the same body gets the same id whenever it comes;
    /// a rejection's dead letter holds the exact bytes.
    fn check(body: &[u8]) {
        let at = |second: u32| Receipt {
            body,
            received_at: time::OffsetDateTime::from_unix_timestamp(
                1_700_000_000 + i64::from(second),
            )
            .expect("time"),
            signed_id: None,
            traceparent: None,
        };
        match Webhook::parse(body) {
            Ok(webhook) => {
                let record = normalizer().event(&webhook, &at(0));
                let value: Value =
                    serde_json::from_slice(&record.value).expect("the event value is JSON");
                let raw = serde_json::to_vec(&value["raw"]).expect("raw");
                let body_value: Value = serde_json::from_slice(body).expect("the body is JSON");
                assert_eq!(value["raw"], body_value);
                assert!(!raw.is_empty());
                let mut spliced = b",\"raw\":".to_vec();
                spliced.extend_from_slice(body);
                spliced.push(b'}');
                assert!(
                    record.value.ends_with(&spliced),
                    "raw is the body, byte for byte"
                );
                let again = normalizer().event(&webhook, &at(7));
                assert_eq!(record.header("ce_id"), again.header("ce_id"));
            }
            Err(rejection) => {
                let letter = normalizer().dead_letter(&rejection, &at(0));
                assert_eq!(letter.value, body);
                let again = normalizer().dead_letter(&rejection, &at(7));
                assert_eq!(letter.header("ce_id"), again.header("ce_id"));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn any_bytes_get_a_contract_answer(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            check(&body);
        }

        #[test]
        fn any_document_near_the_envelope_gets_a_contract_answer(body in envelope()) {
            check(body.as_bytes());
        }

        #[test]
        fn any_json_gets_a_contract_answer(value in json()) {
            check(value.to_string().as_bytes());
        }
    }
}
