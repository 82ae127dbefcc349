//! Settings, read once from the environment and validated before anything starts.
//!
//! Every variable is documented here and in the README. A bad value stops the process with one
//! line naming the variable ([`ConfigError`]); nothing is guessed.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

/// A value that must never reach a log line or a `Debug` print.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T = String>(T);

impl<T> Secret<T> {
    pub fn new(value: impl Into<T>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"[redacted]\"")
    }
}

/// A setting that cannot be used, named by its environment variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {variable}: {reason}")]
pub struct ConfigError {
    pub variable: String,
    pub reason: String,
}

impl ConfigError {
    fn new(variable: impl Into<String>, reason: impl Into<String>) -> Self {
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
    pub dir: PathBuf,
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

/// The default bound on the spool's disk use.
const DEFAULT_SPOOL_MAX_BYTES: u64 = 1 << 30;
/// The smallest spool: a few segments of the smallest size.
const MIN_SPOOL_MAX_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// Where each kind of record goes.
#[derive(Debug, Clone)]
pub struct Topics {
    pub messages: Arc<str>,
    pub interactions: Arc<str>,
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

/// How senders prove who they are. At least one method is configured, or unauthenticated
/// access was asked for explicitly.
#[derive(Debug, Clone, Default)]
pub struct AuthSettings {
    /// Shared secrets presented as a bearer token, `X-Webhook-Token` or `?token=`.
    pub tokens: Vec<Secret>,
    /// Standard Webhooks signing keys (the bytes behind `whsec_<base64>`).
    pub webhook_keys: Vec<Secret<Vec<u8>>>,
    pub allow_unauthenticated: bool,
}

/// librdkafka properties, in the order they were given. Values of secret-looking properties are
/// wrapped so the effective configuration can be logged.
#[derive(Debug, Clone, Default)]
pub struct KafkaSettings {
    pub properties: Vec<KafkaProperty>,
}

#[derive(Debug, Clone)]
pub struct KafkaProperty {
    /// The environment variable it came from, for error messages.
    pub variable: String,
    /// The librdkafka property name.
    pub name: String,
    pub value: Secret,
    pub is_secret: bool,
}

impl KafkaSettings {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.properties
            .iter()
            .rev()
            .find(|p| p.name == name)
            .map(|p| p.value.expose().as_str())
    }

    pub fn bootstrap_servers(&self) -> &str {
        self.get("bootstrap.servers").unwrap_or_default()
    }
}

/// Everything the bridge needs to run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub max_body_bytes: usize,
    pub auth: AuthSettings,
    pub topics: Topics,
    pub event_source: Arc<str>,
    pub ack_mode: AckMode,
    pub publish_timeout: Duration,
    /// How long a sender may take to send its headers, and again its body.
    pub request_timeout: Duration,
    pub max_in_flight: usize,
    /// Open client connections, over all workers; more wait in the kernel's accept queue.
    /// Each open connection can hold what its sender has sent so far, so this bounds memory.
    pub max_connections: usize,
    pub shutdown_delay: Duration,
    pub shutdown_timeout: Duration,
    pub log_format: LogFormat,
    pub kafka: KafkaSettings,
    /// `BRIDGE_*` variables that are not settings: typos, or Kubernetes service links of a
    /// Service named `bridge`. Warned about at start, never fatal.
    pub unknown_variables: Vec<String>,
}

/// Every `BRIDGE_*` variable the bridge reads.
const BRIDGE_VARIABLES: &[&str] = &[
    "BRIDGE_LISTEN_ADDR",
    "BRIDGE_ADMIN_ADDR",
    "BRIDGE_MAX_BODY_BYTES",
    "BRIDGE_AUTH_TOKENS",
    "BRIDGE_WEBHOOK_SECRETS",
    "BRIDGE_ALLOW_UNAUTHENTICATED",
    "BRIDGE_TOPIC_MESSAGES",
    "BRIDGE_TOPIC_INTERACTIONS",
    "BRIDGE_TOPIC_ORDERS",
    "BRIDGE_TOPIC_OTHER",
    "BRIDGE_TOPIC_DEADLETTER",
    "BRIDGE_EVENT_SOURCE",
    "BRIDGE_ACK_MODE",
    "BRIDGE_PUBLISH_TIMEOUT_MS",
    "BRIDGE_REQUEST_TIMEOUT_MS",
    "BRIDGE_MAX_IN_FLIGHT",
    "BRIDGE_MAX_CONNECTIONS",
    "BRIDGE_SHUTDOWN_DELAY_MS",
    "BRIDGE_SHUTDOWN_TIMEOUT_MS",
    "BRIDGE_LOG_FORMAT",
    "BRIDGE_SPOOL_DIR",
    "BRIDGE_SPOOL_MAX_BYTES",
    "BRIDGE_SPOOL_ON_DAMAGE",
];

/// The known variable an unknown one most likely meant: the one sharing the longest prefix.
fn closest_variable(unknown: &str) -> &'static str {
    BRIDGE_VARIABLES
        .iter()
        .max_by_key(|known| {
            known
                .bytes()
                .zip(unknown.bytes())
                .take_while(|(a, b)| a == b)
                .count()
        })
        .copied()
        .unwrap_or("BRIDGE_AUTH_TOKENS")
}

