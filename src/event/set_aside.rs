//! Records Kafka refused for good after they were accepted, set aside in the dead-letter
//! format: the value is the webhook body exactly as received, and headers say why.
//!
//! Headers: `error_code` (the Kafka error, snake_case, prefixed `kafka_`), `error_message`,
//! `ce_id` (the event's own id, so a re-drive keeps it), `ce_type=chat.omni.deadletter`,
//! `ce_time` and `received_at` (when the bridge accepted the webhook, RFC 3339 UTC),
//! `original_topic`, and `webhook-id` when the request was signed. The key stays the chat's.

use std::sync::Arc;

use time::OffsetDateTime;

use super::headers::{self, DEAD_LETTER_TYPE};
use super::{id, rfc3339};
use crate::omnichat::Webhook;
use crate::publish::refusal::Refused;
use crate::publish::{Header, Record};

/// What a refused record was: enough to write its dead letter.
#[derive(Debug, Clone)]
pub struct Original<'a> {
    /// The webhook body exactly as received.
    pub body: &'a [u8],
    pub id: &'a str,
    pub key: &'a str,
    pub topic: &'a str,
    pub source: &'a str,
    pub signed_id: Option<&'a str>,
    pub traceparent: Option<&'a str>,
    pub received_at: OffsetDateTime,
}

/// The dead letter for a record Kafka refused for good.
pub fn refused(original: &Original<'_>, deadletter: &Arc<str>, refused: &Refused) -> Record {
    let headers = headers::DeadLetter {
        error_code: Header::Owned(format!("kafka_{}", refused.code_name())),
        error_message: format!("Kafka refused the record for good: {refused}"),
        id: original.id,
        source: original.source,
        received_at: rfc3339::format(original.received_at),
        original_topic: Some(original.topic),
        signed_id: original.signed_id,
        traceparent: original.traceparent,
    }
    .headers();
    Record {
        topic: deadletter.clone(),
        key: original.key.to_owned(),
        headers,
        value: original.body.to_vec(),
    }
}

/// The dead letter for `record`, an event or dead letter read back from the spool, which Kafka
/// refused as `refused`.
pub fn set_aside(
    record: &Record,
    deadletter: &Arc<str>,
    refusal: &Refused,
    received_at: OffsetDateTime,
) -> Record {
    let was_dead_letter = record.header(headers::TYPE) == Some(DEAD_LETTER_TYPE);
    let body = if was_dead_letter {
        &record.value[..]
    } else {
        raw_body(&record.value)
    };
    let id = record.header(headers::ID).unwrap_or_default();
    let unsigned = (!was_dead_letter).then(|| unsigned_id(body)).flatten();
    let signed_id = match record.header(headers::WEBHOOK_ID) {
        Some(signed) => Some(signed),
        None if !was_dead_letter && unsigned.as_deref() != Some(id) => Some(id),
        None => None,
    };
    let original = Original {
        body,
        id,
        key: &record.key,
        topic: &record.topic,
        source: record.header(headers::SOURCE).unwrap_or("omnichat"),
        signed_id,
        traceparent: record.header(headers::TRACEPARENT),
        received_at,
    };
    refused(&original, deadletter, refusal)
}

/// The body an event value carries as `raw`. The value is written with `raw` last and spliced
/// in verbatim (see `to_json_with_raw`), and no key before it can hold `,"raw":` outside a
/// string, so the first occurrence marks where the body starts.
fn raw_body(value: &[u8]) -> &[u8] {
    const RAW: &[u8] = b",\"raw\":";
    value
        .windows(RAW.len())
        .position(|w| w == RAW)
        .and_then(|at| value.get(at + RAW.len()..value.len().saturating_sub(1)))
        .unwrap_or(value)
}

/// The id an unsigned delivery of `body` gets; a record whose id differs was signed.
fn unsigned_id(body: &[u8]) -> Option<String> {
    let webhook = Webhook::parse(body).ok()?;
    Some(id::unsigned(&webhook, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Topics;
    use crate::event::{Normalizer, Receipt};
    use rdkafka::error::RDKafkaErrorCode;

    const BODY: &str = r#"{"objectId":"o1","resource":"Order","event":"CREATE","timestamp":1681825655283,"note":",\"raw\":"}"#;

    fn event(signed_id: Option<&str>) -> Record {
        let topics = Topics {
            messages: "m".into(),
            interactions: "i".into(),
            orders: "o".into(),
            other: "x".into(),
            deadletter: "d".into(),
        };
        let normalizer = Normalizer::new(topics, Arc::from("omnichat"));
        let webhook = Webhook::parse(BODY.as_bytes()).expect("webhook");
        normalizer.event(
            &webhook,
            &Receipt {
                body: BODY.as_bytes(),
                received_at: time::macros::datetime!(2026-11-25 10:00:00.123 UTC),
                signed_id,
                traceparent: None,
            },
        )
    }

    #[test]
    fn a_set_aside_event_carries_the_body_exactly_and_says_why() {
        let record = event(None);
        let refused = Refused::new(RDKafkaErrorCode::PolicyViolation, "no");
        let at = time::macros::datetime!(2026-11-25 10:00:00.123 UTC);
        let letter = set_aside(&record, &Arc::from("dlq"), &refused, at);
        assert_eq!(letter.value, BODY.as_bytes());
        assert_eq!(&*letter.topic, "dlq");
        assert_eq!(letter.key, record.key);
        assert_eq!(letter.header("error_code"), Some("kafka_policy_violation"));
        assert_eq!(letter.header("ce_id"), record.header("ce_id"));
        assert_eq!(
            letter.header("received_at"),
            Some("2026-11-25T10:00:00.123Z")
        );
        assert_eq!(letter.header("original_topic"), Some(&*record.topic));
        assert_eq!(letter.header("webhook-id"), None, "not signed");
    }

    #[test]
    fn a_signed_event_keeps_its_webhook_id() {
        let record = event(Some("msg_42"));
        let refused = Refused::new(RDKafkaErrorCode::InvalidRecord, "no");
        let letter = set_aside(
            &record,
            &Arc::from("dlq"),
            &refused,
            OffsetDateTime::UNIX_EPOCH,
        );
        assert_eq!(letter.header("webhook-id"), Some("msg_42"));
        assert_eq!(letter.header("ce_id"), Some("msg_42"));
    }
}
