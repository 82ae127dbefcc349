//! Deterministic event ids.
//!
//! A redelivery of the same webhook must get the same id, so consumers can drop duplicates, and
//! two different events must never share one. The id is a UUID (version 8, RFC 9562's layout
//! for name-based ids of one's own design) built from the first 16 bytes of a SHA-256 over:
//!
//! `omnichat-bridge/v1 NUL resource NUL event NUL objectId NUL time NUL updatedAt`
//!
//! where `time` is the envelope timestamp (normalized to RFC 3339 UTC milliseconds when
//! readable, so `1681825655283` and `"2023-04-18T13:47:35.283Z"` agree; its raw JSON text
//! otherwise) and `updatedAt` is the message's, read the same way. When neither time is present
//! nothing tells two deliveries of the object apart but their content, so the SHA-256 of the
//! body is added. A signed request (Standard Webhooks) carries the sender's own id in
//! `webhook-id`, which is used as it is.

use sha2::{Digest, Sha256};

use crate::omnichat::Webhook;
use serde_json::value::RawValue;

/// The event id of a webhook that was not signed. `occurred_at` and `updated_at` are the
/// normalized times where they were readable (normalization has them already).
pub fn for_webhook(
    webhook: &Webhook<'_>,
    occurred_at: Option<&str>,
    updated_at: Option<&str>,
    body: &[u8],
) -> String {
    let mut hash = Sha256::new();
    hash.update(b"omnichat-bridge/v1\0");
    for part in [
        webhook.resource.as_str(),
        webhook.action.as_str(),
        &webhook.object_id,
    ] {
        hash_field(&mut hash, part);
    }
    let raw_updated_at = webhook
        .message
        .as_ref()
        .and_then(|m| m.updated_at)
        .map(|t| t.raw);
    for (normalized, raw) in [
        (occurred_at, webhook.timestamp.map(|t| t.raw)),
        (updated_at, raw_updated_at),
    ] {
        hash_field(&mut hash, canonical_time(normalized, raw));
    }
    if webhook.timestamp.is_none() && raw_updated_at.is_none() {
        hash.update(Sha256::digest(body));
    }
    uuid_v8(&hash.finalize())
}

/// Hashes one field and its NUL terminator. A NUL inside the field is hashed as 0xFF, a byte
/// that never occurs in UTF-8, so no two different field lists hash the same bytes; a field
/// without NUL (all real traffic) hashes exactly as before this escape existed.
fn hash_field(hash: &mut Sha256, field: &str) {
    for (i, piece) in field.split('\0').enumerate() {
        if i > 0 {
            hash.update([0xFF]);
        }
        hash.update(piece.as_bytes());
    }
    hash.update(b"\0");
}

/// The id an unsigned delivery of `webhook` gets, with its times normalized here.
pub fn unsigned(webhook: &Webhook<'_>, body: &[u8]) -> String {
    let read = |sent: Option<crate::omnichat::SentTime<'_>>| {
        sent.and_then(|t| t.instant).map(super::rfc3339::format)
    };
    let updated_at = webhook.message.as_ref().and_then(|m| m.updated_at);
    for_webhook(
        webhook,
        read(webhook.timestamp).as_deref(),
        read(updated_at).as_deref(),
        body,
    )
}

/// The id of a body that could not be read as a webhook: its bytes are all there is.
pub fn for_bytes(body: &[u8]) -> String {
    uuid_v8(&Sha256::digest(body))
}

fn canonical_time<'a>(normalized: Option<&'a str>, raw: Option<&'a RawValue>) -> &'a str {
    normalized.or(raw.map(RawValue::get)).unwrap_or_default()
}

