use super::*;

const SEED: &str = include_str!("../../tests/fixtures/seed-message.json");

fn order_with_extra_nested(levels: usize) -> String {
    // The envelope is level 1; `extra` adds `levels` arrays below it.
    format!(
        r#"{{"objectId":"o1","resource":"Order","event":"CREATE","note":"[[[{{","extra":{}{}}}"#,
        "[".repeat(levels),
        "]".repeat(levels)
    )
}

#[test]
fn nesting_deeper_than_the_limit_is_rejected_with_its_own_code() {
    let at_limit = order_with_extra_nested(MAX_NESTING - 1);
    assert!(
        Webhook::parse(at_limit.as_bytes()).is_ok(),
        "128 levels are fine"
    );
    for levels in [MAX_NESTING, 5_000] {
        let deep = order_with_extra_nested(levels);
        let rejection = Webhook::parse(deep.as_bytes()).expect_err("too deep");
        assert_eq!(rejection, Rejection::TooDeep);
        assert_eq!(rejection.code(), "too_deep");
        assert!(!rejection.is_malformed(), "valid JSON: 422");
    }
}

fn message_with(field: &str, value: &str) -> String {
    format!(
        r#"{{"objectId":"m1","resource":"Message","event":"CREATE","payload":{{"chat":{{"className":"Chat","objectId":"c1"}},"{field}":{value}}}}}"#
    )
}

#[test]
fn reads_the_seed_webhook() {
    let webhook = Webhook::parse(SEED.as_bytes()).expect("seed parses");
    assert_eq!(webhook.object_id, "c1KjTsOhDP");
    assert_eq!(webhook.resource, Resource::Message);
    assert_eq!(webhook.action, Action::Create);
    assert_eq!(webhook.key(), "dE5fgIIi8o");
    let message = webhook.message.expect("a message");
    assert_eq!(message.platform.as_deref(), Some("WAB-OMNICHAT"));
    assert_eq!(message.status.as_deref(), Some("INCOMING_RECEIVED"));
    assert_eq!(message.kind.as_deref(), Some("TEXT"));
    assert_eq!(message.text.as_deref(), Some("bom dia"));
    assert_eq!(message.system, Some(false));
    assert_eq!(message.object_id.as_deref(), Some("c1KjTsOhDP"));
}

#[test]
fn passes_every_documented_and_unknown_enumeration_value_through() {
    let platforms = [
        "WAB-OMNICHAT",
        "WAB-DIALOG",
        "FBMESSENGER",
        "WEBCHAT",
        "INSTAGRAM",
        "TELEGRAM-NEXT",
    ];
    let statuses = [
        "INCOMING_RECEIVED",
        "INCOMING_READ",
        "INCOMING_DELETED",
        "OUTGOING_CREATED",
        "OUTGOING_SENT",
        "OUTGOING_READ",
        "OUTGOING_ERROR",
        "OUTGOING_SILENT",
        "OUTGOING_QUEUED",
    ];
    let kinds = [
        "IMAGE",
        "TEXT",
        "AUDIO",
        "VOICE",
        "DOCUMENT",
        "FILE",
        "VIDEO",
        "LOCATION",
        "PRODUCT",
        "VARIANT",
        "PAYMENT_REQUEST",
        "ORDER_CONFIRMATION",
        "ORDER_STATUS",
        "COLLECTION",
        "VCARD",
        "MULTI_VCARD",
        "SNOOZE_START",
        "SNOOZE_END",
        "TEMPLATE",
        "BUTTON",
        "ORDER_PREVIEW",
        "GROUPED",
        "INTERACTIVE",
        "INTERACTIVE_BUTTON",
        "LIST",
        "STICKER",
        "ROUTING",
        "SUMMARY",
    ];
    for (field, values) in [
        ("platform", &platforms[..]),
        ("status", &statuses[..]),
        ("type", &kinds[..]),
    ] {
        for value in values {
            let body = message_with(field, &format!("\"{value}\""));
            let message = Webhook::parse(body.as_bytes())
                .expect(value)
                .message
                .expect("message");
            let got = match field {
                "platform" => message.platform,
                "status" => message.status,
                _ => message.kind,
            };
            assert_eq!(got.as_deref(), Some(*value));
        }
    }
    for (resource, expected) in [
        ("Message", Resource::Message),
        ("Interaction", Resource::Interaction),
        ("Order", Resource::Order),
        ("Contact", Resource::Other("Contact".into())),
    ] {
        let body = format!(
            r#"{{"objectId":"o1","resource":"{resource}","event":"UPDATE","payload":{{"chat":{{"objectId":"c"}}}}}}"#
        );
        assert_eq!(
            Webhook::parse(body.as_bytes()).expect(resource).resource,
            expected
        );
    }
    for (event, expected) in [
        ("CREATE", Action::Create),
        ("UPDATE", Action::Update),
        ("DELETE", Action::Delete),
        ("ARCHIVE", Action::Other("ARCHIVE".into())),
    ] {
        let body = format!(r#"{{"objectId":"o1","resource":"Order","event":"{event}"}}"#);
        assert_eq!(
            Webhook::parse(body.as_bytes()).expect(event).action,
            expected
        );
    }
}

#[test]
fn keys_messages_by_chat_and_other_resources_by_object() {
    let order =
        Webhook::parse(br#"{"objectId":"o1","resource":"Order","event":"CREATE"}"#).expect("order");
    assert_eq!(order.key(), "o1");
    assert!(order.message.is_none());
    let interaction = Webhook::parse(
           br#"{"objectId":"i1","resource":"Interaction","event":"UPDATE","payload":{"chat":{"objectId":"c9"}}}"#,
       )
       .expect("interaction");
    assert_eq!(interaction.key(), "i1", "only messages are keyed by chat");
}

#[test]
fn reads_routing_and_user_pointers() {
    let body = br#"{"objectId":"m","resource":"Message","event":"CREATE","payload":{"chat":{"objectId":"c"},"type":"ROUTING",
           "routeToUser":{"className":"_User","objectId":"u7"},"routeToTeam":{"className":"Team","objectId":"t3"},"user":"u1"}}"#;
    let message = Webhook::parse(body)
        .expect("parses")
        .message
        .expect("message");
    assert_eq!(message.route_to_user_id.as_deref(), Some("u7"));
    assert_eq!(message.route_to_team_id.as_deref(), Some("t3"));
    assert_eq!(message.user_id.as_deref(), Some("u1"));
}

