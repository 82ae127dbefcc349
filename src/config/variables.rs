//! Every `BRIDGE_*` variable, declared once: its name, default, what values it takes and what
//! it means. Parsing, the unknown-variable warnings, the effective-settings dump and the
//! README check all read these declarations.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::ConfigError;

/// The longest timeout any `*_MS` setting takes: a day.
const MAX_MS: u64 = 24 * 60 * 60 * 1000;
/// The longest any `*_S` setting takes: a day.
const MAX_S: u64 = 24 * 60 * 60;

/// One `BRIDGE_*` setting.
#[derive(Debug)]
pub struct Variable {
    pub name: &'static str,
    /// The default, as the README's table shows it; empty when there is none.
    pub default: &'static str,
    pub kind: Kind,
    /// What it does, in a line.
    pub doc: &'static str,
}

/// The values a variable takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `host:port`.
    Address,
    /// A whole number in a range.
    Number { min: u64, max: u64 },
    /// `true` or `false`.
    Flag,
    /// One of a fixed list.
    Choice(&'static [&'static str]),
    /// A Kafka topic name.
    Topic,
    /// Free text, not empty.
    Text,
    /// A path.
    Path,
    /// A comma-separated list of credentials: never printed.
    Secrets,
}

macro_rules! variables {
    ($($id:ident = $name:literal, $default:literal, $kind:expr, $doc:literal;)*) => {
        $(pub const $id: Variable = Variable {
            name: $name,
            default: $default,
            kind: $kind,
            doc: $doc,
        };)*
        /// Every `BRIDGE_*` variable, in the README's order.
        pub const ALL: &[&Variable] = &[$(&$id),*];
    };
}

