//! The operator's `KAFKA_*` variables, each read as one librdkafka property
//! (`KAFKA_SECURITY_PROTOCOL` is `security.protocol`) under the one name the bridge uses for it.
//! Which properties the bridge sets itself and which values it refuses is the producer's policy
//! (`publish::kafka::policy`).

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
pub(crate) fn canonical(name: &str) -> &str {
    ALIASES
        .iter()
        .find(|(alias, _)| *alias == name)
        .map_or(name, |(_, canonical)| canonical)
}

/// Whether librdkafka's `message` names the property `name` under any of its names.
pub(crate) fn mentions(message: &str, name: &str) -> bool {
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
