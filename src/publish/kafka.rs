//! The Kafka publisher: an idempotent librdkafka producer with `acks=all`, whose delivery report
//! is awaited before a webhook is answered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::{PublishError, PublishFuture, Publisher, QueueDepth, Record, Stored};

/// The shortest time without any acknowledgement, while Kafka answers metadata, after which a
/// producer counts as stuck (at least twice the publish deadline).
const STUCK_AFTER_AT_LEAST: Duration = Duration::from_secs(10);

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

/// Routes librdkafka's own logs into `tracing`. During an outage librdkafka reports every failed
/// reconnect as an error; readiness already logs each change of Kafka's state once, so
/// connection churn goes to debug and only warnings and fatal errors stay loud.
#[derive(Debug, Clone, Default)]
pub struct QuietContext;

impl ClientContext for QuietContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical => {
                tracing::error!(target: "librdkafka", facility, "{message}");
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
            _ => tracing::debug!(target: "librdkafka", facility, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            tracing::error!(target: "librdkafka", "Kafka producer failed fatally: {reason}");
        } else {
            tracing::debug!(target: "librdkafka", "{error}: {reason}");
        }
    }
}

pub type KafkaProducer = FutureProducer<QuietContext>;

/// Publishes to Kafka and waits for the broker's acknowledgement.
///
/// An idempotent producer that fails fatally (fenced, or an unrecoverable sequence error) never
/// works again, so it is replaced by a new one, in place, the first time the failure is seen.
/// Every record answered 202 is already in Kafka, so per-chat order survives the swap; records
/// still queued in the failed producer were or will be answered 503.
pub struct KafkaPublisher {
    config: ClientConfig,
    producer: RwLock<Arc<KafkaProducer>>,
    publish_timeout: Duration,
    queue_limit: usize,
    started: Instant,
    /// Milliseconds since `started` when deliveries began failing with none succeeding since;
    /// 0 while the last delivery succeeded.
    failing_since_ms: AtomicU64,
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
        let producer: KafkaProducer = config
            .create_with_context(QuietContext)
            .map_err(|error| config_error(kafka, error))?;
        let producer = RwLock::new(Arc::new(producer));
        let queue_limit = config
            .get("queue.buffering.max.messages")
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_QUEUE_LIMIT);
        Ok(Self {
            config,
            producer,
            publish_timeout,
            queue_limit,
            started: Instant::now(),
            failing_since_ms: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    fn record_outcome(&self, delivered: bool) {
        if delivered {
            self.failing_since_ms.store(0, Ordering::Relaxed);
        } else {
            let _ = self.failing_since_ms.compare_exchange(
                0,
                self.now_ms(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// A producer is stuck when the cluster answers (the caller's metadata probe succeeded)
    /// yet nothing was acknowledged for a good while and deliveries keep failing. Seen after a
    /// broker restart that lost its producer state: librdkafka bumps the epoch and retries
    /// forever. A new producer starts with a new producer id.
    fn replace_if_stuck(&self) {
        let since = self.failing_since_ms.load(Ordering::Relaxed);
        let stuck_after = (self.publish_timeout * 2).max(STUCK_AFTER_AT_LEAST);
        if since == 0 || self.now_ms() - since < stuck_after.as_millis() as u64 {
            return;
        }
        let why = format!(
            "Kafka answers but acknowledged nothing for {} ms",
            self.now_ms() - since
        );
        if let Err(error) = self.replace(&self.current(), &why) {
            tracing::error!("{error}");
        }
    }

    /// Swaps in a new producer for `dead`, unless another caller already replaced it. The one
    /// place a producer is replaced; every 202 was acknowledged before it was sent, so per-chat
    /// order survives the swap.
    fn replace(&self, dead: &Arc<KafkaProducer>, why: &str) -> Result<(), String> {
        let mut slot = self.producer.write().unwrap_or_else(|e| e.into_inner());
        if !Arc::ptr_eq(&slot, dead) {
            return Ok(());
        }
        let fresh = self
            .config
            .create_with_context::<QuietContext, KafkaProducer>(QuietContext)
            .map_err(|error| format!("{why}; a new producer failed: {error}"))?;
        let failed = std::mem::replace(&mut *slot, Arc::new(fresh));
        drop(slot);
        self.failing_since_ms.store(0, Ordering::Relaxed);
        tracing::warn!("{why}; replaced the Kafka producer with a new one");
        // Destroying a producer can block while librdkafka tears down its threads.
        std::thread::spawn(move || drop(failed));
        Ok(())
    }

    fn current(&self) -> Arc<KafkaProducer> {
        self.producer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces `producer` if it is dead: librdkafka flagged it fatal, or the broker refused
    /// its identity (`rejected`). Returns the reason when the failure could not be repaired.
    fn heal(
        &self,
        producer: &Arc<KafkaProducer>,
        rejected: Option<RDKafkaErrorCode>,
    ) -> Option<String> {
        let why = match producer.client().fatal_error() {
            Some((code, reason)) => format!("the Kafka producer failed fatally ({code}: {reason})"),
            None => {
                let code = rejected.filter(is_producer_identity_error)?;
                format!("the broker no longer accepts this producer ({code})")
            }
        };
        self.replace(producer, &why).err()
    }
}

/// Broker answers that mean this producer's id or epoch is dead for good. librdkafka repairs
/// some of them itself (a stale epoch from Kafka 2.5+); brokers that answer `PRODUCER_FENCED`
/// to an idempotent producer leave it failing every record until it is replaced.
fn is_producer_identity_error(code: &RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::OutOfOrderSequenceNumber
            | RDKafkaErrorCode::Fenced
    )
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
        let producer = self.current();
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (name, value) in &record.headers {
            headers = headers.insert(KafkaHeader {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
        let sent = producer
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
            let outcome = tokio::time::timeout(deadline, delivery).await;
            self.record_outcome(matches!(outcome, Ok(Ok(Ok(_)))));
            match &outcome {
                Ok(Ok(Ok(_))) => {}
                Ok(Ok(Err((error, _)))) => {
                    self.heal(&producer, error.rdkafka_error_code());
                }
                _ => {
                    self.heal(&producer, None);
                }
            }
            match outcome {
                Err(_) => Err(PublishError::Timeout(deadline)),
                Ok(Err(_canceled)) => Err(PublishError::Failed(
                    "the producer closed before the broker acknowledged".to_owned(),
                )),
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
        self.current()
            .flush(timeout)
            .map_err(|error| PublishError::Failed(error.to_string()))
    }

    fn probe(&self, topics: &[&str], timeout: Duration) -> Result<(), String> {
        let metadata = self
            .current()
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
        self.replace_if_stuck();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("topics do not exist: {}", missing.join(", ")))
        }
    }

    fn fatal_error(&self) -> Option<String> {
        self.heal(&self.current(), None)
    }

    fn queue(&self) -> QueueDepth {
        QueueDepth {
            waiting: usize::try_from(self.current().in_flight_count()).unwrap_or_default(),
            limit: self.queue_limit,
        }
    }
}
