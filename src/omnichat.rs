//! OmniChat's webhook as it arrives on the wire.
//!
//! The parse is strict only where routing depends on a field (`objectId`, `resource`, `event`,
//! and a message's chat). Everything else is tolerated: unknown enumeration values are data,
//! unknown fields stay in the original bytes, and a field of an unexpected type becomes `None`
//! rather than costing the event. Strings borrow from the request body where they can.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

pub mod sent_time;

pub use sent_time::SentTime;

/// Why a body is not a usable webhook. Each variant has a stable `code` for the HTTP error and
/// the dead-letter header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("the body is JSON but not an object")]
    NotAnObject,
    #[error("the webhook has no `{0}`")]
    MissingField(&'static str),
    #[error("`{0}` must be a string")]
    NotAString(&'static str),
    #[error("the webhook is not a usable envelope: {0}")]
    InvalidEnvelope(String),
    #[error("a Message webhook needs `payload.chat.objectId` as a string")]
    MissingChat,
    #[error(
        "the body nests arrays and objects deeper than {MAX_NESTING} levels, more than its \
         consumers can read"
    )]
    TooDeep,
}

/// The deepest nesting of arrays and objects an event may carry, the top-level object being
/// level 1. Stock consumers stop near 1,000 (Jackson) or at their stack (Python's `json`);
/// webhooks come nowhere near either.
pub const MAX_NESTING: usize = 128;

impl Rejection {
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::InvalidJson(_) => "invalid_json",
            Rejection::NotAnObject => "not_an_object",
            Rejection::MissingField(_) => "missing_field",
            Rejection::NotAString(_) => "invalid_field",
            Rejection::InvalidEnvelope(_) => "invalid_envelope",
            Rejection::MissingChat => "missing_chat",
            Rejection::TooDeep => "too_deep",
        }
    }

    /// Whether the body failed to be JSON at all (400) rather than being JSON of the wrong
    /// shape (422).
    pub fn is_malformed(&self) -> bool {
        matches!(self, Rejection::InvalidJson(_) | Rejection::NotAnObject)
    }
}

/// What a webhook is about. OmniChat documents three resources; others arrive unannounced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource<'a> {
    Message,
    Interaction,
    Order,
    Other(Cow<'a, str>),
}

impl<'a> Resource<'a> {
    fn from_wire(name: Cow<'a, str>) -> Self {
        match &*name {
            "Message" => Resource::Message,
            "Interaction" => Resource::Interaction,
            "Order" => Resource::Order,
            _ => Resource::Other(name),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Resource::Message => "Message",
            Resource::Interaction => "Interaction",
            Resource::Order => "Order",
            Resource::Other(name) => name,
        }
    }
}

/// What happened to the object (the envelope's `event`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<'a> {
    Create,
    Update,
    Delete,
    Other(Cow<'a, str>),
}

impl<'a> Action<'a> {
    fn from_wire(name: Cow<'a, str>) -> Self {
        match &*name {
            "CREATE" => Action::Create,
            "UPDATE" => Action::Update,
            "DELETE" => Action::Delete,
            _ => Action::Other(name),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Action::Create => "CREATE",
            Action::Update => "UPDATE",
            Action::Delete => "DELETE",
            Action::Other(name) => name,
        }
    }
}

/// A webhook that can be routed: the envelope, and the message when it is one.
#[derive(Debug, Clone)]
pub struct Webhook<'a> {
    pub object_id: Cow<'a, str>,
    pub resource: Resource<'a>,
    pub action: Action<'a>,
    /// As sent; its forms are read in [`sent_time`].
    pub timestamp: Option<SentTime<'a>>,
    /// Present exactly when `resource` is `Message`.
    pub message: Option<Message<'a>>,
}

/// A `Message` webhook's payload. Only `chat_id` is guaranteed.
#[derive(Debug, Clone, Default)]
pub struct Message<'a> {
    pub object_id: Option<Cow<'a, str>>,
    pub chat_id: Cow<'a, str>,
    pub platform: Option<Cow<'a, str>>,
    pub status: Option<Cow<'a, str>>,
    pub system: Option<bool>,
    pub kind: Option<Cow<'a, str>>,
    pub text: Option<Cow<'a, str>>,
    pub created_at: Option<SentTime<'a>>,
    pub updated_at: Option<SentTime<'a>>,
    pub user_id: Option<Cow<'a, str>>,
    pub route_to_user_id: Option<Cow<'a, str>>,
    pub route_to_team_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireEnvelope<'a> {
    #[serde(rename = "objectId", borrow)]
    object_id: Option<&'a RawValue>,
    #[serde(borrow)]
    resource: Option<&'a RawValue>,
    #[serde(borrow)]
    event: Option<&'a RawValue>,
    #[serde(borrow)]
    timestamp: Option<&'a RawValue>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct WirePayload<'a> {
    #[serde(borrow)]
    chat: Option<&'a RawValue>,
    #[serde(rename = "objectId", borrow)]
    object_id: Option<&'a RawValue>,
    #[serde(borrow)]
    platform: Option<&'a RawValue>,
    #[serde(borrow)]
    status: Option<&'a RawValue>,
    #[serde(borrow)]
    system: Option<&'a RawValue>,
    #[serde(rename = "type", borrow)]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    text: Option<&'a RawValue>,
    #[serde(rename = "createdAt", borrow)]
    created_at: Option<&'a RawValue>,
    #[serde(rename = "updatedAt", borrow)]
    updated_at: Option<&'a RawValue>,
    #[serde(borrow)]
    user: Option<&'a RawValue>,
    #[serde(rename = "routeToUser", borrow)]
    route_to_user: Option<&'a RawValue>,
    #[serde(rename = "routeToTeam", borrow)]
    route_to_team: Option<&'a RawValue>,
}

