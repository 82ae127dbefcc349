//! Settings, read once from the environment and validated before anything starts.
//!
//! Every `BRIDGE_*` variable is declared once, in [`variables`]; `KAFKA_*` variables are
//! librdkafka properties (`config::kafka`). A bad value stops the process with one line naming the
//! variable ([`ConfigError`]); nothing is guessed.

mod auth;
mod kafka;
mod open_files;
mod secret;
pub mod variables;

pub use auth::AuthSettings;
pub use kafka::{KafkaProperty, KafkaSettings};
pub(crate) use kafka::{canonical, mentions};
pub use secret::Secret;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use variables::*;

/// A setting that cannot be used, named by its environment variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {variable}: {reason}")]
pub struct ConfigError {
    /// The environment variable, e.g. `BRIDGE_PUBLISH_TIMEOUT_MS`.
    pub variable: String,
    /// What is wrong with its value.
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn new(variable: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            variable: variable.into(),
            reason: reason.into(),
        }
    }
}

/// When a webhook is answered 202.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckMode {
    /// After the Kafka broker acknowledged the record (`acks=all`).
    Kafka,
    /// After the record is fsynced to the local spool.
    Spool(SpoolSettings),
}

/// Where the spool lives and how much disk it may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolSettings {
    /// `BRIDGE_SPOOL_DIR`, locked by one process at a time.
    pub dir: PathBuf,
    /// `BRIDGE_SPOOL_MAX_BYTES`: the spool's files (the quarantine's included) at most.
    pub max_bytes: u64,
    /// What recovery does with a damaged record anywhere but the torn tail of the newest
    /// segment (`BRIDGE_SPOOL_ON_DAMAGE`).
    pub on_damage: OnDamage,
}

/// `BRIDGE_SPOOL_ON_DAMAGE`: acknowledged records are never dropped silently, so by default a
/// damaged spool stops the start; `set-aside` moves the damaged segment to the quarantine and
/// goes on with the records before the damage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnDamage {
    #[default]
    Refuse,
    SetAside,
}

/// How repeated deliveries are recognised: the ids of the events this process stored, for a
/// while and up to a count (`BRIDGE_DEDUP_WINDOW_S`, `BRIDGE_DEDUP_MAX_IDS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupSettings {
    /// How long after its store an id is remembered.
    pub window: Duration,
    /// The most ids remembered at once; past it the oldest are forgotten early.
    pub max_ids: usize,
}

/// How logs are written (`BRIDGE_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// Where each kind of record goes.
#[derive(Debug, Clone)]
pub struct Topics {
    /// `Message` events, keyed by chat.
    pub messages: Arc<str>,
    /// `Interaction` events.
    pub interactions: Arc<str>,
    /// `Order` events.
    pub orders: Arc<str>,
    /// Resources OmniChat adds without notice.
    pub other: Arc<str>,
    /// Bodies that could not be normalized, byte for byte.
    pub deadletter: Arc<str>,
}

impl Topics {
    pub fn all(&self) -> [&Arc<str>; 5] {
        [
            &self.messages,
            &self.interactions,
            &self.orders,
            &self.other,
            &self.deadletter,
        ]
    }
}