/// The raw `BRIDGE_*` variables. envy names the variable in its parse errors only for numbers
/// and booleans, so everything else is read as a string and checked in [`Settings::from_vars`].
#[derive(Debug, Deserialize)]
struct BridgeVars {
    bridge_listen_addr: Option<String>,
    bridge_admin_addr: Option<String>,
    bridge_max_body_bytes: Option<u64>,
    bridge_auth_tokens: Option<String>,
    bridge_webhook_secrets: Option<String>,
    bridge_allow_unauthenticated: Option<bool>,
    bridge_topic_messages: Option<String>,
    bridge_topic_interactions: Option<String>,
    bridge_topic_orders: Option<String>,
    bridge_topic_other: Option<String>,
    bridge_topic_deadletter: Option<String>,
    bridge_event_source: Option<String>,
    bridge_ack_mode: Option<String>,
    bridge_publish_timeout_ms: Option<u64>,
    bridge_request_timeout_ms: Option<u64>,
    bridge_max_in_flight: Option<u64>,
    bridge_max_connections: Option<u64>,
    bridge_shutdown_delay_ms: Option<u64>,
    bridge_shutdown_timeout_ms: Option<u64>,
    bridge_log_format: Option<String>,
    bridge_spool_dir: Option<PathBuf>,
    bridge_spool_max_bytes: Option<u64>,
    bridge_spool_on_damage: Option<String>,
}

/// `KAFKA_*` variables that Kubernetes injects for a Service named `kafka` (service links).
/// They are not librdkafka settings; passing them on would stop the process at start.
fn is_kubernetes_service_link(variable: &str) -> bool {
    variable == "KAFKA_PORT"
        || variable.starts_with("KAFKA_PORT_")
        || variable.starts_with("KAFKA_SERVICE_")
}

/// Property names whose values are credentials.
fn is_secret_property(name: &str) -> bool {
    ["password", "secret", "key", "token", "jaas", "credentials"]
        .iter()
        .any(|word| name.contains(word))
        && !name.ends_with(".location")
}

const MAX_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1000;