variables! {
    LISTEN_ADDR = "BRIDGE_LISTEN_ADDR", "0.0.0.0:8080", Kind::Address,
        "Public webhook listener";
    ADMIN_ADDR = "BRIDGE_ADMIN_ADDR", "0.0.0.0:9090", Kind::Address,
        "Health, readiness and metrics";
    AUTH_TOKENS = "BRIDGE_AUTH_TOKENS", "", Kind::Secrets,
        "Comma-separated shared tokens, each at least 16 characters";
    WEBHOOK_SECRETS = "BRIDGE_WEBHOOK_SECRETS", "", Kind::Secrets,
        "Comma-separated Standard Webhooks secrets, whsec_<base64> of at least 16 bytes";
    ALLOW_UNAUTHENTICATED = "BRIDGE_ALLOW_UNAUTHENTICATED", "false", Kind::Flag,
        "Accept requests without credentials";
    MAX_BODY_BYTES = "BRIDGE_MAX_BODY_BYTES", "1048576", Kind::Number { min: 1, max: 64 << 20 },
        "Largest accepted body (413 above)";
    TOPIC_MESSAGES = "BRIDGE_TOPIC_MESSAGES", "omnichat.messages", Kind::Topic,
        "Topic for Message events";
    TOPIC_INTERACTIONS = "BRIDGE_TOPIC_INTERACTIONS", "omnichat.interactions", Kind::Topic,
        "Topic for Interaction events";
    TOPIC_ORDERS = "BRIDGE_TOPIC_ORDERS", "omnichat.orders", Kind::Topic,
        "Topic for Order events";
    TOPIC_OTHER = "BRIDGE_TOPIC_OTHER", "omnichat.other", Kind::Topic,
        "Topic for resources OmniChat adds later";
    TOPIC_DEADLETTER = "BRIDGE_TOPIC_DEADLETTER", "omnichat.deadletter", Kind::Topic,
        "Topic for bodies that cannot be normalized";
    EVENT_SOURCE = "BRIDGE_EVENT_SOURCE", "omnichat", Kind::Text,
        "CloudEvents source";
    ACK_MODE = "BRIDGE_ACK_MODE", "kafka", Kind::Choice(&["kafka", "spool"]),
        "kafka: 202 after the broker's ack; spool: 202 after a local fsync";
    PUBLISH_TIMEOUT_MS = "BRIDGE_PUBLISH_TIMEOUT_MS", "5000", Kind::Number { min: 1, max: MAX_MS },
        "How long a request waits for the broker's ack (in spool mode, for its fsync) before 503";
    REQUEST_TIMEOUT_MS = "BRIDGE_REQUEST_TIMEOUT_MS", "10000", Kind::Number { min: 1, max: MAX_MS },
        "How long a sender may take to send its headers, and again its body";
    MAX_IN_FLIGHT = "BRIDGE_MAX_IN_FLIGHT", "4096", Kind::Number { min: 1, max: 1 << 20 },
        "Concurrent webhook requests; past it, 503 at once";
    MAX_CONNECTIONS = "BRIDGE_MAX_CONNECTIONS", "512", Kind::Number { min: 1, max: 1 << 20 },
        "Open client connections, over all workers";
    MAX_CONNECTION_AGE_S = "BRIDGE_MAX_CONNECTION_AGE_S", "300", Kind::Number { min: 0, max: MAX_S },
        "Kept-alive connections older than this (within 10% either way) get Connection: close on their next answer; 0: never";
    DEDUP_WINDOW_S = "BRIDGE_DEDUP_WINDOW_S", "300", Kind::Number { min: 0, max: MAX_S },
        "How long a stored event's id is remembered, so that a repeated delivery gets the first answer and is not published again; 0: off";
    DEDUP_MAX_IDS = "BRIDGE_DEDUP_MAX_IDS", "100000", Kind::Number { min: 1, max: 10_000_000 },
        "The most event ids remembered at once; past it the oldest are forgotten early";
    SHUTDOWN_DELAY_MS = "BRIDGE_SHUTDOWN_DELAY_MS", "5000", Kind::Number { min: 0, max: MAX_MS },
        "On SIGTERM, how long to keep serving while not ready";
    SHUTDOWN_TIMEOUT_MS = "BRIDGE_SHUTDOWN_TIMEOUT_MS", "30000", Kind::Number { min: 1, max: MAX_MS },
        "Bound on the whole shutdown; must exceed the delay";
    SPOOL_DIR = "BRIDGE_SPOOL_DIR", "", Kind::Path,
        "Directory of the spool, on a persistent volume (spool mode)";
    SPOOL_MAX_BYTES = "BRIDGE_SPOOL_MAX_BYTES", "1073741824", Kind::Number { min: 1 << 20, max: u64::MAX },
        "Disk the spool's files may use; past it, 503 spool_full";
    SPOOL_ON_DAMAGE = "BRIDGE_SPOOL_ON_DAMAGE", "refuse", Kind::Choice(&["refuse", "set-aside"]),
        "What recovery does with damage: refuse to start, or set the segment aside";
    LOG_FORMAT = "BRIDGE_LOG_FORMAT", "json", Kind::Choice(&["json", "text"]),
        "json or text";
}

/// The `BRIDGE_*` variables of the environment, each read through its declaration.
#[derive(Debug)]
pub(super) struct Env {
    given: HashMap<String, String>,
}

impl Env {
    /// `vars` holds each variable once (the last value given wins).
    pub(super) fn new(vars: &[(String, String)]) -> Self {
        Self {
            given: vars
                .iter()
                .filter(|(name, _)| name.starts_with("BRIDGE_"))
                .cloned()
                .collect(),
        }
    }

    /// The value given, else the default; `None` when neither is.
    pub(super) fn value(&self, variable: &Variable) -> Option<&str> {
        match self.given.get(variable.name) {
            Some(value) => Some(value.as_str()),
            None => Some(variable.default).filter(|d| !d.is_empty()),
        }
    }

    fn invalid(variable: &Variable, reason: impl Into<String>) -> ConfigError {
        ConfigError::new(variable.name, reason)
    }

    pub(super) fn number(&self, variable: &Variable) -> Result<u64, ConfigError> {
        let Kind::Number { min, max } = variable.kind else {
            unreachable!("{} is not a number", variable.name)
        };
        let text = self.value(variable).unwrap_or_default().trim();
        let value: u64 = text.parse().map_err(|_| {
            Self::invalid(variable, format!("expected a whole number, got `{text}`"))
        })?;
        if value < min {
            return Err(Self::invalid(
                variable,
                format!("must be at least {min}, got {value}"),
            ));
        }
        if value > max {
            return Err(Self::invalid(
                variable,
                format!("{value} is more than the maximum of {max}"),
            ));
        }
        Ok(value)
    }