fn uuid_v8(digest: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x80; // version 8
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 9562 variant
    // 8-4-4-4-12 hex digits; written by hand, as this runs for every event.
    let mut id = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            id.push('-');
        }
        id.push(char::from(HEX[usize::from(byte >> 4)]));
        id.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(body: &str) -> String {
        let webhook = Webhook::parse(body.as_bytes()).expect("test webhook parses");
        unsigned(&webhook, body.as_bytes())
    }

    const BASE: &str = r#"{"objectId":"m1","resource":"Message","event":"UPDATE","timestamp":1681825655283,"payload":{"chat":{"objectId":"c1"},"updatedAt":"2023-04-18T13:47:35.255Z","text":"a"}}"#;

    #[test]
    fn a_redelivery_gets_the_same_id() {
        assert_eq!(id(BASE), id(BASE));
        let reformatted = r#"{ "payload": {"text":"a", "updatedAt":"2023-04-18T13:47:35.255Z", "chat":{"objectId":"c1"}},
            "timestamp": "2023-04-18T13:47:35.283Z", "event":"UPDATE", "resource":"Message", "objectId":"m1" }"#;
        assert_eq!(
            id(BASE),
            id(reformatted),
            "key order, spacing and time form do not matter"
        );
    }

    #[test]
    fn different_events_get_different_ids() {
        let variants = [
            BASE.replace("\"UPDATE\"", "\"DELETE\""),
            BASE.replace("\"m1\"", "\"m2\""),
            BASE.replace("1681825655283", "1681825655284"),
            BASE.replace("35.255Z", "35.256Z"),
            BASE.replace("\"Message\"", "\"Order\""),
        ];
        for variant in &variants {
            assert_ne!(id(BASE), id(variant), "{variant}");
        }
    }

    #[test]
    fn without_any_time_the_content_decides() {
        let a = r#"{"objectId":"o1","resource":"Order","event":"UPDATE","status":"paid"}"#;
        let b = r#"{"objectId":"o1","resource":"Order","event":"UPDATE","status":"shipped"}"#;
        assert_eq!(id(a), id(a));
        assert_ne!(id(a), id(b));
    }

    #[test]
    fn ids_are_version_8_uuids() {
        for value in [id(BASE), for_bytes(b"not json")] {
            let bytes = value.as_bytes();
            assert_eq!(value.len(), 36);
            assert_eq!(bytes[14], b'8', "{value}");
            assert!(matches!(bytes[19], b'8' | b'9' | b'a' | b'b'), "{value}");
        }
        assert_eq!(for_bytes(b"x"), for_bytes(b"x"));
        assert_ne!(for_bytes(b"x"), for_bytes(b"y"));
    }

    #[test]
    fn fields_holding_nul_cannot_be_crafted_to_share_an_id() {
        // Hashed with bare NUL separators, both read "Order\0CREATE\0o\0x\0...".
        let a = r#"{"objectId":"x","resource":"Order","event":"CREATE\u0000o","timestamp":1681825655283}"#;
        let b = r#"{"objectId":"o\u0000x","resource":"Order","event":"CREATE","timestamp":1681825655283}"#;
        assert_ne!(id(a), id(b));
    }

    #[test]
    fn an_id_without_nul_is_what_it_was_before_the_escape() {
        let body = r#"{"objectId":"c1KjTsOhDP","resource":"Message","event":"CREATE","timestamp":1681825655283,
            "payload":{"chat":{"objectId":"dE5fgIIi8o"},"updatedAt":"2023-04-18T13:47:35.255Z"}}"#;
        // The encoding of every earlier version: fields joined by NUL.
        let mut before = Sha256::new();
        for part in [
            "omnichat-bridge/v1",
            "Message",
            "CREATE",
            "c1KjTsOhDP",
            "2023-04-18T13:47:35.283Z",
            "2023-04-18T13:47:35.255Z",
        ] {
            before.update(part.as_bytes());
            before.update(b"\0");
        }
        assert_eq!(id(body), uuid_v8(&before.finalize()));
    }
}

/// Ids are a contract across versions: a consumer deduplicating on `ce_id`, and a re-drive of
/// dead letters written by an older bridge, rely on the same body getting the same id.
#[cfg(test)]
mod golden {
    use super::*;

    const CASES: [(&str, &str); 4] = [
        (
            include_str!("../../tests/fixtures/seed-message.json"),
            "b660930a-faaf-8b38-b516-66289f18c305",
        ),
        (
            r#"{"objectId":"o1","resource":"Order","event":"UPDATE","timestamp":"2023-04-18T10:47:35-03:00"}"#,
            "f37d016e-8256-8a0d-985c-dec2a7095ff0",
        ),
        (
            r#"{"objectId":"i1","resource":"Interaction","event":"CREATE","timestamp":"not a time"}"#,
            "741bff89-afb9-870e-a12e-c0045b3c8be9",
        ),
        (
            r#"{"objectId":"c1","resource":"Contact","event":"MERGE"}"#,
            "f2996ff4-a29f-80b4-873f-28e62c347b9e",
        ),
    ];

    #[test]
    fn ids_do_not_change_between_versions() {
        for (body, expected) in CASES {
            let webhook = Webhook::parse(body.as_bytes()).expect("parses");
            assert_eq!(unsigned(&webhook, body.as_bytes()), expected, "{body}");
        }
    }
}