/// A Parse-style pointer (`{"className": "...", "objectId": "..."}`).
#[derive(Deserialize)]
struct WirePointer<'a> {
    #[serde(rename = "objectId", borrow)]
    object_id: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Str<'a>(#[serde(borrow)] Cow<'a, str>);

/// The string in `raw`, or `None` when it is another type.
pub(crate) fn as_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    serde_json::from_str::<Str<'_>>(raw.get()).ok().map(|s| s.0)
}

fn required_str<'a>(
    raw: Option<&'a RawValue>,
    field: &'static str,
) -> Result<Cow<'a, str>, Rejection> {
    let raw = raw.ok_or(Rejection::MissingField(field))?;
    as_str(raw).ok_or(Rejection::NotAString(field))
}

/// The `objectId` of a pointer, also accepted as a bare id string.
fn pointer_id(raw: Option<&RawValue>) -> Option<Cow<'_, str>> {
    let raw = raw?;
    if let Some(id) = as_str(raw) {
        return Some(id);
    }
    object::<WirePointer<'_>>(raw)?.object_id.and_then(as_str)
}

/// `raw` read as `T` when it is a JSON object. serde also reads a struct from an array of its
/// fields in order, which is not what a sender of `[...]` means.
fn object<'a, T: Deserialize<'a>>(raw: &'a RawValue) -> Option<T> {
    match raw.get().starts_with('{') {
        true => serde_json::from_str(raw.get()).ok(),
        false => None,
    }
}

fn json_error(error: &serde_json::Error) -> Rejection {
    Rejection::InvalidJson(error.to_string())
}

/// Whether `body`, valid JSON, nests arrays and objects deeper than `limit`, counted in the
/// bytes as received (brackets inside strings do not count).
fn nesting_exceeds(body: &[u8], limit: usize) -> bool {
    // Depth never exceeds the number of openers. Counting them is one vectorized pass, a
    // fraction of the exact scan below, and settles nearly every real webhook.
    if body.iter().filter(|&&b| b == b'[' || b == b'{').count() <= limit {
        return false;
    }
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

impl<'a> Webhook<'a> {
    /// Reads a webhook from the request body.
    pub fn parse(body: &'a [u8]) -> Result<Self, Rejection> {
        // serde reads the envelope from an array of its five fields too: only an object is one.
        let is_object = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        let envelope: WireEnvelope<'a> = match serde_json::from_slice(body) {
            Ok(envelope) if is_object => envelope,
            Ok(_) => return Err(Rejection::NotAnObject),
            Err(error) if error.is_data() => {
                // A data error can be found before a later syntax error: tell them apart by
                // checking the whole body, which only rejected bodies pay for.
                if let Err(syntax) = serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                    return Err(json_error(&syntax));
                }
                return Err(if is_object {
                    Rejection::InvalidEnvelope(error.to_string())
                } else {
                    Rejection::NotAnObject
                });
            }
            Err(error) => return Err(json_error(&error)),
        };

        if nesting_exceeds(body, MAX_NESTING) {
            return Err(Rejection::TooDeep);
        }
        let object_id = required_str(envelope.object_id, "objectId")?;
        let resource = Resource::from_wire(required_str(envelope.resource, "resource")?);
        let action = Action::from_wire(required_str(envelope.event, "event")?);
        let message = match resource {
            Resource::Message => Some(Message::parse(envelope.payload)?),
            _ => None,
        };
        Ok(Webhook {
            object_id,
            resource,
            action,
            timestamp: envelope.timestamp.map(SentTime::read),
            message,
        })
    }

    /// The Kafka record key: the conversation for messages, the object otherwise.
    pub fn key(&self) -> &str {
        match &self.message {
            Some(message) => &message.chat_id,
            None => &self.object_id,
        }
    }
}

impl<'a> Message<'a> {
    fn parse(payload: Option<&'a RawValue>) -> Result<Self, Rejection> {
        let payload: WirePayload<'a> = payload.and_then(object).ok_or(Rejection::MissingChat)?;
        let chat_id = payload
            .chat
            .and_then(object::<WirePointer<'a>>)
            .and_then(|chat| chat.object_id)
            .and_then(as_str)
            .ok_or(Rejection::MissingChat)?;
        Ok(Message {
            object_id: payload.object_id.and_then(as_str),
            chat_id,
            platform: payload.platform.and_then(as_str),
            status: payload.status.and_then(as_str),
            system: payload
                .system
                .and_then(|raw| serde_json::from_str(raw.get()).ok()),
            kind: payload.kind.and_then(as_str),
            text: payload.text.and_then(as_str),
            created_at: payload.created_at.map(SentTime::read),
            updated_at: payload.updated_at.map(SentTime::read),
            user_id: pointer_id(payload.user),
            route_to_user_id: pointer_id(payload.route_to_user),
            route_to_team_id: pointer_id(payload.route_to_team),
        })
    }
}

#[cfg(test)]
mod tests;