    pub(super) fn millis(&self, variable: &Variable) -> Result<Duration, ConfigError> {
        self.number(variable).map(Duration::from_millis)
    }

    /// Whole seconds, `None` for 0: the `*_S` settings where 0 turns something off.
    pub(super) fn seconds_or_off(
        &self,
        variable: &Variable,
    ) -> Result<Option<Duration>, ConfigError> {
        self.number(variable)
            .map(|seconds| Some(Duration::from_secs(seconds)).filter(|d| !d.is_zero()))
    }

    pub(super) fn flag(&self, variable: &Variable) -> Result<bool, ConfigError> {
        match self.value(variable).map(str::trim) {
            Some("true") => Ok(true),
            Some("false") | None => Ok(false),
            Some(other) => Err(Self::invalid(
                variable,
                format!("expected `true` or `false`, got `{other}`"),
            )),
        }
    }

    pub(super) fn choice(&self, variable: &Variable) -> Result<&'static str, ConfigError> {
        let Kind::Choice(choices) = variable.kind else {
            unreachable!("{} is not a choice", variable.name)
        };
        let value = self.value(variable).unwrap_or_default().trim();
        choices
            .iter()
            .find(|c| **c == value)
            .copied()
            .ok_or_else(|| {
                Self::invalid(
                    variable,
                    format!("expected `{}`, got `{value}`", choices.join("` or `")),
                )
            })
    }

    pub(super) fn address(&self, variable: &Variable) -> Result<SocketAddr, ConfigError> {
        let value = self.value(variable).unwrap_or_default().trim();
        value.parse().map_err(|_| {
            Self::invalid(
                variable,
                format!("expected an address like `0.0.0.0:8080`, got `{value}`"),
            )
        })
    }

    /// A topic name, by Kafka's own rule.
    pub(super) fn topic(&self, variable: &Variable) -> Result<Arc<str>, ConfigError> {
        let name = self.value(variable).unwrap_or_default();
        let legal = !name.is_empty()
            && name.len() <= 249
            && name != "."
            && name != ".."
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !legal {
            return Err(Self::invalid(
                variable,
                format!("`{name}` is not a legal Kafka topic name (1 to 249 of a-z A-Z 0-9 . _ -)"),
            ));
        }
        Ok(name.into())
    }

    /// Free text that must not be empty.
    pub(super) fn text(&self, variable: &Variable) -> Result<&str, ConfigError> {
        self.value(variable)
            .filter(|value| !value.trim().is_empty())
            .ok_or_else(|| Self::invalid(variable, "must not be empty"))
    }

    /// The non-empty items of a comma-separated list.
    pub(super) fn list(&self, variable: &Variable) -> Vec<String> {
        self.value(variable)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// `BRIDGE_*` variables that are no setting: typos, or Kubernetes service links of a
    /// Service named `bridge`.
    pub(super) fn unknown(&self) -> Vec<String> {
        let mut unknown: Vec<String> = self
            .given
            .keys()
            .filter(|name| !ALL.iter().any(|v| v.name == name.as_str()))
            .cloned()
            .collect();
        unknown.sort();
        unknown
    }

    /// The effective value of `variable` as the dump shows it: credentials only counted.
    pub(super) fn shown(&self, variable: &Variable) -> String {
        match variable.kind {
            Kind::Secrets => match self.list(variable).len() {
                0 => "(none)".to_owned(),
                n => format!("{n} configured, redacted"),
            },
            _ => self.value(variable).unwrap_or("(unset)").to_owned(),
        }
    }
}

/// The known variable an unknown one most likely meant: the one sharing the longest prefix.
pub(super) fn closest(unknown: &str) -> &'static str {
    ALL.iter()
        .max_by_key(|known| {
            known
                .name
                .bytes()
                .zip(unknown.bytes())
                .take_while(|(a, b)| a == b)
                .count()
        })
        .map_or(AUTH_TOKENS.name, |known| known.name)
}
