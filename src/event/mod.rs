//! Normalization: a webhook becomes a Kafka record carrying a CloudEvent (binary mode).
//!
//! The record value is schema version 1 (`schema/event-v1.json`); the CloudEvents attributes
//! travel as `ce_*` headers so consumers can route without parsing the value.

pub mod headers;
pub mod id;
pub mod rfc3339;
pub mod set_aside;

pub use headers::DEAD_LETTER_TYPE;

use std::borrow::Cow;
use std::sync::Arc;

use rfc3339::format as rfc3339;
use serde::Serialize;

use crate::config::Topics;
use crate::omnichat::{Action, Rejection, Resource, SentTime, Webhook};
use crate::publish::{Header, Record};

/// What the bridge knows about a request besides its body.
#[derive(Debug, Clone)]
pub struct Receipt<'a> {
    pub body: &'a [u8],
    pub received_at: time::OffsetDateTime,
    /// The `webhook-id` of a request whose signature was verified.
    pub signed_id: Option<&'a str>,
    /// The W3C `traceparent` header, when it was well-formed.
    pub traceparent: Option<&'a str>,
}

/// Turns webhooks, and bodies that are not webhooks, into records.
#[derive(Debug, Clone)]
pub struct Normalizer {
    topics: Topics,
    source: Arc<str>,
}

impl Normalizer {
    pub fn new(topics: Topics, source: Arc<str>) -> Self {
        Self { topics, source }
    }

    /// The record for a webhook.
    pub fn event(&self, webhook: &Webhook<'_>, receipt: &Receipt<'_>) -> Record {
        let written = |sent: Option<SentTime<'_>>| sent.and_then(|t| t.instant).map(rfc3339);
        let occurred_at = written(webhook.timestamp);
        let message = webhook.message.as_ref();
        let created_at = written(message.and_then(|m| m.created_at));
        let updated_at = written(message.and_then(|m| m.updated_at));
        let id = match receipt.signed_id {
            Some(signed) => signed.to_owned(),
            None => id::for_webhook(
                webhook,
                occurred_at.as_deref(),
                updated_at.as_deref(),
                receipt.body,
            ),
        };
        debug_assert!(receipt.signed_id.is_some() || id == id::unsigned(webhook, receipt.body));
        let kind = event_type(&webhook.resource, &webhook.action);
        let received_at = rfc3339(receipt.received_at);
        let key = webhook.key().to_owned();

        let value = EventValue {
            id: &id,
            kind: &kind,
            source: &self.source,
            resource: webhook.resource.as_str(),
            event: webhook.action.as_str(),
            object_id: &webhook.object_id,
            chat_id: webhook.message.as_ref().map(|m| &*m.chat_id),
            occurred_at: occurred_at.as_deref(),
            received_at: &received_at,
            message: message.map(|m| MessageValue {
                object_id: m.object_id.as_deref().unwrap_or(&webhook.object_id),
                chat_id: &m.chat_id,
                platform: m.platform.as_deref(),
                status: m.status.as_deref(),
                system: m.system,
                kind: m.kind.as_deref(),
                text: m.text.as_deref(),
                created_at: created_at.as_deref(),
                updated_at: updated_at.as_deref(),
                user_id: m.user_id.as_deref(),
                route_to_user_id: m.route_to_user_id.as_deref(),
                route_to_team_id: m.route_to_team_id.as_deref(),
            }),
        };
        let value = value.to_json_with_raw(receipt.body);

        let time = occurred_at.unwrap_or_else(|| received_at.clone());
        let mut headers = Vec::with_capacity(8);
        let mut add =
            |name: &'static str, value: Header| headers.push((Header::Borrowed(name), value));
        add(
            headers::SPECVERSION,
            Header::Borrowed(headers::CLOUDEVENTS_VERSION),
        );
        add(headers::ID, Header::Owned(id));
        add(headers::SOURCE, Header::Owned(String::from(&*self.source)));
        add(headers::TYPE, kind);
        add(headers::TIME, Header::Owned(time));
        add(headers::SUBJECT, Header::Owned(key.clone()));
        add(headers::CONTENT_TYPE, Header::Borrowed("application/json"));
        if let Some(traceparent) = receipt.traceparent {
            add(headers::TRACEPARENT, Header::Owned(traceparent.to_owned()));
        }

        Record {
            topic: self.topic_for(&webhook.resource).clone(),
            key,
            headers,
            value,
        }
    }

