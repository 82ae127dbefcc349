//! The producer's policy: the librdkafka properties the bridge sets itself, and the values of
//! the operator's `KAFKA_*` variables it refuses because its guarantees depend on them. Kept
//! beside the producer, as Vector keeps `to_rdkafka` with its Kafka sink.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;

use crate::config::{ConfigError, KafkaSettings, canonical, mentions};

/// Refuses a `KAFKA_*` variable that would break a guarantee, naming it.
pub fn check(kafka: &KafkaSettings) -> Result<(), ConfigError> {
    for property in &kafka.properties {
        let value = property.value.expose().trim();
        if let Some((_, allowed, why)) = GUARDED.iter().find(|(n, _, _)| *n == property.name)
            && !allowed.contains(&value)
        {
            let expected = if allowed.is_empty() {
                "must not be set".to_owned()
            } else {
                format!("must be `{}`", allowed.join("` or `"))
            };
            return Err(ConfigError::new(
                property.variable.clone(),
                format!("{expected}: {why}"),
            ));
        }
    }
    Ok(())
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
        // Every event carries its message text twice (`message.text` and `raw`) and JSON's
        // field names: lz4 sends about a fifth of the bytes (1,454 to 311 per event on the
        // benchmark's mix) for about no CPU, where zstd saves a third more for a fifth more CPU
        // (BENCHMARKS.md). Every Kafka client decompresses it.
        .set("compression.type", "lz4")
        // How often librdkafka reports the bytes it sent (a metric): cheap, and off otherwise.
        .set("statistics.interval.ms", "10000")
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

/// Names the variable behind an error librdkafka gave creating a producer.
pub fn creation_error(kafka: &KafkaSettings, error: KafkaError) -> ConfigError {
    let (variable, reason) = match &error {
        KafkaError::ClientConfig(_, description, name, _) => {
            let variable = kafka
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
            let variable = kafka
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
pub fn client_config(kafka: &KafkaSettings, publish_timeout: Duration) -> ClientConfig {
    let mut config = owned(publish_timeout);
    for property in &kafka.properties {
        config.set(&property.name, property.value.expose());
    }
    config
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