fn spool_settings(bridge: &BridgeVars, max_body_bytes: u64) -> Result<SpoolSettings, ConfigError> {
    let dir = match &bridge.bridge_spool_dir {
        Some(dir) if !dir.as_os_str().is_empty() => dir.clone(),
        _ => {
            return Err(ConfigError::new(
                "BRIDGE_SPOOL_DIR",
                "is required with BRIDGE_ACK_MODE=spool: a directory on a persistent volume",
            ));
        }
    };
    let max_bytes = bridge
        .bridge_spool_max_bytes
        .unwrap_or(DEFAULT_SPOOL_MAX_BYTES);
    // A full spool must still hold a few of the largest events, so that it fills gradually.
    let least = MIN_SPOOL_MAX_BYTES.max(4 * max_body_bytes);
    if max_bytes < least {
        return Err(ConfigError::new(
            "BRIDGE_SPOOL_MAX_BYTES",
            format!(
                "must be at least {least} (1 MiB, and 4 x BRIDGE_MAX_BODY_BYTES), got {max_bytes}"
            ),
        ));
    }
    let on_damage = match bridge.bridge_spool_on_damage.as_deref().map(str::trim) {
        None | Some("" | "refuse") => OnDamage::Refuse,
        Some("set-aside") => OnDamage::SetAside,
        Some(other) => {
            return Err(ConfigError::new(
                "BRIDGE_SPOOL_ON_DAMAGE",
                format!("must be `refuse` or `set-aside`, got `{other}`"),
            ));
        }
    };
    Ok(SpoolSettings {
        dir,
        max_bytes,
        on_damage,
    })
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
        let bridge: BridgeVars = envy::from_iter(
            vars.iter()
                .filter(|(k, _)| k.starts_with("BRIDGE_"))
                .cloned(),
        )
        .map_err(|e| {
            let message = e.to_string();
            let variable = message
                .rsplit("provided by ")
                .next()
                .filter(|v| v.starts_with("BRIDGE_"))
                .unwrap_or("BRIDGE_*")
                .to_owned();
            ConfigError::new(variable, message)
        })?;

        let kafka = kafka_settings(&vars)?;
        let auth = auth_settings(&bridge)?;

        let max_body_bytes = positive(
            "BRIDGE_MAX_BODY_BYTES",
            bridge.bridge_max_body_bytes.unwrap_or(1024 * 1024),
            64 * 1024 * 1024,
        )?;
        let ack_mode = match bridge.bridge_ack_mode.as_deref().unwrap_or("kafka") {
            "kafka" => AckMode::Kafka,
            "spool" => AckMode::Spool(spool_settings(&bridge, max_body_bytes)?),
            other => {
                return Err(ConfigError::new(
                    "BRIDGE_ACK_MODE",
                    format!("expected `kafka` or `spool`, got `{other}`"),
                ));
            }
        };

        let log_format = match bridge.bridge_log_format.as_deref().unwrap_or("json") {
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            other => {
                return Err(ConfigError::new(
                    "BRIDGE_LOG_FORMAT",
                    format!("expected `json` or `text`, got `{other}`"),
                ));
            }
        };

        let settings = Settings {
            listen_addr: socket_addr(
                "BRIDGE_LISTEN_ADDR",
                bridge.bridge_listen_addr.as_deref(),
                "0.0.0.0:8080",
            )?,
            admin_addr: socket_addr(
                "BRIDGE_ADMIN_ADDR",
                bridge.bridge_admin_addr.as_deref(),
                "0.0.0.0:9090",
            )?,
            max_body_bytes: max_body_bytes as usize,
            auth,
            topics: Topics {
                messages: topic(
                    "BRIDGE_TOPIC_MESSAGES",
                    bridge.bridge_topic_messages,
                    "omnichat.messages",
                )?,
                interactions: topic(
                    "BRIDGE_TOPIC_INTERACTIONS",
                    bridge.bridge_topic_interactions,
                    "omnichat.interactions",
                )?,
                orders: topic(
                    "BRIDGE_TOPIC_ORDERS",
                    bridge.bridge_topic_orders,
                    "omnichat.orders",
                )?,
                other: topic(
                    "BRIDGE_TOPIC_OTHER",
                    bridge.bridge_topic_other,
                    "omnichat.other",
                )?,
                deadletter: topic(
                    "BRIDGE_TOPIC_DEADLETTER",
                    bridge.bridge_topic_deadletter,
                    "omnichat.deadletter",
                )?,
            },
            event_source: match bridge.bridge_event_source {
                Some(s) if s.trim().is_empty() => {
                    return Err(ConfigError::new("BRIDGE_EVENT_SOURCE", "must not be empty"));
                }
                Some(s) => s.into(),
                None => "omnichat".into(),
            },
            ack_mode,
            publish_timeout: Duration::from_millis(positive(
                "BRIDGE_PUBLISH_TIMEOUT_MS",
                bridge.bridge_publish_timeout_ms.unwrap_or(5000),
                MAX_TIMEOUT_MS,
            )?),
            request_timeout: Duration::from_millis(positive(
                "BRIDGE_REQUEST_TIMEOUT_MS",
                bridge.bridge_request_timeout_ms.unwrap_or(10_000),
                MAX_TIMEOUT_MS,
            )?),
            max_in_flight: positive(
                "BRIDGE_MAX_IN_FLIGHT",
                bridge.bridge_max_in_flight.unwrap_or(4096),
                1 << 20,
            )? as usize,
            max_connections: positive(
                "BRIDGE_MAX_CONNECTIONS",
                bridge.bridge_max_connections.unwrap_or(512),
                1 << 20,
            )? as usize,
            shutdown_delay: Duration::from_millis(at_most(
                "BRIDGE_SHUTDOWN_DELAY_MS",
                bridge.bridge_shutdown_delay_ms.unwrap_or(5000),
                MAX_TIMEOUT_MS,
            )?),
            shutdown_timeout: Duration::from_millis(positive(
                "BRIDGE_SHUTDOWN_TIMEOUT_MS",
                bridge.bridge_shutdown_timeout_ms.unwrap_or(30_000),
                MAX_TIMEOUT_MS,
            )?),
            log_format,
            kafka,
            unknown_variables: vars
                .iter()
                .map(|(k, _)| k)
                .filter(|k| k.starts_with("BRIDGE_") && !BRIDGE_VARIABLES.contains(&k.as_str()))
                .cloned()
                .collect(),
        };
        check_queue_limits(&settings.kafka, settings.max_in_flight)?;
        if settings.shutdown_delay >= settings.shutdown_timeout {
            return Err(ConfigError::new(
                "BRIDGE_SHUTDOWN_DELAY_MS",
                "must be shorter than BRIDGE_SHUTDOWN_TIMEOUT_MS, or in-flight events cannot be flushed",
            ));
        }
        Ok(settings)
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
                closest_variable(unknown)
            ));
        }
        if self.auth.tokens.iter().any(|t| t.expose().len() < 16) {
            warnings.push(
                "BRIDGE_AUTH_TOKENS: a token is shorter than 16 characters; \
                 generate one with `openssl rand -hex 32`"
                    .to_owned(),
            );
        }
        warnings
    }

    /// The effective configuration, one `(variable, value)` pair per setting, secrets redacted:
    /// what an operator checks before a rollout.
    pub fn effective(&self) -> Vec<(String, String)> {
        let redacted = |n: usize| {
            if n == 0 {
                "(none)".to_owned()
            } else {
                format!("{n} configured, redacted")
            }
        };
        let mut rows = vec![
            ("BRIDGE_LISTEN_ADDR", self.listen_addr.to_string()),
            ("BRIDGE_ADMIN_ADDR", self.admin_addr.to_string()),
            ("BRIDGE_MAX_BODY_BYTES", self.max_body_bytes.to_string()),
            ("BRIDGE_AUTH_TOKENS", redacted(self.auth.tokens.len())),
            (
                "BRIDGE_WEBHOOK_SECRETS",
                redacted(self.auth.webhook_keys.len()),
            ),
            (
                "BRIDGE_ALLOW_UNAUTHENTICATED",
                self.auth.allow_unauthenticated.to_string(),
            ),
            ("BRIDGE_TOPIC_MESSAGES", self.topics.messages.to_string()),
            (
                "BRIDGE_TOPIC_INTERACTIONS",
                self.topics.interactions.to_string(),
            ),
            ("BRIDGE_TOPIC_ORDERS", self.topics.orders.to_string()),
            ("BRIDGE_TOPIC_OTHER", self.topics.other.to_string()),
            (
                "BRIDGE_TOPIC_DEADLETTER",
                self.topics.deadletter.to_string(),
            ),
            ("BRIDGE_EVENT_SOURCE", self.event_source.to_string()),
            (
                "BRIDGE_ACK_MODE",
                match self.ack_mode {
                    AckMode::Kafka => "kafka",
                    AckMode::Spool(_) => "spool",
                }
                .to_owned(),
            ),
            (
                "BRIDGE_PUBLISH_TIMEOUT_MS",
                self.publish_timeout.as_millis().to_string(),
            ),
            (
                "BRIDGE_REQUEST_TIMEOUT_MS",
                self.request_timeout.as_millis().to_string(),
            ),
            ("BRIDGE_MAX_IN_FLIGHT", self.max_in_flight.to_string()),
            ("BRIDGE_MAX_CONNECTIONS", self.max_connections.to_string()),
            (
                "BRIDGE_SHUTDOWN_DELAY_MS",
                self.shutdown_delay.as_millis().to_string(),
            ),
            (
                "BRIDGE_SHUTDOWN_TIMEOUT_MS",
                self.shutdown_timeout.as_millis().to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect::<Vec<_>>();
        if let AckMode::Spool(spool) = &self.ack_mode {
            rows.push(("BRIDGE_SPOOL_DIR".into(), spool.dir.display().to_string()));
            rows.push(("BRIDGE_SPOOL_MAX_BYTES".into(), spool.max_bytes.to_string()));
            let on_damage = match spool.on_damage {
                OnDamage::Refuse => "refuse",
                OnDamage::SetAside => "set-aside",
            };
            rows.push(("BRIDGE_SPOOL_ON_DAMAGE".into(), on_damage.into()));
        }
        for p in &self.kafka.properties {
            let value = if p.is_secret {
                "[redacted]".to_owned()
            } else {
                p.value.expose().to_owned()
            };
            rows.push((p.variable.clone(), value));
        }
        rows
    }
}

fn socket_addr(
    variable: &str,
    value: Option<&str>,
    default: &str,
) -> Result<SocketAddr, ConfigError> {
    let value = value.unwrap_or(default);
    value.parse().map_err(|_| {
        ConfigError::new(
            variable,
            format!("expected an address like `0.0.0.0:8080`, got `{value}`"),
        )
    })
}

fn positive(variable: &str, value: u64, max: u64) -> Result<u64, ConfigError> {
    if value == 0 {
        return Err(ConfigError::new(variable, "must be greater than 0"));
    }
    at_most(variable, value, max)
}

fn at_most(variable: &str, value: u64, max: u64) -> Result<u64, ConfigError> {
    if value > max {
        return Err(ConfigError::new(
            variable,
            format!("{value} is more than the maximum of {max}"),
        ));
    }
    Ok(value)
}

fn topic(variable: &str, value: Option<String>, default: &str) -> Result<Arc<str>, ConfigError> {
    let name = value.unwrap_or_else(|| default.to_owned());
    // Kafka's own rule for topic names.
    let legal = !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !legal {
        return Err(ConfigError::new(
            variable,
            format!("`{name}` is not a legal Kafka topic name (1 to 249 of a-z A-Z 0-9 . _ -)"),
        ));
    }
    Ok(name.into())
}

fn list(value: Option<&str>) -> Vec<String> {
    value
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn auth_settings(bridge: &BridgeVars) -> Result<AuthSettings, ConfigError> {
    let tokens: Vec<Secret> = list(bridge.bridge_auth_tokens.as_deref())
        .into_iter()
        .map(Secret::new)
        .collect();
    let mut webhook_keys = Vec::new();
    for secret in list(bridge.bridge_webhook_secrets.as_deref()) {
        use base64::Engine as _;
        let encoded = secret.strip_prefix("whsec_").unwrap_or(&secret);
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                ConfigError::new(
                    "BRIDGE_WEBHOOK_SECRETS",
                    "each secret must be `whsec_` followed by base64",
                )
            })?;
        webhook_keys.push(Secret::new(key));
    }
    let allow_unauthenticated = bridge.bridge_allow_unauthenticated.unwrap_or(false);
    if tokens.is_empty() && webhook_keys.is_empty() && !allow_unauthenticated {
        return Err(ConfigError::new(
            "BRIDGE_AUTH_TOKENS",
            "no credential is configured: set BRIDGE_AUTH_TOKENS or BRIDGE_WEBHOOK_SECRETS \
             (or BRIDGE_ALLOW_UNAUTHENTICATED=true to accept anyone)",
        ));
    }
    Ok(AuthSettings {
        tokens,
        webhook_keys,
        allow_unauthenticated,
    })
}