    /// The dead-letter record for a body that could not be normalized: its exact bytes, with
    /// the reason in headers.
    pub fn dead_letter(&self, rejection: &Rejection, receipt: &Receipt<'_>) -> Record {
        let id = id::for_bytes(receipt.body);
        let headers = headers::DeadLetter {
            error_code: Header::Borrowed(rejection.code()),
            error_message: rejection.to_string(),
            id: &id,
            source: &self.source,
            received_at: rfc3339(receipt.received_at),
            original_topic: None,
            signed_id: receipt.signed_id,
            traceparent: receipt.traceparent,
        }
        .headers();
        Record {
            topic: self.topics.deadletter.clone(),
            key: id,
            headers,
            value: receipt.body.to_vec(),
        }
    }

    /// The dead letter for an event Kafka refused for good (kafka mode: the request is still
    /// here, so the body comes from it).
    pub fn refused_event(
        &self,
        record_id: &str,
        webhook: &Webhook<'_>,
        receipt: &Receipt<'_>,
        refused: &crate::publish::refusal::Refused,
    ) -> Record {
        let original = set_aside::Original {
            body: receipt.body,
            id: record_id,
            key: webhook.key(),
            topic: self.topic_for(&webhook.resource),
            source: &self.source,
            signed_id: receipt.signed_id,
            traceparent: receipt.traceparent,
            received_at: receipt.received_at,
        };
        set_aside::refused(&original, &self.topics.deadletter, refused)
    }

    pub fn deadletter_topic(&self) -> &Arc<str> {
        &self.topics.deadletter
    }

    fn topic_for(&self, resource: &Resource<'_>) -> &Arc<str> {
        match resource {
            Resource::Message => &self.topics.messages,
            Resource::Interaction => &self.topics.interactions,
            Resource::Order => &self.topics.orders,
            Resource::Other(_) => &self.topics.other,
        }
    }
}

/// `chat.omni.<resource>.<created|updated|deleted>`; unknown names lowercased as they are.
pub fn event_type(resource: &Resource<'_>, action: &Action<'_>) -> Header {
    let known = match (resource, action) {
        (Resource::Message, Action::Create) => Some("chat.omni.message.created"),
        (Resource::Message, Action::Update) => Some("chat.omni.message.updated"),
        (Resource::Message, Action::Delete) => Some("chat.omni.message.deleted"),
        (Resource::Interaction, Action::Create) => Some("chat.omni.interaction.created"),
        (Resource::Interaction, Action::Update) => Some("chat.omni.interaction.updated"),
        (Resource::Interaction, Action::Delete) => Some("chat.omni.interaction.deleted"),
        (Resource::Order, Action::Create) => Some("chat.omni.order.created"),
        (Resource::Order, Action::Update) => Some("chat.omni.order.updated"),
        (Resource::Order, Action::Delete) => Some("chat.omni.order.deleted"),
        _ => None,
    };
    if let Some(kind) = known {
        return Cow::Borrowed(kind);
    }
    let action = match action {
        Action::Create => "created".to_owned(),
        Action::Update => "updated".to_owned(),
        Action::Delete => "deleted".to_owned(),
        Action::Other(name) => name.to_lowercase(),
    };
    Cow::Owned(format!(
        "chat.omni.{}.{}",
        resource.as_str().to_lowercase(),
        action
    ))
}

/// Whether a `traceparent` header has W3C Trace Context's shape; a malformed one is dropped
/// rather than passed on to confuse tracing downstream.
pub fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    value.len() <= 512
        && parts.len() >= 4
        && [2, 32, 16, 2]
            .iter()
            .zip(&parts)
            .all(|(len, part)| part.len() == *len)
        && parts[..4].iter().all(|p| {
            p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
        && parts[0] != "ff"
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventValue<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    source: &'a str,
    resource: &'a str,
    event: &'a str,
    object_id: &'a str,
    chat_id: Option<&'a str>,
    occurred_at: Option<&'a str>,
    received_at: &'a str,
    message: Option<MessageValue<'a>>,
}

impl EventValue<'_> {
    /// Writes the value and then the request body verbatim as `raw`. The body was fully parsed
    /// as JSON already, so splicing its bytes in keeps it exactly as received at no cost.
    fn to_json_with_raw(&self, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(512 + body.len());
        // Serializing plain strings and options into a Vec cannot fail.
        serde_json::to_writer(&mut out, self).expect("event value serializes");
        out.pop(); // the closing brace
        out.extend_from_slice(b",\"raw\":");
        out.extend_from_slice(body);
        out.push(b'}');
        out
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MessageValue<'a> {
    object_id: &'a str,
    chat_id: &'a str,
    platform: Option<&'a str>,
    status: Option<&'a str>,
    system: Option<bool>,
    #[serde(rename = "type")]
    kind: Option<&'a str>,
    text: Option<&'a str>,
    created_at: Option<&'a str>,
    updated_at: Option<&'a str>,
    user_id: Option<&'a str>,
    route_to_user_id: Option<&'a str>,
    route_to_team_id: Option<&'a str>,
}

#[cfg(test)]
mod tests;
