//! What Kafka's answer for one record means to the bridge.
//!
//! Every error librdkafka reports for a record falls in one of three classes:
//!
//! | class | librdkafka errors | what the bridge does |
//! |---|---|---|
//! | [`Verdict::Poison`]: the record itself is refused for good | `MSG_SIZE_TOO_LARGE`, `INVALID_MSG_SIZE`, `MSG_BATCH_TOO_LARGE`, `INVALID_TIMESTAMP`, `UNSUPPORTED_FOR_MESSAGE_FORMAT`, `POLICY_VIOLATION`, `INVALID_RECORD` | kafka mode: dead-lettered, a 4xx (413 for size); spool mode: sent once more on its own, then set aside |
//! | [`Verdict::Operator`]: an operator must fix something | `TOPIC_AUTHORIZATION_FAILED`, `CLUSTER_AUTHORIZATION_FAILED`, `UNKNOWN_TOPIC_OR_PART`, `_UNKNOWN_TOPIC`, `_UNKNOWN_PARTITION`, `INVALID_TOPIC`, `SASL_AUTHENTICATION_FAILED`, `_AUTHENTICATION`, `UNSUPPORTED_COMPRESSION_TYPE` (a broker that does not take the codec: set `KAFKA_COMPRESSION_TYPE`) | kafka mode: 503; spool mode: the record stays at the head, retried with backoff, named in readiness |
//! | [`Verdict::Retry`]: anything else (the producer died, was fenced or purged; the network) | `_FATAL`, `_GAPLESS_GUARANTEE`, `_PURGE_QUEUE`, `_PURGE_INFLIGHT`, `OUT_OF_ORDER_SEQUENCE_NUMBER`, `CORRUPT_MESSAGE` (librdkafka's `INVALID_MSG`: a checksum that failed on the way, which Kafka marks retriable), timeouts, … | kafka mode: 503; spool mode: a new producer sends it again |
//!
//! Poison is decided by the record's content, so sending it again cannot help; a refusal an
//! operator can mend must never lose a record, so those stay at the head; whatever is not
//! known to be either is retried, which is always safe.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// How the bridge treats a record Kafka did not take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Poison,
    Operator,
    Retry,
}

/// Why librdkafka did not deliver one record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Refused {
    pub code: RDKafkaErrorCode,
    pub reason: String,
}

impl Refused {
    pub fn new(code: RDKafkaErrorCode, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }

    pub fn verdict(&self) -> Verdict {
        use RDKafkaErrorCode::*;
        match self.code {
            MessageSizeTooLarge
            | InvalidMessageSize
            | MessageBatchTooLarge
            | InvalidTimestamp
            | UnsupportedForMessageFormat
            | PolicyViolation
            | InvalidRecord => Verdict::Poison,
            TopicAuthorizationFailed
            | ClusterAuthorizationFailed
            | UnknownTopicOrPartition
            | UnknownTopic
            | UnknownPartition
            | InvalidTopic
            | SaslAuthenticationFailed
            | Authentication
            | UnsupportedCompressionType => Verdict::Operator,
            _ => Verdict::Retry,
        }
    }

    /// Whether the refusal is for size, which a sender hears as 413.
    pub fn is_too_large(&self) -> bool {
        matches!(
            self.code,
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
        )
    }

    /// A stable snake_case name for metrics, headers and readiness.
    pub fn code_name(&self) -> String {
        let name = format!("{:?}", self.code);
        let mut snake = String::with_capacity(name.len() + 4);
        for (i, c) in name.chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                snake.push('_');
            }
            snake.push(c.to_ascii_lowercase());
        }
        snake
    }
}

impl From<&KafkaError> for Refused {
    fn from(error: &KafkaError) -> Self {
        Self::new(
            error.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail),
            error.to_string(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_class_has_its_known_errors() {
        let verdict = |code| Refused::new(code, "").verdict();
        assert_eq!(
            verdict(RDKafkaErrorCode::MessageSizeTooLarge),
            Verdict::Poison
        );
        assert_eq!(verdict(RDKafkaErrorCode::PolicyViolation), Verdict::Poison);
        assert_eq!(verdict(RDKafkaErrorCode::InvalidRecord), Verdict::Poison);
        assert_eq!(
            verdict(RDKafkaErrorCode::TopicAuthorizationFailed),
            Verdict::Operator
        );
        assert_eq!(
            verdict(RDKafkaErrorCode::UnknownTopicOrPartition),
            Verdict::Operator
        );
        assert_eq!(verdict(RDKafkaErrorCode::GaplessGuarantee), Verdict::Retry);
        assert_eq!(verdict(RDKafkaErrorCode::PurgeInflight), Verdict::Retry);
        assert_eq!(verdict(RDKafkaErrorCode::Fatal), Verdict::Retry);
        // CORRUPT_MESSAGE: a bit flipped on the way, which Kafka marks retriable.
        assert_eq!(verdict(RDKafkaErrorCode::InvalidMessage), Verdict::Retry);
        // A broker that does not take the codec (lz4 is the default): sending again cannot help
        // until an operator sets KAFKA_COMPRESSION_TYPE, so readiness must name it.
        assert_eq!(
            verdict(RDKafkaErrorCode::UnsupportedCompressionType),
            Verdict::Operator
        );
    }

    #[test]
    fn codes_read_as_snake_case() {
        let refused = Refused::new(RDKafkaErrorCode::MessageSizeTooLarge, "");
        assert_eq!(refused.code_name(), "message_size_too_large");
        assert!(refused.is_too_large());
    }
}