/// Settings the bridge owns because its guarantees depend on them. `None` means any value
/// other than the bridge's own is refused.
const GUARDED: &[(&str, &[&str], &str)] = &[
    (
        "enable.idempotence",
        &["true"],
        "the idempotent producer keeps each chat's events in order across retries",
    ),
    (
        "acks",
        &["all", "-1"],
        "a 202 promises the record is on every in-sync replica",
    ),
    (
        "request.required.acks",
        &["all", "-1"],
        "a 202 promises the record is on every in-sync replica",
    ),
    (
        "partitioner",
        &["murmur2_random", "murmur2"],
        "keys must land where Kafka's Java clients put them",
    ),
    (
        "transactional.id",
        &[],
        "the bridge does not use transactions",
    ),
    (
        "delivery.report.only.error",
        &["false"],
        "a 202 waits for the broker's acknowledgement of each record, which this would suppress",
    ),
    (
        "enable.gapless.guarantee",
        &["true"],
        "the spool's forwarder relies on it to never land a later record before an earlier one",
    ),
    (
        "retries",
        &["2147483647"],
        "records are bounded by time (BRIDGE_PUBLISH_TIMEOUT_MS), not by a retry count that \
         would fail them early and leave gaps",
    ),
    (
        "message.send.max.retries",
        &["2147483647"],
        "records are bounded by time (BRIDGE_PUBLISH_TIMEOUT_MS), not by a retry count that \
         would fail them early and leave gaps",
    ),
];

