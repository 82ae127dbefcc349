//! The record headers the bridge writes and reads, by name in one place: the CloudEvents
//! Kafka binding's (binary mode) and the dead letters' own, and the one builder of a dead
//! letter's headers, used for bodies refused at the door and for events Kafka refused for good.

use crate::publish::Header;

pub const SPECVERSION: &str = "ce_specversion";
pub const ID: &str = "ce_id";
pub const SOURCE: &str = "ce_source";
pub const TYPE: &str = "ce_type";
pub const TIME: &str = "ce_time";
pub const SUBJECT: &str = "ce_subject";
pub const CONTENT_TYPE: &str = "content-type";
pub const TRACEPARENT: &str = "traceparent";
/// The Standard Webhooks id of a signed request.
pub const WEBHOOK_ID: &str = "webhook-id";
pub const ERROR_CODE: &str = "error_code";
pub const ERROR_MESSAGE: &str = "error_message";
/// When the bridge accepted the webhook (RFC 3339 UTC), on every dead letter.
pub const RECEIVED_AT: &str = "received_at";
/// The event topic a record Kafka refused for good was meant for.
pub const ORIGINAL_TOPIC: &str = "original_topic";

/// The CloudEvents spec version every record carries.
pub const CLOUDEVENTS_VERSION: &str = "1.0";
/// `ce_type` of every dead letter.
pub const DEAD_LETTER_TYPE: &str = "chat.omni.deadletter";

/// What a dead letter's headers say.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub error_code: Header,
    pub error_message: String,
    pub id: &'a str,
    pub source: &'a str,
    /// RFC 3339 UTC: both `ce_time` and `received_at`.
    pub received_at: String,
    pub original_topic: Option<&'a str>,
    pub signed_id: Option<&'a str>,
    pub traceparent: Option<&'a str>,
}

impl DeadLetter<'_> {
    pub fn headers(self) -> Vec<(Header, Header)> {
        let owned = |s: &str| Header::Owned(s.to_owned());
        let mut headers = vec![
            (Header::Borrowed(ERROR_CODE), self.error_code),
            (
                Header::Borrowed(ERROR_MESSAGE),
                Header::Owned(self.error_message),
            ),
            (
                Header::Borrowed(SPECVERSION),
                Header::Borrowed(CLOUDEVENTS_VERSION),
            ),
            (Header::Borrowed(ID), owned(self.id)),
            (Header::Borrowed(SOURCE), owned(self.source)),
            (Header::Borrowed(TYPE), Header::Borrowed(DEAD_LETTER_TYPE)),
            (
                Header::Borrowed(TIME),
                Header::Owned(self.received_at.clone()),
            ),
            (
                Header::Borrowed(RECEIVED_AT),
                Header::Owned(self.received_at),
            ),
        ];
        let optional = [
            (ORIGINAL_TOPIC, self.original_topic),
            (WEBHOOK_ID, self.signed_id),
            (TRACEPARENT, self.traceparent),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                headers.push((Header::Borrowed(name), owned(value)));
            }
        }
        headers
    }
}
