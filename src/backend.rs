//! What webhooks are stored through, with its lifecycle and health: the Kafka producer, or in
//! spool mode the spool in front of it. Startup owns it; requests only see its
//! [`Publisher`].

use std::sync::Arc;
use std::time::Duration;

use crate::publish::kafka::{KafkaPublisher, KafkaUnusable, ProducerBroken};
use crate::publish::{PublishError, Publisher, QueueDepth};
use crate::spool::{self, Spool, SpoolFatal, SpoolStatus};
use rdkafka::error::KafkaError;

/// Why the backend cannot go on without a restart: liveness fails on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fatal {
    #[error(transparent)]
    Producer(ProducerBroken),
    #[error(transparent)]
    Spool(SpoolFatal),
}

/// What a shutdown's flush left undone.
#[derive(Debug, thiserror::Error)]
pub enum Unflushed {
    /// Records queued for requests answered 503 that Kafka did not take in time.
    #[error(transparent)]
    Kafka(PublishError),
    #[error(transparent)]
    Spool(spool::Unflushed),
    #[error("the flush was interrupted")]
    Interrupted,
}

/// Kafka's state as a stand-in backend reports it.
pub type KafkaProbe = Arc<dyn Fn() -> Result<(), KafkaError> + Send + Sync>;

/// The backend a bridge runs on.
#[derive(Clone)]
pub enum Backend {
    /// `BRIDGE_ACK_MODE=kafka`: the producer answers each request.
    Kafka(Arc<KafkaPublisher>),
    /// `BRIDGE_ACK_MODE=spool`: the spool answers, its forwarder feeds Kafka.
    Spool(Arc<Spool>),
    /// Any publisher, with Kafka's state as `kafka` says: tests, and embedding the bridge in
    /// front of something else.
    Custom {
        publisher: Arc<dyn Publisher>,
        kafka: KafkaProbe,
    },
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Kafka(kafka) => f.debug_tuple("Kafka").field(kafka).finish(),
            Backend::Spool(spool) => f.debug_tuple("Spool").field(spool).finish(),
            Backend::Custom { .. } => f.write_str("Custom"),
        }
    }
}

impl Backend {
    /// A stand-in backend around `publisher`, with Kafka reachable.
    pub fn custom(publisher: Arc<dyn Publisher>) -> Self {
        Backend::Custom {
            publisher,
            kafka: Arc::new(|| Ok(())),
        }
    }

    /// What requests hand their records to.
    pub fn publisher(&self) -> Arc<dyn Publisher> {
        match self {
            Backend::Kafka(kafka) => kafka.clone(),
            Backend::Spool(spool) => spool.clone(),
            Backend::Custom { publisher, .. } => publisher.clone(),
        }
    }

    /// Whether Kafka can take records for these topics now, and which partitions have no
    /// leader. Blocks for at most `timeout`.
    pub fn probe(&self, topics: &[&str], timeout: Duration) -> Result<Vec<String>, KafkaUnusable> {
        match self {
            Backend::Kafka(kafka) => kafka.probe(topics, timeout),
            Backend::Spool(spool) => spool.probe(topics, timeout),
            Backend::Custom { kafka, .. } => kafka()
                .map(|()| Vec::new())
                .map_err(KafkaUnusable::Unreachable),
        }
    }

    /// An error the backend cannot recover from by itself: liveness fails on it, so the
    /// orchestrator restarts the process instead of leaving it answering 503 forever.
    pub fn fatal_error(&self) -> Option<Fatal> {
        match self {
            Backend::Kafka(kafka) => kafka.fatal_error().map(Fatal::Producer),
            Backend::Spool(spool) => spool.fatal_error().map(Fatal::Spool),
            Backend::Custom { .. } => None,
        }
    }

    /// Bytes sent to Kafka since start (librdkafka's statistics, every `statistics.interval.ms`).
    pub fn sent_bytes(&self) -> u64 {
        match self {
            Backend::Kafka(kafka) => kafka.sent_bytes(),
            Backend::Spool(spool) => spool.sent_bytes(),
            Backend::Custom { .. } => 0,
        }
    }

    /// Records taken but not yet stored, and how many may wait at once. The spool's bound is
    /// its size, which readiness checks itself.
    pub fn queue(&self) -> QueueDepth {
        match self {
            Backend::Kafka(kafka) => kafka.queue(),
            Backend::Spool(_) | Backend::Custom { .. } => QueueDepth::default(),
        }
    }

    /// The spool's state, in spool mode.
    pub fn spool_status(&self) -> Option<SpoolStatus> {
        match self {
            Backend::Spool(spool) => Some(spool.status()),
            _ => None,
        }
    }

    /// The conditions its parts raise: the spool's in spool mode, else a fresh set that
    /// readiness's probe keeps.
    pub fn conditions(&self) -> Arc<crate::conditions::Conditions> {
        match self {
            Backend::Spool(spool) => spool.conditions(),
            _ => Arc::default(),
        }
    }

    /// The spool, in spool mode.
    pub fn spool(&self) -> Option<&Arc<Spool>> {
        match self {
            Backend::Spool(spool) => Some(spool),
            _ => None,
        }
    }

    /// Sends what is still queued (kafka mode) or drains the spool (spool mode), within
    /// `timeout`; the last step of shutdown.
    pub async fn flush(&self, timeout: Duration) -> Result<(), Unflushed> {
        match self {
            Backend::Kafka(kafka) => {
                let kafka = kafka.clone();
                match tokio::task::spawn_blocking(move || kafka.flush(timeout)).await {
                    Ok(flushed) => flushed.map_err(Unflushed::Kafka),
                    Err(_) => Err(Unflushed::Interrupted),
                }
            }
            Backend::Spool(spool) => spool.flush(timeout).await.map_err(Unflushed::Spool),
            Backend::Custom { .. } => Ok(()),
        }
    }
}