#[test]
fn a_pointer_sent_as_an_array_is_not_read_as_one() {
    // serde reads a struct from an array of its fields; `["u1"]` is no `{"objectId": "u1"}`.
    let body = message_with("routeToUser", "[\"u1\"]");
    let message = Webhook::parse(body.as_bytes())
        .expect("parses")
        .message
        .expect("message");
    assert_eq!(message.route_to_user_id, None);
}

#[test]
fn tolerates_unexpected_types_in_fields_it_does_not_route_by() {
    for (field, value) in [
        ("text", "42"),
        ("system", "\"no\""),
        ("platform", "{}"),
        ("user", "[1]"),
    ] {
        let body = message_with(field, value);
        let webhook = Webhook::parse(body.as_bytes()).unwrap_or_else(|e| panic!("{field}: {e}"));
        assert_eq!(webhook.key(), "c1");
    }
}

#[test]
fn rejects_what_cannot_be_routed_with_a_stable_code() {
    let cases: &[(&str, &str, bool)] = &[
        ("", "invalid_json", true),
        ("{", "invalid_json", true),
        ("not json", "invalid_json", true),
        ("{\"objectId\": \"a\",}", "invalid_json", true),
        ("[1, 2", "invalid_json", true),
        ("[]", "not_an_object", true),
        ("\"text\"", "not_an_object", true),
        ("42", "not_an_object", true),
        ("null", "not_an_object", true),
        (
            r#"{"resource":"Order","event":"CREATE"}"#,
            "missing_field",
            false,
        ),
        (
            r#"{"objectId":null,"resource":"Order","event":"CREATE"}"#,
            "missing_field",
            false,
        ),
        (
            r#"{"objectId":7,"resource":"Order","event":"CREATE"}"#,
            "invalid_field",
            false,
        ),
        (
            r#"{"objectId":"o","event":"CREATE"}"#,
            "missing_field",
            false,
        ),
        (
            r#"{"objectId":"o","resource":["Order"],"event":"CREATE"}"#,
            "invalid_field",
            false,
        ),
        (
            r#"{"objectId":"o","resource":"Order"}"#,
            "missing_field",
            false,
        ),
        (
            r#"{"objectId":"o","resource":"Order","event":1}"#,
            "invalid_field",
            false,
        ),
        (
            r#"{"objectId":"o","objectId":"p","resource":"Order","event":"CREATE"}"#,
            "invalid_envelope",
            false,
        ),
        (
            r#"{"objectId":"m","resource":"Message","event":"CREATE"}"#,
            "missing_chat",
            false,
        ),
        (
            r#"{"objectId":"m","resource":"Message","event":"CREATE","payload":"x"}"#,
            "missing_chat",
            false,
        ),
        (
            r#"{"objectId":"m","resource":"Message","event":"CREATE","payload":{}}"#,
            "missing_chat",
            false,
        ),
        (
            r#"{"objectId":"m","resource":"Message","event":"CREATE","payload":{"chat":{}}}"#,
            "missing_chat",
            false,
        ),
        (
            r#"{"objectId":"m","resource":"Message","event":"CREATE","payload":{"chat":{"objectId":5}}}"#,
            "missing_chat",
            false,
        ),
    ];
    for (body, code, malformed) in cases {
        let rejection = Webhook::parse(body.as_bytes()).expect_err(body);
        assert_eq!(rejection.code(), *code, "{body}: {rejection}");
        assert_eq!(rejection.is_malformed(), *malformed, "{body}");
    }
    let not_utf8 = Webhook::parse(b"{\"objectId\": \"\xff\"}").expect_err("bytes");
    assert_eq!(not_utf8.code(), "invalid_json");
}

#[test]
fn decodes_escaped_strings() {
    let body = br#"{"objectId":"a\u00e9\"b","resource":"Order","event":"CREATE"}"#;
    assert_eq!(
        Webhook::parse(body).expect("parses").object_id,
        "a\u{e9}\"b"
    );
}

mod nesting {
    use proptest::prelude::*;

    use super::super::nesting_exceeds;

    /// The exact scan alone, without the openers' shortcut.
    fn reference(body: &[u8], limit: usize) -> bool {
        let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
        for &byte in body {
            if in_string {
                match byte {
                    _ if escaped => escaped = false,
                    b'\\' => escaped = true,
                    b'"' => in_string = false,
                    _ => {}
                }
                continue;
            }
            match byte {
                b'"' => in_string = true,
                b'[' | b'{' => {
                    depth += 1;
                    if depth > limit {
                        return true;
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        false
    }

    proptest! {
        #[test]
        fn the_shortcut_never_changes_the_verdict(
            body in proptest::collection::vec(
                prop::sample::select(b"[]{}\"\\a,".to_vec()), 0..400),
            limit in 0usize..40,
        ) {
            prop_assert_eq!(nesting_exceeds(&body, limit), reference(&body, limit));
        }
    }
}
