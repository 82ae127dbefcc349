//! The librdkafka properties: the ones the bridge sets, the ones it refuses, and the operator's
//! `KAFKA_*` variables, each a property (`KAFKA_SECURITY_PROTOCOL` is `security.protocol`).

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;

use super::{ConfigError, Secret};

/// librdkafka properties, in the order they were given. Values of secret-looking properties are
/// wrapped so the effective configuration can be logged.
#[derive(Debug, Clone, Default)]
pub struct KafkaSettings {
    /// Every `KAFKA_*` variable but Kubernetes' service links, as a property.
    pub properties: Vec<KafkaProperty>,
}

#[derive(Debug, Clone)]
pub struct KafkaProperty {
    /// The environment variable it came from, for error messages.
    pub variable: String,
    /// The librdkafka property name.
    pub name: String,
    /// Its value, wrapped: some are credentials.
    pub value: Secret,
    /// Whether the value is a credential, redacted wherever settings are shown.
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

/// Properties the bridge sets before the operator's `KAFKA_*` ones. The guarded ones cannot be
/// overridden (see [`GUARDED`]); the others are defaults chosen for webhooks.
fn owned(publish_timeout: Duration) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("client.id", "omnichat-bridge")
        // Exactly-once per partition and in order across retries (KIP-98).
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // Kafka's Java partitioner, so every client agrees where a chat's key lives.
        .set("partitioner", "murmur2_random")
        // librdkafka gives up on a record when the sender has already been told 503, so a
        // queued record does not outlive its answer by much. 0 (the forwarder) never gives up.
        .set(
            "message.timeout.ms",
            publish_timeout.as_millis().to_string(),
        )
        .set("linger.ms", "2")
        // librdkafka's default backoff doubles to 10 s, which after a 5 s outage kept the
        // bridge answering 503 for another 6 s. Capped at 1 s, it is back within about a
        // second, at the cost of one connection attempt per broker per second meanwhile.
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "1000")
        // Records waiting in the producer, at most: librdkafka's default is 1 GiB. 64 MiB holds
        // the spool forwarder's window twice and what the body budget lets requests publish;
        // past it a request gets 503 queue_full instead of the pod its OOM kill.
        .set("queue.buffering.max.kbytes", "65536");
    config
}

impl KafkaSettings {
    /// Names the variable behind an error librdkafka gave creating a producer.
    pub fn creation_error(&self, error: KafkaError) -> ConfigError {
        let (variable, reason) = match &error {
            KafkaError::ClientConfig(_, description, name, _) => {
                let variable = self
                    .properties
                    .iter()
                    .find(|p| p.name == canonical(name))
                    .map(|p| p.variable.clone())
                    .unwrap_or_else(|| format!("KAFKA_{}", name.to_uppercase().replace('.', "_")));
                (variable, description.clone())
            }
            // librdkafka checks some combinations only when it creates the producer, and names
            // the properties in its message: name the variable that set one of them.
            other => {
                let reason = other.to_string();
                let variable = self
                    .properties
                    .iter()
                    .filter(|p| mentions(&reason, &p.name))
                    .max_by_key(|p| p.name.len())
                    .map_or_else(|| "KAFKA_*".to_owned(), |p| p.variable.clone());
                (variable, reason)
            }
        };
        ConfigError { variable, reason }
    }

    /// The producer's configuration: the bridge's own properties, then the operator's.
    pub fn client_config(&self, publish_timeout: Duration) -> ClientConfig {
        let mut config = owned(publish_timeout);
        for property in &self.properties {
            config.set(&property.name, property.value.expose());
        }
        config
    }
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
];

/// librdkafka's second names for properties, each with the name the bridge uses for it.
/// librdkafka applies properties in the order it is given them, and rdkafka gives them from a
/// hash map: a property set under both names (the bridge's default under one, the operator's
/// value under the other) would take either value, differently from one start to the next.
/// Every `KAFKA_*` variable is therefore read under the bridge's name.
const ALIASES: &[(&str, &str)] = &[
    ("metadata.broker.list", "bootstrap.servers"),
    ("request.required.acks", "acks"),
    ("delivery.timeout.ms", "message.timeout.ms"),
    ("queue.buffering.max.ms", "linger.ms"),
    ("message.send.max.retries", "retries"),
    ("max.in.flight", "max.in.flight.requests.per.connection"),
    ("compression.codec", "compression.type"),
    ("sasl.mechanism", "sasl.mechanisms"),
    (
        "sasl.oauthbearer.client.credentials.client.id",
        "sasl.oauthbearer.client.id",
    ),
    (
        "sasl.oauthbearer.client.credentials.client.secret",
        "sasl.oauthbearer.client.secret",
    ),
];

/// The name the bridge uses for a librdkafka property.
fn canonical(name: &str) -> &str {
    ALIASES
        .iter()
        .find(|(alias, _)| *alias == name)
        .map_or(name, |(_, canonical)| canonical)
}

/// Whether librdkafka's `message` names the property `name` under any of its names.
fn mentions(message: &str, name: &str) -> bool {
    message.contains(name)
        || ALIASES
            .iter()
            .any(|(alias, canonical)| *canonical == name && message.contains(alias))
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

impl KafkaSettings {
    /// Refuses a value of property `name` below `least`, naming the variable that set it; `what`
    /// says what it must hold. Unset, librdkafka's default applies (callers check it fits).
    pub fn at_least(&self, name: &str, least: u64, what: &str) -> Result<(), ConfigError> {
        let Some(property) = self.properties.iter().rev().find(|p| p.name == name) else {
            return Ok(());
        };
        match property.value.expose().trim().parse::<u64>() {
            Ok(value) if value >= least => Ok(()),
            _ => Err(ConfigError::new(
                property.variable.clone(),
                format!("must be at least {least} ({what}), or records are refused as queue-full"),
            )),
        }
    }
}

pub(super) fn settings(vars: &[(String, String)]) -> Result<KafkaSettings, ConfigError> {
    let mut properties = Vec::new();
    let mut has_bootstrap = false;
    for (variable, value) in vars {
        let Some(rest) = variable.strip_prefix("KAFKA_") else {
            continue;
        };
        if is_kubernetes_service_link(variable) || rest.is_empty() {
            continue;
        }
        let name = canonical(&rest.to_ascii_lowercase().replace('_', ".")).to_owned();
        if let Some(other) = properties.iter().find(|p: &&KafkaProperty| {
            p.name == name && p.variable != *variable && p.value.expose().trim() != value.trim()
        }) {
            return Err(ConfigError::new(
                variable.clone(),
                format!(
                    "and {} both set librdkafka's `{name}`, differently: keep one",
                    other.variable
                ),
            ));
        }
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
