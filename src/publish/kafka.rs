//! The Kafka publisher: an idempotent librdkafka producer with `acks=all`, whose delivery report
//! is awaited before a webhook is answered.
//!
//! Deliveries are completed from librdkafka's own delivery callback ([`BridgeContext`]), which
//! also counts acknowledgements, so an acknowledgement that arrives after a request's deadline
//! still counts and a slow producer is never taken for a stuck one.
//!
//! A producer that dies (fatal, fenced, stuck) is replaced by a new *generation*: the old one
//! is taken out of service at once, every record it holds is resolved (acknowledged or
//! purged), it is destroyed, and only then does a new one take records. Records of two
//! producers are therefore never in flight together, so an older record can never land behind
//! a newer one sent through the new producer.

use crate::locks::{lock, read};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer};
use tokio::sync::oneshot;

mod context;
mod generations;
pub mod policy;

use context::Reports;
pub use context::{Acked, BridgeContext, Delivery, KafkaProducer, Outcome};
use generations::{Generation, Inner, Stall, new_producer};

use super::refusal::{Refused, Verdict};
use super::{PublishError, PublishFuture, Publisher, QueueDepth, Record, Stored};
use crate::config::{ConfigError, KafkaSettings};

/// The shortest time without any acknowledgement, while Kafka answers metadata, after which a
/// producer counts as stuck (at least twice the publish deadline).
const STUCK_AFTER_AT_LEAST: Duration = Duration::from_secs(10);
/// How long a replacement waits for the old producer's records to resolve after purging them.
const RESOLVE_WAIT: Duration = Duration::from_secs(10);

/// librdkafka's default `queue.buffering.max.messages`.
const DEFAULT_QUEUE_LIMIT: usize = 100_000;
/// librdkafka's default `message.max.bytes`.
const DEFAULT_MAX_RECORD_BYTES: usize = 1_000_000;

/// Why Kafka cannot take records now, as the readiness probe found it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KafkaUnusable {
    #[error("Kafka is not reachable: {0}")]
    Unreachable(#[source] KafkaError),
    /// The probe's task ended before Kafka answered (it panicked, or the runtime is stopping).
    #[error("Kafka is not reachable: the probe stopped before it answered")]
    ProbeLost,
    #[error("topics do not exist: {}", .0.join(", "))]
    TopicsMissing(Vec<String>),
    #[error("the Kafka producer is being replaced")]
    Replacing,
}

/// A producer the bridge could not replace: only a restart mends it, so liveness fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{why}; a new Kafka producer failed: {error}")]
pub struct ProducerBroken {
    /// Why the old one was being replaced.
    pub why: String,
    #[source]
    pub error: KafkaError,
}

/// Why a record was not handed to a producer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The producer generation asked for is gone (or being replaced).
    #[error("the Kafka producer is being replaced")]
    Replaced,
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// Publishes to Kafka and waits for the broker's acknowledgement.
#[derive(Clone)]
pub struct KafkaPublisher {
    inner: Arc<Inner>,
    /// How long a record may wait for its acknowledgement; `None` for the spool's forwarder,
    /// which waits as long as it takes, so that a record is never given up and sent again
    /// behind a later one.
    publish_timeout: Option<Duration>,
    stuck_after: Duration,
    queue_limit: usize,
    max_record_bytes: usize,
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

    /// The spool's forwarder: a producer that retries each record until the broker takes it
    /// (`message.timeout.ms=0`), and that fails as a whole rather than let a later record of a
    /// partition land after an earlier one that did not (`enable.gapless.guarantee`).
    /// `publish_timeout` only sets how soon a producer that gets no acknowledgement from a
    /// cluster that answers counts as stuck.
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
        let mut config = policy::client_config(kafka, publish_timeout.unwrap_or(Duration::ZERO));
        if publish_timeout.is_none() {
            // Whatever KAFKA_MESSAGE_TIMEOUT_MS says: a record given up and sent again could
            // land behind a later one.
            config.set("message.timeout.ms", "0");
            config.set("enable.gapless.guarantee", "true");
        }
        let reports = Arc::new(Reports::default());
        let producer = new_producer(&config, &reports)
            .map_err(|error| policy::creation_error(kafka, error))?;
        let number = |name: &str, default: usize| {
            config
                .get(name)
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        Ok(Self {
            queue_limit: number("queue.buffering.max.messages", DEFAULT_QUEUE_LIMIT),
            max_record_bytes: number("message.max.bytes", DEFAULT_MAX_RECORD_BYTES),
            publish_timeout,
            stuck_after: (stuck_base * 2).max(STUCK_AFTER_AT_LEAST),
            inner: Arc::new(Inner {
                config,
                current: RwLock::new(Some(Generation {
                    number: 0,
                    producer: Arc::new(producer),
                })),
                replacing: Mutex::new(()),
                scheduled: std::sync::atomic::AtomicBool::new(false),
                reports,
                broken: Mutex::new(None),
                stalled: Mutex::new(None),
            }),
        })
    }

