//! Producer generations: one producer in service at a time, and its replacement only once
//! every record the old one held is resolved and it is destroyed.

use crate::locks::{lock, read, write};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{Producer, PurgeConfig};

use super::RESOLVE_WAIT;
use super::context::{BridgeContext, KafkaProducer, Reports};

/// One producer and its number; a replacement starts the next number.
#[derive(Clone)]
pub(super) struct Generation {
    pub(super) number: u64,
    pub(super) producer: Arc<KafkaProducer>,
}

/// Records waiting with no acknowledgement, as the probe saw them.
#[derive(Debug, Clone, Copy)]
pub(super) struct Stall {
    /// Acknowledgements counted when the stall began: any new one ends it.
    pub(super) acknowledged: u64,
    /// Failed deliveries counted at the last probe.
    pub(super) failed: u64,
    pub(super) since: Instant,
}

/// The producer generations behind a [`KafkaPublisher`](super::KafkaPublisher).
pub(super) struct Inner {
    pub(super) config: ClientConfig,
    /// `None` while a replacement is under way: nothing is sent then.
    pub(super) current: RwLock<Option<Generation>>,
    /// One replacement at a time.
    pub(super) replacing: Mutex<()>,
    /// A replacement is already scheduled on a thread of its own: the requests that see the
    /// same dead producer do not each start one.
    pub(super) scheduled: std::sync::atomic::AtomicBool,
    pub(super) reports: Arc<Reports>,
    /// Set when a new producer could not be created: only a restart mends that.
    pub(super) broken: Mutex<Option<super::ProducerBroken>>,
    /// Since when records have been waiting with no acknowledgement, and the count of
    /// acknowledgements then.
    pub(super) stalled: Mutex<Option<Stall>>,
}

impl Inner {
    pub(super) fn current(&self) -> Option<Generation> {
        read(&self.current).clone()
    }

    pub(super) fn replace(&self, generation: u64, why: &str) {
        let _one = lock(&self.replacing);
        let old = {
            let mut current = write(&self.current);
            match current.as_ref() {
                Some(g) if g.number == generation => current.take(),
                _ => None,
            }
        };
        let Some(Generation { producer, .. }) = old else {
            return;
        };
        // Purged records are reported as failed; some may still land, as duplicates that
        // the next generation sends again after them.
        producer.purge(PurgeConfig::default().queue().inflight());
        let deadline = Instant::now() + RESOLVE_WAIT;
        while producer.in_flight_count() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        // The probe may hold it for a moment; the last holder destroys it.
        let mut producer = producer;
        while Instant::now() < deadline {
            match Arc::try_unwrap(producer) {
                Ok(sole) => {
                    drop(sole);
                    break;
                }
                Err(shared) => {
                    producer = shared;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        match new_producer(&self.config, &self.reports) {
            Ok(fresh) => {
                *write(&self.current) = Some(Generation {
                    number: generation + 1,
                    producer: Arc::new(fresh),
                });
                tracing::warn!(
                    generation = generation + 1,
                    "{why}; replaced the Kafka producer after resolving every record it held"
                );
            }
            Err(error) => {
                let broken = super::ProducerBroken {
                    why: why.to_owned(),
                    error,
                };
                tracing::error!(error = %broken, "The Kafka producer could not be replaced");
                *lock(&self.broken) = Some(broken);
            }
        }
    }
}

pub(super) fn new_producer(
    config: &ClientConfig,
    reports: &Arc<Reports>,
) -> Result<KafkaProducer, KafkaError> {
    config.create_with_context(BridgeContext {
        reports: reports.clone(),
    })
}
