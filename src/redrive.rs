//! Re-driving dead letters: after a fix (a looser limit, a new field OmniChat sends), the
//! bodies the bridge set aside go through today's normalization again, and what now
//! normalizes is published to its event topic as if it had been accepted at its original
//! receive time.
//!
//! A dead letter's value is the webhook body exactly as received, and its headers keep what
//! the request said besides (see [`crate::event::set_aside`]): `received_at`, the
//! `webhook-id` of a signed request and the `traceparent`. So a re-driven event gets the id a
//! live delivery would have got (the `webhook-id`, else the id computed from the body), and
//! re-driving twice yields the same ids: at least once, and idempotent for consumers that
//! deduplicate on `ce_id`.
//!
//! Two sources: the dead-letter topic ([`topic`], `omnichat-bridge redrive`), and a spool's
//! quarantine, which the running bridge re-drives on request (see
//! `spool::quarantine`).

pub mod options;
pub mod topic;

use std::collections::BTreeMap;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::event::headers;
use crate::event::{Normalizer, Receipt, is_traceparent};
use crate::omnichat::{Rejection, Webhook};
use crate::publish::{PublishError, Record};

/// Normalizes the body a dead letter carries, with what its headers kept of the request.
/// `fallback_received_at` stands in when the letter has no readable `received_at` (the
/// record's own timestamp, or when the spool accepted it).
pub fn renormalize(
    normalizer: &Normalizer,
    letter: &Record,
    fallback_received_at: OffsetDateTime,
) -> Result<Record, Rejection> {
    let webhook = Webhook::parse(&letter.value)?;
    let received_at = letter
        .header(headers::RECEIVED_AT)
        .and_then(|at| OffsetDateTime::parse(at, &Rfc3339).ok())
        .unwrap_or(fallback_received_at);
    let receipt = Receipt {
        body: &letter.value,
        received_at,
        signed_id: letter
            .header(headers::WEBHOOK_ID)
            .filter(|id| !id.is_empty()),
        traceparent: letter
            .header(headers::TRACEPARENT)
            .filter(|t| is_traceparent(t)),
    };
    Ok(normalizer.event(&webhook, &receipt))
}

/// The stable code under which a publish that failed for good is counted as still failing;
/// `None` for a failure that may pass (Kafka away, a timeout), which stops a run.
pub fn refusal_code(error: &PublishError) -> Option<String> {
    match error {
        PublishError::TooLarge { .. } => Some("kafka_msg_size_too_large".to_owned()),
        PublishError::Poison(refused) => Some(format!("kafka_{}", refused.code_name())),
        _ => None,
    }
}

/// Why a re-drive stopped before its end. What was settled before it is kept.
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    #[error(transparent)]
    Settings(#[from] crate::config::ConfigError),
    #[error("cannot create the Kafka consumer: {0}")]
    Consumer(#[source] rdkafka::error::KafkaError),
    #[error("Kafka is not reachable: {0}")]
    Unreachable(#[source] rdkafka::error::KafkaError),
    #[error("the dead-letter topic {0} does not exist")]
    NoTopic(String),
    #[error("cannot read the group's position: {0}")]
    Position(#[source] rdkafka::error::KafkaError),
    #[error("reading {topic}: {source}")]
    Read {
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("Kafka sent nothing for {silence:?} while {topic} was read")]
    Silent {
        topic: String,
        silence: std::time::Duration,
    },
    #[error(
        "the event of dead letter [{partition}]@{offset} was not stored: {source}; what came \
         before it is committed, run again"
    )]
    NotStored {
        partition: i32,
        offset: i64,
        #[source]
        source: PublishError,
    },
    #[error("cannot commit the group's position: {0}")]
    Commit(#[source] rdkafka::error::KafkaError),
}

/// What a run did, printed at its end.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Dead letters looked at.
    pub read: u64,
    /// Published to their event topic (or, on a dry run, that would be).
    pub redriven: u64,
    /// Still failing, by code: a normalization error's code, or `kafka_<error>` when Kafka
    /// refused the event for good. They stay where they are.
    pub still_failing: BTreeMap<String, u64>,
    /// Outside the time or offset range asked for, or not dead letters.
    pub skipped: u64,
}

impl Summary {
    pub fn still_failing_total(&self) -> u64 {
        self.still_failing.values().sum()
    }

    pub fn fail(&mut self, code: String) {
        *self.still_failing.entry(code).or_default() += 1;
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "read: {}", self.read)?;
        writeln!(f, "re-driven: {}", self.redriven)?;
        writeln!(f, "still failing: {}", self.still_failing_total())?;
        for (code, count) in &self.still_failing {
            writeln!(f, "  {code}: {count}")?;
        }
        write!(f, "skipped: {}", self.skipped)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::Topics;
    use crate::publish::Header;

    fn normalizer() -> Normalizer {
        let topic = |name: &str| -> Arc<str> { Arc::from(name) };
        Normalizer::new(
            Topics {
                messages: topic("m"),
                interactions: topic("i"),
                orders: topic("o"),
                other: topic("x"),
                deadletter: topic("d"),
            },
            Arc::from("omnichat"),
        )
    }

    const BODY: &str = r#"{"objectId":"m1","resource":"Message","event":"created","timestamp":1681825655283,"payload":{"chat":{"objectId":"c1"},"text":"hi"}}"#;

    fn letter(headers: &[(&'static str, &str)]) -> Record {
        Record {
            topic: Arc::from("d"),
            key: "k".to_owned(),
            headers: headers
                .iter()
                .map(|(n, v)| (Header::Borrowed(n), Header::Owned((*v).to_owned())))
                .collect(),
            value: BODY.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_re_driven_event_is_the_live_event_of_its_original_request() {
        let normalizer = normalizer();
        let received_at =
            OffsetDateTime::parse("2026-01-02T03:04:05.678Z", &Rfc3339).expect("a time");
        for signed in [None, Some("msg_2KWPBgLlAfxdpx2AI54pPJ85f4W")] {
            let mut headers = vec![("received_at", "2026-01-02T03:04:05.678Z")];
            if let Some(id) = signed {
                headers.push(("webhook-id", id));
            }
            let event = renormalize(&normalizer, &letter(&headers), OffsetDateTime::UNIX_EPOCH)
                .expect("normalizes");
            let webhook = Webhook::parse(BODY.as_bytes()).expect("parses");
            let live = normalizer.event(
                &webhook,
                &Receipt {
                    body: BODY.as_bytes(),
                    received_at,
                    signed_id: signed,
                    traceparent: None,
                },
            );
            assert_eq!(event, live, "signed: {signed:?}");
        }
    }

    #[test]
    fn a_letter_without_its_receive_time_takes_the_fallback() {
        let event = renormalize(
            &normalizer(),
            &letter(&[("received_at", "yesterday")]),
            OffsetDateTime::UNIX_EPOCH,
        )
        .expect("normalizes");
        let value: serde_json::Value = serde_json::from_slice(&event.value).expect("JSON");
        assert_eq!(value["receivedAt"], "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn a_body_that_still_fails_names_its_code() {
        let mut bad = letter(&[]);
        bad.value = b"{\"objectId\":1}".to_vec();
        assert_eq!(
            renormalize(&normalizer(), &bad, OffsetDateTime::UNIX_EPOCH).map_err(|r| r.code()),
            Err("invalid_field")
        );
    }
}