/// Everything the bridge needs to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where webhooks arrive (`BRIDGE_LISTEN_ADDR`).
    pub listen_addr: SocketAddr,
    /// Health, readiness, metrics and the quarantine's re-drive (`BRIDGE_ADMIN_ADDR`).
    pub admin_addr: SocketAddr,
    /// The largest body taken; larger ones get 413 (`BRIDGE_MAX_BODY_BYTES`).
    pub max_body_bytes: usize,
    /// Who may send.
    pub auth: AuthSettings,
    /// Where each kind of record goes.
    pub topics: Topics,
    /// The CloudEvents `source` of every event (`BRIDGE_EVENT_SOURCE`).
    pub event_source: Arc<str>,
    /// When a webhook is answered 202 (`BRIDGE_ACK_MODE`).
    pub ack_mode: AckMode,
    /// How long a request waits for Kafka's acknowledgement (`BRIDGE_PUBLISH_TIMEOUT_MS`).
    pub publish_timeout: Duration,
    /// How long a sender may take to send its headers, and again its body.
    pub request_timeout: Duration,
    /// Requests handled at once; past it, 503 at once (`BRIDGE_MAX_IN_FLIGHT`).
    pub max_in_flight: usize,
    /// Open client connections, over all workers; more wait in the kernel's accept queue.
    /// Each open connection can hold what its sender has sent so far, so this bounds memory.
    pub max_connections: usize,
    /// Kept-alive connections older than this are told to close on their next answer, so
    /// that load balancers spread senders over new replicas (`BRIDGE_MAX_CONNECTION_AGE_S`;
    /// `None`: never).
    pub max_connection_age: Option<Duration>,
    /// Repeated deliveries answered from memory (`BRIDGE_DEDUP_*`; `None`: off).
    pub dedup: Option<DedupSettings>,
    /// How long shutdown keeps serving while not ready (`BRIDGE_SHUTDOWN_DELAY_MS`).
    pub shutdown_delay: Duration,
    /// The bound on the whole shutdown (`BRIDGE_SHUTDOWN_TIMEOUT_MS`).
    pub shutdown_timeout: Duration,
    /// How logs are written (`BRIDGE_LOG_FORMAT`).
    pub log_format: LogFormat,
    /// The operator's librdkafka properties (`KAFKA_*`).
    pub kafka: KafkaSettings,
    /// `BRIDGE_*` variables that are not settings: typos, or Kubernetes service links of a
    /// Service named `bridge`. Warned about at start, never fatal.
    pub unknown_variables: Vec<String>,
    /// Each variable and its effective value, credentials redacted (see [`Settings::effective`]).
    shown: Vec<(String, String)>,
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    /// Reads settings from the given variables, so tests can inject them.
    pub fn from_vars<I>(vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        // Later values win, as when the same variable is exported twice.
        let mut vars: Vec<(String, String)> = vars.into_iter().collect();
        let mut seen = std::collections::HashSet::new();
        vars.reverse();
        vars.retain(|(k, _)| seen.insert(k.clone()));
        vars.reverse();
        let env = Env::new(&vars);

        let kafka = kafka::settings(&vars)?;
        let auth = auth::settings(&env)?;
        let max_body_bytes = env.number(&MAX_BODY_BYTES)?;
        let ack_mode = match env.choice(&ACK_MODE)? {
            "spool" => AckMode::Spool(spool_settings(&env, max_body_bytes)?),
            _ => AckMode::Kafka,
        };
        let log_format = match env.choice(&LOG_FORMAT)? {
            "text" => LogFormat::Text,
            _ => LogFormat::Json,
        };
        let mut shown: Vec<(String, String)> = ALL
            .iter()
            .filter(|v| {
                matches!(ack_mode, AckMode::Spool(_)) || !v.name.starts_with("BRIDGE_SPOOL_")
            })
            .map(|v| (v.name.to_owned(), env.shown(v)))
            .collect();
        shown.extend(kafka.properties.iter().map(|p| {
            let value = match p.is_secret {
                true => "[redacted]".to_owned(),
                false => p.value.expose().to_owned(),
            };
            (p.variable.clone(), value)
        }));

        let settings = Settings {
            listen_addr: env.address(&LISTEN_ADDR)?,
            admin_addr: env.address(&ADMIN_ADDR)?,
            max_body_bytes: max_body_bytes as usize,
            auth,
            topics: Topics {
                messages: env.topic(&TOPIC_MESSAGES)?,
                interactions: env.topic(&TOPIC_INTERACTIONS)?,
                orders: env.topic(&TOPIC_ORDERS)?,
                other: env.topic(&TOPIC_OTHER)?,
                deadletter: env.topic(&TOPIC_DEADLETTER)?,
            },
            event_source: env.text(&EVENT_SOURCE)?.into(),
            ack_mode,
            publish_timeout: env.millis(&PUBLISH_TIMEOUT_MS)?,
            request_timeout: env.millis(&REQUEST_TIMEOUT_MS)?,
            max_in_flight: env.number(&MAX_IN_FLIGHT)? as usize,
            max_connections: env.number(&MAX_CONNECTIONS)? as usize,
            max_connection_age: env.seconds_or_off(&MAX_CONNECTION_AGE_S)?,
            dedup: dedup_settings(&env)?,
            shutdown_delay: env.millis(&SHUTDOWN_DELAY_MS)?,
            shutdown_timeout: env.millis(&SHUTDOWN_TIMEOUT_MS)?,
            log_format,
            kafka,
            unknown_variables: env.unknown(),
            shown,
        };
        settings.check_ports()?;
        settings.check_topics()?;
        if settings.shutdown_delay >= settings.shutdown_timeout {
            return Err(ConfigError::new(
                SHUTDOWN_DELAY_MS.name,
                format!(
                    "must be shorter than {}, or in-flight events cannot be flushed",
                    SHUTDOWN_TIMEOUT_MS.name
                ),
            ));
        }
        Ok(settings)
    }

    /// Checks the settings against this process's limits (the open-files limit), which differ
    /// between where the settings are written and where the bridge runs: at start and in
    /// `check-config`, not when parsing.
    pub fn check_process_limits(&self) -> Result<(), ConfigError> {
        open_files::check(self.max_connections)
    }

    /// The admin port answers operators only: it may never be the public one, where it would
    /// take webhooks' place or hand metrics and the re-drive to senders.
    fn check_ports(&self) -> Result<(), ConfigError> {
        let (public, admin) = (self.listen_addr, self.admin_addr);
        let same_interface = public.ip() == admin.ip()
            || public.ip().is_unspecified()
            || admin.ip().is_unspecified();
        // Port 0 is any free port, a different one for each.
        if public.port() == admin.port() && public.port() != 0 && same_interface {
            return Err(ConfigError::new(
                ADMIN_ADDR.name,
                format!(
                    "must not be the public listener's port ({}={public}): health, metrics and \
                     the re-drive are for operators only",
                    LISTEN_ADDR.name
                ),
            ));
        }
        Ok(())
    }

    /// Events and dead letters never share a topic: a consumer of either would read the other
    /// kind, and a re-drive would take events for dead letters. Event topics may share one.
    fn check_topics(&self) -> Result<(), ConfigError> {
        let events = [
            (&TOPIC_MESSAGES, &self.topics.messages),
            (&TOPIC_INTERACTIONS, &self.topics.interactions),
            (&TOPIC_ORDERS, &self.topics.orders),
            (&TOPIC_OTHER, &self.topics.other),
        ];
        match events
            .iter()
            .find(|(_, topic)| **topic == self.topics.deadletter)
        {
            Some((variable, topic)) => Err(ConfigError::new(
                variable.name,
                format!(
                    "is `{topic}`, the dead-letter topic ({}): events and dead letters need \
                     topics of their own",
                    TOPIC_DEADLETTER.name
                ),
            )),
            None => Ok(()),
        }
    }

    /// Settings that work but deserve an operator's attention, logged once at start.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.auth.allow_unauthenticated {
            warnings.push(
                "BRIDGE_ALLOW_UNAUTHENTICATED=true: anyone who reaches the port can publish events"
                    .to_owned(),
            );
        }
        for unknown in &self.unknown_variables {
            warnings.push(format!(
                "{unknown} is not a setting of this bridge and is ignored (did you mean {}?)",
                variables::closest(unknown)
            ));
        }
        warnings
    }

    /// The effective configuration, one `(variable, value)` pair per setting, secrets redacted:
    /// what an operator checks before a rollout.
    pub fn effective(&self) -> Vec<(String, String)> {
        self.shown.clone()
    }
}

