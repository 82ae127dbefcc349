//! The Kafka publisher: an idempotent librdkafka producer with `acks=all`, whose delivery report
//! is awaited before a webhook is answered.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::{PublishError, PublishFuture, Publisher, QueueDepth, Record, Stored};

/// librdkafka's default `queue.buffering.max.messages`.
const DEFAULT_QUEUE_LIMIT: usize = 100_000;
use crate::config::{ConfigError, KafkaSettings};

/// Properties the bridge sets before the operator's `KAFKA_*` ones. The guarded ones cannot be
/// overridden (see `config`); the others are defaults chosen for webhooks.
fn base_config(publish_timeout: Duration) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("client.id", "omnichat-bridge")
        // Exactly-once per partition and in order across retries (KIP-98).
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // Kafka's Java partitioner, so every client agrees where a chat's key lives.
        .set("partitioner", "murmur2_random")
        // librdkafka gives up on a record when the sender has already been told 503, so a
        // queued record does not outlive its answer by much.
        .set(
            "message.timeout.ms",
            publish_timeout.as_millis().to_string(),
        )
        .set("linger.ms", "2");
    config
}

/// Builds the librdkafka configuration from the operator's settings.
pub fn client_config(kafka: &KafkaSettings, publish_timeout: Duration) -> ClientConfig {
    let mut config = base_config(publish_timeout);
    for property in &kafka.properties {
        config.set(&property.name, property.value.expose());
    }
    config
}

/// Publishes to Kafka and waits for the broker's acknowledgement.
pub struct KafkaPublisher {
    producer: FutureProducer,
    publish_timeout: Duration,
    queue_limit: usize,
}

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPublisher")
            .field("publish_timeout", &self.publish_timeout)
            .finish_non_exhaustive()
    }
}

impl KafkaPublisher {
    /// Creates the producer. librdkafka checks every property here, so a bad `KAFKA_*` value
    /// stops the process at start, named by its variable.
    pub fn new(kafka: &KafkaSettings, publish_timeout: Duration) -> Result<Self, ConfigError> {
        let config = client_config(kafka, publish_timeout);
        let producer: FutureProducer = config
            .create()
            .map_err(|error| config_error(kafka, error))?;
        let queue_limit = config
            .get("queue.buffering.max.messages")
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_QUEUE_LIMIT);
        Ok(Self {
            producer,
            publish_timeout,
            queue_limit,
        })
    }

    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }
}

fn config_error(kafka: &KafkaSettings, error: KafkaError) -> ConfigError {
    let (variable, reason) = match &error {
        KafkaError::ClientConfig(_, description, name, _) => {
            let variable = kafka
                .properties
                .iter()
                .find(|p| &p.name == name)
                .map(|p| p.variable.clone())
                .unwrap_or_else(|| format!("KAFKA_{}", name.to_uppercase().replace('.', "_")));
            (variable, description.clone())
        }
        other => ("KAFKA_*".to_owned(), other.to_string()),
    };
    ConfigError { variable, reason }
}

impl Publisher for KafkaPublisher {
    fn publish(&self, record: Record) -> PublishFuture<'_> {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (name, value) in &record.headers {
            headers = headers.insert(KafkaHeader {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
        let sent = self
            .producer
            .send_result(
                FutureRecord::to(&record.topic)
                    .key(&record.key)
                    .payload(&record.value)
                    .headers(headers),
            )
            .map_err(|(error, _)| match error {
                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => {
                    PublishError::QueueFull
                }
                error => PublishError::Failed(error.to_string()),
            });
        let deadline = self.publish_timeout;
        Box::pin(async move {
            let delivery = sent?;
            // librdkafka's own message timeout is scanned about once a second; this is the
            // deadline the sender was promised.
            match tokio::time::timeout(deadline, delivery).await {
                Err(_) => Err(PublishError::Timeout(deadline)),
                Ok(Err(_canceled)) => Err(PublishError::ShuttingDown),
                Ok(Ok(Ok(delivery))) => Ok(Stored {
                    partition: delivery.partition,
                    offset: delivery.offset,
                }),
                Ok(Ok(Err((
                    KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
                    _,
                )))) => Err(PublishError::Timeout(deadline)),
                Ok(Ok(Err((error, _)))) => Err(PublishError::Failed(error.to_string())),
            }
        })
    }

    fn flush(&self, timeout: Duration) -> Result<(), PublishError> {
        self.producer
            .flush(timeout)
            .map_err(|error| PublishError::Failed(error.to_string()))
    }

    fn probe(&self, topics: &[&str], timeout: Duration) -> Result<(), String> {
        let metadata = self
            .producer
            .client()
            .fetch_metadata(None, timeout)
            .map_err(|error| format!("Kafka is not reachable: {error}"))?;
        let missing: Vec<&str> = topics
            .iter()
            .copied()
            .filter(|name| {
                !metadata
                    .topics()
                    .iter()
                    .any(|t| t.name() == *name && t.error().is_none() && !t.partitions().is_empty())
            })
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("topics do not exist: {}", missing.join(", ")))
        }
    }

    fn fatal_error(&self) -> Option<String> {
        self.producer
            .client()
            .fatal_error()
            .map(|(code, reason)| format!("{code}: {reason}"))
    }

    fn queue(&self) -> QueueDepth {
        QueueDepth {
            waiting: usize::try_from(self.producer.in_flight_count()).unwrap_or_default(),
            limit: self.queue_limit,
        }
    }
}