    /// The largest record the producer accepts (`message.max.bytes`).
    pub fn max_record_bytes(&self) -> usize {
        self.max_record_bytes
    }

    /// Changes whenever a record is not delivered.
    pub fn failures(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.reports.failed.subscribe()
    }

    /// The generation records go to now; `None` while a replacement is under way.
    pub fn generation(&self) -> Option<u64> {
        self.inner.current().map(|g| g.number)
    }

    /// Hands `record` to the producer of `generation` (any, if `None`) and returns which
    /// generation took it and its delivery.
    pub fn send(
        &self,
        record: &Record,
        generation: Option<u64>,
    ) -> Result<(u64, Delivery), SendError> {
        let current = read(&self.inner.current);
        let Some(current) = current.as_ref() else {
            return Err(SendError::Replaced);
        };
        if generation.is_some_and(|wanted| wanted != current.number) {
            return Err(SendError::Replaced);
        }
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (name, value) in &record.headers {
            headers = headers.insert(KafkaHeader {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
        let (reply, delivery) = oneshot::channel();
        let sent = current.producer.send(
            BaseRecord::with_opaque_to(&record.topic, Box::new(reply))
                .key(&record.key)
                .payload(&record.value)
                .headers(headers),
        );
        match sent {
            Ok(()) => Ok((current.number, delivery)),
            Err((error, _)) => Err(SendError::Publish(match error {
                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => {
                    PublishError::QueueFull
                }
                KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge) => {
                    PublishError::TooLarge {
                        size: record.size(),
                        limit: self.max_record_bytes,
                    }
                }
                error => PublishError::Refused(Refused::from(&error)),
            })),
        }
    }

    /// Replaces the producer of `generation` with a new one, unless that already happened:
    /// takes it out of service, purges what it holds, waits until every one of its records is
    /// resolved, destroys it, and only then lets the next generation take records. Blocks
    /// (for at most about [`RESOLVE_WAIT`] and a producer's teardown).
    pub fn replace(&self, generation: u64, why: &str) {
        self.inner.replace(generation, why);
    }

    /// Replaces the producer if librdkafka flagged it fatal, or the broker refused its
    /// identity; called for a record's refusal (`refused`) or by the readiness probe.
    fn heal(&self, generation: u64, refused: Option<&Refused>) {
        let Some(current) = self.inner.current().filter(|g| g.number == generation) else {
            return;
        };
        let why = match current.producer.client().fatal_error() {
            Some((code, reason)) => format!("the Kafka producer failed fatally ({code}: {reason})"),
            None => match refused.map(|r| r.code).filter(is_producer_identity_error) {
                Some(code) => format!("the broker no longer accepts this producer ({code})"),
                None => return,
            },
        };
        drop(current);
        if self.inner.scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        // Off the caller's thread: a request's task must not block on a producer's teardown.
        let inner = self.inner.clone();
        let spawned = std::thread::Builder::new()
            .name("kafka-replace".into())
            .spawn(move || {
                inner.replace(generation, &why);
                inner.scheduled.store(false, Ordering::Release);
            });
        if let Err(error) = spawned {
            self.inner.scheduled.store(false, Ordering::Release);
            tracing::error!(error = %error, "A dead Kafka producer could not be replaced");
        }
    }

    /// A producer is stuck when the cluster answers (the caller's metadata probe succeeded)
    /// yet records have waited a good while with none acknowledged. Seen after a broker restart
    /// that lost its producer state: librdkafka bumps the epoch and retries forever.
    fn replace_if_stuck(&self) {
        let Some(current) = self.inner.current() else {
            return;
        };
        let acknowledged = self.inner.reports.acknowledged.load(Ordering::Relaxed);
        let failed = *self.inner.reports.failed.borrow();
        let waiting = current.producer.in_flight_count() > 0;
        let mut stalled = lock(&self.inner.stalled);
        // Still stalled while nothing is acknowledged and records wait now, or failed since the
        // last probe: records that time out between two probes leave nothing in flight for a
        // moment, and must not restart the clock (after a broker restart that kept the
        // producer waiting for half a minute).
        let since = match *stalled {
            Some(stall)
                if stall.acknowledged == acknowledged && (waiting || failed > stall.failed) =>
            {
                *stalled = Some(Stall { failed, ..stall });
                stall.since
            }
            _ => {
                *stalled = waiting.then(|| Stall {
                    acknowledged,
                    failed,
                    since: Instant::now(),
                });
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
        self.inner.replace(current.number, &why);
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

impl Publisher for KafkaPublisher {
    fn publish(&self, record: Record) -> PublishFuture<'_> {
        let sent = self.send(&record, None);
        let deadline = self.publish_timeout;
        Box::pin(async move {
            let (generation, delivery) = sent.map_err(|error| match error {
                SendError::Replaced => PublishError::Replacing,
                SendError::Publish(error) => error,
            })?;
            // librdkafka's own message timeout is scanned about once a second; this is the
            // deadline the sender was promised.
            let outcome = match deadline {
                Some(deadline) => tokio::time::timeout(deadline, delivery).await,
                None => Ok(delivery.await),
            };
            let timeout = || PublishError::Timeout(deadline.unwrap_or_default());
            match outcome {
                Err(_) => Err(timeout()),
                Ok(Err(_closed)) => Err(PublishError::ProducerClosed),
                Ok(Ok(Ok(acked))) => Ok(Stored::Kafka {
                    partition: acked.partition,
                    offset: acked.offset,
                }),
                Ok(Ok(Err(refused))) => {
                    self.heal(generation, Some(&refused));
                    Err(match refused.verdict() {
                        _ if refused.code == RDKafkaErrorCode::MessageTimedOut => timeout(),
                        Verdict::Poison => PublishError::Poison(refused),
                        Verdict::Operator | Verdict::Retry => PublishError::Refused(refused),
                    })
                }
            }
        })
    }
}

/// Lifecycle and health, for the backend that owns this producer.
impl KafkaPublisher {
    /// Sends everything still queued, waiting at most `timeout`; used on shutdown. Blocks.
    pub fn flush(&self, timeout: Duration) -> Result<(), PublishError> {
        match self.inner.current() {
            Some(current) => current
                .producer
                .flush(timeout)
                .map_err(|error| PublishError::Refused(Refused::from(&error))),
            None => Ok(()),
        }
    }

    /// Whether Kafka can take records for these topics now, and which of their partitions have
    /// no leader (named `topic[partition]`). Blocks for at most `timeout`; readiness calls it
    /// from a background task.
    pub fn probe(&self, topics: &[&str], timeout: Duration) -> Result<Vec<String>, KafkaUnusable> {
        let current = self.inner.current().ok_or(KafkaUnusable::Replacing)?;
        let metadata = current
            .producer
            .client()
            .fetch_metadata(None, timeout)
            .map_err(KafkaUnusable::Unreachable)?;
        drop(current);
        let missing: Vec<String> = topics
            .iter()
            .map(|name| (*name).to_owned())
            .filter(|name| {
                !metadata.topics().iter().any(|t| {
                    t.name() == name.as_str() && t.error().is_none() && !t.partitions().is_empty()
                })
            })
            .collect();
        let leaderless = metadata
            .topics()
            .iter()
            .filter(|t| topics.contains(&t.name()))
            .flat_map(|t| {
                t.partitions()
                    .iter()
                    .filter(|p| p.leader() < 0 || p.error().is_some())
                    .map(move |p| format!("{}[{}]", t.name(), p.id()))
            })
            .collect();
        self.replace_if_stuck();
        if missing.is_empty() {
            Ok(leaderless)
        } else {
            Err(KafkaUnusable::TopicsMissing(missing))
        }
    }

    /// An error the producer could not recover from by itself; liveness fails on it. Called by
    /// the readiness probe, so it repairs a producer librdkafka flagged fatal while idle.
    pub fn fatal_error(&self) -> Option<ProducerBroken> {
        if let Some(generation) = self.generation() {
            // Repairs a producer librdkafka flagged fatal while idle.
            let current = self.inner.current();
            if current.is_some_and(|g| g.producer.client().fatal_error().is_some()) {
                self.inner
                    .replace(generation, "the Kafka producer failed fatally");
            }
        }
        lock(&self.inner.broken).clone()
    }

    /// Bytes sent to the brokers since start, as librdkafka's statistics last reported them.
    pub fn sent_bytes(&self) -> u64 {
        self.inner.reports.sent_bytes.load(Ordering::Relaxed)
    }

    /// Records taken but not yet acknowledged, and how many may wait at once.
    pub fn queue(&self) -> QueueDepth {
        QueueDepth {
            waiting: self.inner.current().map_or(0, |g| {
                usize::try_from(g.producer.in_flight_count()).unwrap_or_default()
            }),
            limit: self.queue_limit,
        }
    }
}

#[cfg(test)]
mod tests;