/// `BRIDGE_DEDUP_WINDOW_S=0` turns it off; `BRIDGE_DEDUP_MAX_IDS` is read either way, so a bad
/// value is caught before it is switched on.
fn dedup_settings(env: &Env) -> Result<Option<DedupSettings>, ConfigError> {
    let max_ids = env.number(&DEDUP_MAX_IDS)? as usize;
    Ok(env
        .seconds_or_off(&DEDUP_WINDOW_S)?
        .map(|window| DedupSettings { window, max_ids }))
}

fn spool_settings(env: &Env, max_body_bytes: u64) -> Result<SpoolSettings, ConfigError> {
    let dir = env
        .value(&SPOOL_DIR)
        .filter(|dir| !dir.trim().is_empty())
        .ok_or_else(|| {
            ConfigError::new(
                SPOOL_DIR.name,
                format!(
                    "is required with {}=spool: a directory on a persistent volume",
                    ACK_MODE.name
                ),
            )
        })?;
    let max_bytes = env.number(&SPOOL_MAX_BYTES)?;
    // A full spool must still hold a few of the largest events, so that it fills gradually.
    let least = 4 * max_body_bytes;
    if max_bytes < least {
        return Err(ConfigError::new(
            SPOOL_MAX_BYTES.name,
            format!(
                "must be at least {least} (4 x {}), got {max_bytes}",
                MAX_BODY_BYTES.name
            ),
        ));
    }
    let on_damage = match env.choice(&SPOOL_ON_DAMAGE)? {
        "set-aside" => OnDamage::SetAside,
        _ => OnDamage::Refuse,
    };
    Ok(SpoolSettings {
        dir: PathBuf::from(dir),
        max_bytes,
        on_damage,
    })
}

#[cfg(test)]
mod tests;