/// The producer's queue must hold what the bridge may hand it at once: every request in
/// flight in kafka mode, the forwarder's window in spool mode.
fn check_queue_limits(kafka: &KafkaSettings, max_in_flight: usize) -> Result<(), ConfigError> {
    let window = crate::spool::FORWARD_WINDOW_RECORDS.max(max_in_flight) as u64;
    let window_kbytes = (crate::spool::FORWARD_WINDOW_BYTES / 1024) as u64;
    for (name, least, what) in [
        (
            "queue.buffering.max.messages",
            window,
            "records: BRIDGE_MAX_IN_FLIGHT and the spool forwarder's window",
        ),
        (
            "queue.buffering.max.kbytes",
            window_kbytes,
            "KiB: the spool forwarder's window",
        ),
    ] {
        let Some(property) = kafka.properties.iter().rev().find(|p| p.name == name) else {
            continue;
        };
        match property.value.expose().trim().parse::<u64>() {
            Ok(value) if value >= least => {}
            _ => {
                return Err(ConfigError::new(
                    property.variable.clone(),
                    format!(
                        "must be at least {least} ({what}), or records are refused as queue-full"
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn kafka_settings(vars: &[(String, String)]) -> Result<KafkaSettings, ConfigError> {
    let mut properties = Vec::new();
    let mut has_bootstrap = false;
    for (variable, value) in vars {
        let Some(rest) = variable.strip_prefix("KAFKA_") else {
            continue;
        };
        if is_kubernetes_service_link(variable) || rest.is_empty() {
            continue;
        }
        let name = rest.to_ascii_lowercase().replace('_', ".");
        if let Some((_, allowed, why)) = GUARDED.iter().find(|(n, _, _)| *n == name)
            && !allowed.contains(&value.trim())
        {
            let expected = if allowed.is_empty() {
                "must not be set".to_owned()
            } else {
                format!("must be `{}`", allowed.join("` or `"))
            };
            return Err(ConfigError::new(
                variable.clone(),
                format!("{expected}: {why}"),
            ));
        }
        if name == "bootstrap.servers" {
            if value.trim().is_empty() {
                return Err(ConfigError::new(variable.clone(), "must not be empty"));
            }
            has_bootstrap = true;
        }
        properties.push(KafkaProperty {
            variable: variable.clone(),
            is_secret: is_secret_property(&name),
            name,
            value: Secret::new(value.clone()),
        });
    }
    if !has_bootstrap {
        return Err(ConfigError::new(
            "KAFKA_BOOTSTRAP_SERVERS",
            "is required (for example `localhost:9092`)",
        ));
    }
    Ok(KafkaSettings { properties })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn minimal() -> Vec<(&'static str, &'static str)> {
        vec![
            ("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092"),
            ("BRIDGE_AUTH_TOKENS", "0123456789abcdef0123"),
        ]
    }

    fn error_for(extra: &[(&str, &str)]) -> ConfigError {
        let mut all = minimal();
        all.extend_from_slice(extra);
        Settings::from_vars(vars(&all)).expect_err("configuration should be refused")
    }

    #[test]
    fn defaults_follow_the_contract() {
        let s = Settings::from_vars(vars(&minimal())).expect("valid");
        assert_eq!(s.listen_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(s.admin_addr.to_string(), "0.0.0.0:9090");
        assert_eq!(s.max_body_bytes, 1024 * 1024);
        assert_eq!(&*s.topics.messages, "omnichat.messages");
        assert_eq!(&*s.topics.interactions, "omnichat.interactions");
        assert_eq!(&*s.topics.orders, "omnichat.orders");
        assert_eq!(&*s.topics.other, "omnichat.other");
        assert_eq!(&*s.topics.deadletter, "omnichat.deadletter");
        assert_eq!(&*s.event_source, "omnichat");
        assert_eq!(s.ack_mode, AckMode::Kafka);
        assert_eq!(s.publish_timeout, Duration::from_millis(5000));
        assert_eq!(s.shutdown_delay, Duration::from_millis(5000));
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.kafka.bootstrap_servers(), "localhost:9092");
    }

    #[test]
    fn spool_mode_takes_its_directory_and_a_one_gib_default_bound() {
        let mut all = minimal();
        all.extend([
            ("BRIDGE_ACK_MODE", "spool"),
            ("BRIDGE_SPOOL_DIR", "/var/spool/omnichat-bridge"),
        ]);
        let s = Settings::from_vars(vars(&all)).expect("valid");
        assert_eq!(
            s.ack_mode,
            AckMode::Spool(SpoolSettings {
                dir: PathBuf::from("/var/spool/omnichat-bridge"),
                max_bytes: 1 << 30,
                on_damage: OnDamage::Refuse,
            })
        );
        assert!(
            s.effective()
                .contains(&("BRIDGE_ACK_MODE".to_owned(), "spool".to_owned()))
        );
        // 4 x a 1 MiB body is the smallest spool.
        all.push(("BRIDGE_SPOOL_MAX_BYTES", "4194304"));
        assert!(Settings::from_vars(vars(&all)).is_ok());
        all.push(("BRIDGE_SPOOL_MAX_BYTES", "4194303"));
        assert_eq!(
            Settings::from_vars(vars(&all))
                .expect_err("too small")
                .variable,
            "BRIDGE_SPOOL_MAX_BYTES"
        );
    }

    #[test]
    fn each_bad_setting_is_refused_naming_its_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("BRIDGE_PUBLISH_TIMEOUT_MS", "soon")],
                "BRIDGE_PUBLISH_TIMEOUT_MS",
            ),
            (
                &[("BRIDGE_PUBLISH_TIMEOUT_MS", "0")],
                "BRIDGE_PUBLISH_TIMEOUT_MS",
            ),
            (&[("BRIDGE_LISTEN_ADDR", "8080")], "BRIDGE_LISTEN_ADDR"),
            (&[("BRIDGE_ADMIN_ADDR", "localhost")], "BRIDGE_ADMIN_ADDR"),
            (&[("BRIDGE_MAX_BODY_BYTES", "-1")], "BRIDGE_MAX_BODY_BYTES"),
            (
                &[("BRIDGE_ALLOW_UNAUTHENTICATED", "yes")],
                "BRIDGE_ALLOW_UNAUTHENTICATED",
            ),
            (&[("BRIDGE_TOPIC_ORDERS", "orders!")], "BRIDGE_TOPIC_ORDERS"),
            (&[("BRIDGE_ACK_MODE", "eventually")], "BRIDGE_ACK_MODE"),
            (&[("BRIDGE_ACK_MODE", "spool")], "BRIDGE_SPOOL_DIR"),
            (
                &[
                    ("BRIDGE_ACK_MODE", "spool"),
                    ("BRIDGE_SPOOL_DIR", "/var/spool/bridge"),
                    ("BRIDGE_SPOOL_MAX_BYTES", "1000"),
                ],
                "BRIDGE_SPOOL_MAX_BYTES",
            ),
            (
                &[
                    ("BRIDGE_ACK_MODE", "spool"),
                    ("BRIDGE_SPOOL_DIR", "/var/spool/bridge"),
                    ("BRIDGE_SPOOL_MAX_BYTES", "lots"),
                ],
                "BRIDGE_SPOOL_MAX_BYTES",
            ),
            (
                &[
                    ("BRIDGE_ACK_MODE", "spool"),
                    ("BRIDGE_SPOOL_DIR", "/var/spool/bridge"),
                    ("BRIDGE_SPOOL_ON_DAMAGE", "skip"),
                ],
                "BRIDGE_SPOOL_ON_DAMAGE",
            ),
            (&[("BRIDGE_LOG_FORMAT", "xml")], "BRIDGE_LOG_FORMAT"),
            (
                &[("BRIDGE_WEBHOOK_SECRETS", "whsec_***")],
                "BRIDGE_WEBHOOK_SECRETS",
            ),
            (
                &[("BRIDGE_SHUTDOWN_DELAY_MS", "40000")],
                "BRIDGE_SHUTDOWN_DELAY_MS",
            ),
            (
                &[("KAFKA_ENABLE_IDEMPOTENCE", "false")],
                "KAFKA_ENABLE_IDEMPOTENCE",
            ),
            (&[("KAFKA_ACKS", "1")], "KAFKA_ACKS"),
            (
                &[("KAFKA_DELIVERY_REPORT_ONLY_ERROR", "true")],
                "KAFKA_DELIVERY_REPORT_ONLY_ERROR",
            ),
            (&[("KAFKA_RETRIES", "1")], "KAFKA_RETRIES"),
            (
                &[("KAFKA_MESSAGE_SEND_MAX_RETRIES", "3")],
                "KAFKA_MESSAGE_SEND_MAX_RETRIES",
            ),
            (
                &[("KAFKA_ENABLE_GAPLESS_GUARANTEE", "false")],
                "KAFKA_ENABLE_GAPLESS_GUARANTEE",
            ),
            (
                &[("KAFKA_QUEUE_BUFFERING_MAX_MESSAGES", "1000")],
                "KAFKA_QUEUE_BUFFERING_MAX_MESSAGES",
            ),
            (
                &[("KAFKA_QUEUE_BUFFERING_MAX_KBYTES", "1024")],
                "KAFKA_QUEUE_BUFFERING_MAX_KBYTES",
            ),
            (
                &[
                    ("BRIDGE_MAX_IN_FLIGHT", "20000"),
                    ("KAFKA_QUEUE_BUFFERING_MAX_MESSAGES", "10000"),
                ],
                "KAFKA_QUEUE_BUFFERING_MAX_MESSAGES",
            ),
            (
                &[("KAFKA_REQUEST_REQUIRED_ACKS", "0")],
                "KAFKA_REQUEST_REQUIRED_ACKS",
            ),
            (
                &[("KAFKA_PARTITIONER", "consistent_random")],
                "KAFKA_PARTITIONER",
            ),
            (&[("KAFKA_TRANSACTIONAL_ID", "x")], "KAFKA_TRANSACTIONAL_ID"),
            (
                &[("KAFKA_BOOTSTRAP_SERVERS", " ")],
                "KAFKA_BOOTSTRAP_SERVERS",
            ),
        ];
        for (extra, variable) in cases {
            let error = error_for(extra);
            assert_eq!(&error.variable, variable, "{extra:?} gave {error}");
            let line = error.to_string();
            assert!(line.contains(variable) && !line.contains('\n'), "{line}");
        }
    }

    #[test]
    fn warns_about_unknown_bridge_variables_naming_the_likely_one() {
        let mut all = minimal();
        all.push(("BRIDGE_PUBLISH_TIMEOUT", "100"));
        let settings = Settings::from_vars(vars(&all)).expect("unknown variables are not fatal");
        let warnings = settings.warnings().join("\n");
        assert!(
            warnings.contains("BRIDGE_PUBLISH_TIMEOUT is not a setting")
                && warnings.contains("did you mean BRIDGE_PUBLISH_TIMEOUT_MS?"),
            "{warnings}"
        );
    }

    #[test]
    fn kafka_bootstrap_servers_is_required() {
        let error = Settings::from_vars(vars(&[("BRIDGE_ALLOW_UNAUTHENTICATED", "true")]))
            .expect_err("refused");
        assert_eq!(error.variable, "KAFKA_BOOTSTRAP_SERVERS");
    }

    #[test]
    fn refuses_to_start_without_any_credential() {
        let error = Settings::from_vars(vars(&[("KAFKA_BOOTSTRAP_SERVERS", "k:9092")]))
            .expect_err("refused");
        assert_eq!(error.variable, "BRIDGE_AUTH_TOKENS");
        let open = Settings::from_vars(vars(&[
            ("KAFKA_BOOTSTRAP_SERVERS", "k:9092"),
            ("BRIDGE_ALLOW_UNAUTHENTICATED", "true"),
        ]))
        .expect("explicitly open");
        assert!(open.auth.allow_unauthenticated);
    }

    #[test]
    fn kafka_variables_become_librdkafka_properties() {
        let s = Settings::from_vars(vars(&[
            ("KAFKA_BOOTSTRAP_SERVERS", "k:9092"),
            ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_SASL_PASSWORD", "hunter2hunter2"),
            ("KAFKA_COMPRESSION_TYPE", "zstd"),
            ("KAFKA_ACKS", "all"),
            ("KAFKA_PORT", "tcp://10.0.0.1:9092"),
            ("KAFKA_SERVICE_HOST", "10.0.0.1"),
            ("BRIDGE_AUTH_TOKENS", "0123456789abcdef0123"),
        ]))
        .expect("valid");
        assert_eq!(s.kafka.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(s.kafka.get("compression.type"), Some("zstd"));
        assert_eq!(s.kafka.get("sasl.password"), Some("hunter2hunter2"));
        assert_eq!(s.kafka.get("port"), None, "service links are not settings");
        assert_eq!(s.kafka.get("service.host"), None);
    }

    #[test]
    fn secrets_never_show_in_debug_or_effective_settings() {
        let s = Settings::from_vars(vars(&[
            ("KAFKA_BOOTSTRAP_SERVERS", "k:9092"),
            ("KAFKA_SASL_PASSWORD", "kafka-password-value"),
            ("KAFKA_SSL_KEY_PEM", "pem-key-value"),
            ("BRIDGE_AUTH_TOKENS", "token-value-0123456789"),
            ("BRIDGE_WEBHOOK_SECRETS", "whsec_c2lnbmluZy1rZXktdmFsdWU="),
        ]))
        .expect("valid");
        let printed = format!("{s:?} {:?}", s.effective());
        for secret in [
            "kafka-password-value",
            "pem-key-value",
            "token-value-0123456789",
            "signing-key-value",
            "c2lnbmluZy1rZXktdmFsdWU",
        ] {
            assert!(!printed.contains(secret), "{secret} leaked: {printed}");
        }
    }
}
