//! The Kafka publisher: an idempotent librdkafka producer with `acks=all`, whose delivery report
//! is awaited before a webhook is answered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
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
/// librdkafka's default `message.max.bytes`.
const DEFAULT_MAX_RECORD_BYTES: usize = 1_000_000;
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
        // queued record does not outlive its answer by much. 0 (the forwarder) never gives up.
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
    /// How long a record may wait for its acknowledgement; `None` for the spool's forwarder,
    /// which waits as long as it takes, so that a record is never given up and sent again
    /// behind a later one.
    publish_timeout: Option<Duration>,
    stuck_after: Duration,
    queue_limit: usize,
    max_record_bytes: usize,
    /// Records acknowledged since start.
    acknowledged: AtomicU64,
    /// Since when records have been waiting with no acknowledgement, and the count of
    /// acknowledgements then.
    stalled: Mutex<Option<(u64, Instant)>>,
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
        Self::create(kafka, Some(publish_timeout), publish_timeout)
    }

    /// A producer that retries each record until the broker takes it (`message.timeout.ms=0`):
    /// the spool's forwarder. `publish_timeout` only sets how soon a producer that gets no
    /// acknowledgement from a cluster that answers counts as stuck.
    pub fn unbounded(
        kafka: &KafkaSettings,
        publish_timeout: Duration,
    ) -> Result<Self, ConfigError> {
        Self::create(kafka, None, publish_timeout)
    }

    fn create(
        kafka: &KafkaSettings,
        publish_timeout: Option<Duration>,
        stuck_base: Duration,
    ) -> Result<Self, ConfigError> {
        let mut config = client_config(kafka, publish_timeout.unwrap_or(Duration::ZERO));
        if publish_timeout.is_none() {
            // Whatever KAFKA_MESSAGE_TIMEOUT_MS says: a record given up and sent again could
            // land behind a later one.
            config.set("message.timeout.ms", "0");
        }
        let producer: KafkaProducer = config
            .create_with_context(QuietContext)
            .map_err(|error| config_error(kafka, error))?;
        let producer = RwLock::new(Arc::new(producer));
        let number = |name: &str, default: usize| {
            config
                .get(name)
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        Ok(Self {
            queue_limit: number("queue.buffering.max.messages", DEFAULT_QUEUE_LIMIT),
            max_record_bytes: number("message.max.bytes", DEFAULT_MAX_RECORD_BYTES),
            config,
            producer,
            publish_timeout,
            stuck_after: (stuck_base * 2).max(STUCK_AFTER_AT_LEAST),
            acknowledged: AtomicU64::new(0),
            stalled: Mutex::new(None),
        })
    }

    /// The largest record the producer accepts (`message.max.bytes`).
    pub fn max_record_bytes(&self) -> usize {
        self.max_record_bytes
    }

    /// A producer is stuck when the cluster answers (the caller's metadata probe succeeded)
    /// yet records have waited a good while with none acknowledged. Seen after a broker restart
    /// that lost its producer state: librdkafka bumps the epoch and retries forever. A new
    /// producer starts with a new producer id.
    fn replace_if_stuck(&self) {
        let producer = self.current();
        let acknowledged = self.acknowledged.load(Ordering::Relaxed);
        let waiting = producer.in_flight_count() > 0;
        let mut stalled = self.stalled.lock().unwrap_or_else(|e| e.into_inner());
        let since = match *stalled {
            Some((seen, since)) if waiting && seen == acknowledged => since,
            _ => {
                *stalled = waiting.then(|| (acknowledged, Instant::now()));
                return;
            }
        };
        if since.elapsed() < self.stuck_after {
            return;
        }
        *stalled = None;
        drop(stalled);
        let why = format!(
            "Kafka answers but acknowledged nothing for {} ms",
            since.elapsed().as_millis()
        );
        if let Err(error) = self.replace(&producer, &why) {
            tracing::error!("{error}");
        }
    }

    /// Swaps in a new producer for `dead`, unless another caller already replaced it. The one
    /// place a producer is replaced. Dropping the old one purges what it still held, so its
    /// waiting records fail (and are answered 503, or sent again by the forwarder) instead of
    /// landing later, behind records of the new producer.
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
        let (size, limit) = (record.size(), self.max_record_bytes);
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
                KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge) => {
                    PublishError::TooLarge { size, limit }
                }
                error => PublishError::Failed(error.to_string()),
            });
        let deadline = self.publish_timeout;
        Box::pin(async move {
            let delivery = sent?;
            // librdkafka's own message timeout is scanned about once a second; this is the
            // deadline the sender was promised.
            let outcome = match deadline {
                Some(deadline) => tokio::time::timeout(deadline, delivery).await,
                None => Ok(delivery.await),
            };
            match &outcome {
                Ok(Ok(Ok(_))) => {
                    self.acknowledged.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Ok(Err((error, _)))) => {
                    self.heal(&producer, error.rdkafka_error_code());
                }
                _ => {
                    self.heal(&producer, None);
                }
            }
            let timeout = || PublishError::Timeout(deadline.unwrap_or_default());
            match outcome {
                Err(_) => Err(timeout()),
                Ok(Err(_canceled)) => Err(PublishError::Failed(
                    "the producer closed before the broker acknowledged".to_owned(),
                )),
                Ok(Ok(Ok(delivery))) => Ok(Stored::Kafka {
                    partition: delivery.partition,
                    offset: delivery.offset,
                }),
                Ok(Ok(Err((
                    KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
                    _,
                )))) => Err(timeout()),
                Ok(Ok(Err((
                    KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
                    _,
                )))) => Err(PublishError::TooLarge { size, limit }),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    #[test]
    fn the_forwarder_never_gives_a_record_up_whatever_is_configured() {
        let settings = Settings::from_vars(
            [
                ("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9"),
                ("KAFKA_MESSAGE_TIMEOUT_MS", "5000"),
                ("BRIDGE_AUTH_TOKENS", "0123456789abcdef0123"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        )
        .expect("settings");
        let timeout = Duration::from_secs(5);
        let forwarder = KafkaPublisher::unbounded(&settings.kafka, timeout).expect("producer");
        assert_eq!(forwarder.config.get("message.timeout.ms"), Some("0"));
        let ingress = KafkaPublisher::new(&settings.kafka, timeout).expect("producer");
        assert_eq!(ingress.config.get("message.timeout.ms"), Some("5000"));
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;
    use crate::config::Settings;
    use futures_util::FutureExt;

    /// librdkafka refuses a record at `produce` when its size as it counts it is over
    /// `message.max.bytes`; the bridge's door must draw the same line, byte for byte.
    #[tokio::test]
    async fn record_size_is_counted_exactly_as_librdkafka_counts_it() {
        let limit = 10_000;
        let settings = Settings::from_vars(
            [
                ("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9"),
                ("KAFKA_MESSAGE_MAX_BYTES", "10000"),
                ("BRIDGE_AUTH_TOKENS", "0123456789abcdef0123"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        )
        .expect("settings");
        let publisher =
            KafkaPublisher::new(&settings.kafka, Duration::from_secs(60)).expect("producer");
        // Header values across the varint boundaries of their length prefixes (64, 8192).
        for header_len in [0, 1, 63, 64, 65, 200, 8191, 8192] {
            let headers = vec![
                (
                    super::super::Header::Borrowed("ce_id"),
                    "x".repeat(header_len).into(),
                ),
                (
                    super::super::Header::Borrowed("content-type"),
                    "application/json".into(),
                ),
            ];
            let fixed = Record {
                topic: Arc::from("t"),
                key: "chat-1".to_owned(),
                headers: headers.clone(),
                value: Vec::new(),
            };
            let start = limit - fixed.size().min(limit) - 80;
            let mut seen_refused = false;
            for value_len in start..start + 200 {
                let record = Record {
                    value: vec![b'a'; value_len],
                    ..fixed.clone()
                };
                let ours = record.size() > limit;
                let theirs = matches!(
                    publisher.publish(record.clone()).now_or_never(),
                    Some(Err(PublishError::TooLarge { .. }))
                );
                assert_eq!(
                    ours,
                    theirs,
                    "header {header_len} B, value {value_len} B: size {} vs limit {limit}",
                    record.size()
                );
                seen_refused |= theirs;
            }
            assert!(seen_refused, "the walk must cross the limit");
        }
    }
}
