//! Liveness and readiness: what the probes on the admin port answer, and why.

use crate::locks::lock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::json;

use crate::backend::Fatal;
use crate::conditions::Conditions;
use crate::publish::kafka::KafkaUnusable;
use crate::spool::SpoolStatus;

/// Why readiness is 503. Each has a stable `code` for `/readyz`; the message may change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// Liveness failed: the process must be restarted.
    #[error(transparent)]
    Failed(Fatal),
    #[error("shutting down")]
    ShuttingDown,
    #[error("the spool is full ({bytes} of {limit} bytes) until Kafka takes the backlog")]
    SpoolFull { bytes: u64, limit: u64 },
    #[error("the spool's volume has no room; it is checked every second")]
    VolumeFull,
    #[error("a write and fsync to the spool's volume has taken {ms} ms and goes on")]
    VolumeStalled { ms: u64 },
    #[error("the producer queue is at its limit")]
    QueueFull,
    #[error("Kafka has not been probed yet")]
    NotProbed,
    #[error(transparent)]
    Kafka(#[from] KafkaUnusable),
}

impl NotReady {
    pub fn code(&self) -> &'static str {
        match self {
            NotReady::Failed(_) => "failed",
            NotReady::ShuttingDown => "shutting_down",
            NotReady::SpoolFull { .. } => "spool_full",
            NotReady::VolumeFull => "volume_full",
            NotReady::VolumeStalled { .. } => "volume_stalled",
            NotReady::QueueFull => "queue_full",
            NotReady::NotProbed => "not_probed",
            NotReady::Kafka(KafkaUnusable::Unreachable(_) | KafkaUnusable::ProbeLost) => {
                "kafka_unreachable"
            }
            NotReady::Kafka(KafkaUnusable::TopicsMissing(_)) => "topics_missing",
            NotReady::Kafka(KafkaUnusable::Replacing) => "producer_replacing",
        }
    }
}

/// Reads the spool's status when readiness or metrics are asked for.
pub type SpoolProbe = Arc<dyn Fn() -> Option<SpoolStatus> + Send + Sync>;

/// What readiness is decided from.
pub struct Health {
    draining: AtomicBool,
    /// The last probe's verdict on Kafka: `None` until the first probe finishes.
    kafka: Mutex<Option<Result<(), KafkaUnusable>>>,
    queue_full: AtomicBool,
    fatal: Mutex<Option<Fatal>>,
    /// In spool mode, where the spool's status comes from: readiness then depends on its
    /// room, not on Kafka.
    spool: Option<SpoolProbe>,
    conditions: Arc<Conditions>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("draining", &self.draining)
            .field("kafka", &self.kafka)
            .field("spool", &self.spool_status())
            .finish_non_exhaustive()
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new(None, Arc::default())
    }
}

impl Health {
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Records a probe result; returns whether the verdict changed, so it is logged once.
    pub fn set_kafka(&self, verdict: Result<(), KafkaUnusable>) -> bool {
        let mut kafka = lock(&self.kafka);
        let changed = kafka.as_ref().map(Result::is_ok) != Some(verdict.is_ok());
        *kafka = Some(verdict);
        changed
    }

    pub fn set_queue_full(&self, full: bool) {
        self.queue_full.store(full, Ordering::SeqCst);
    }

    /// `spool` is given in spool mode; `conditions` are what readiness names.
    pub fn new(spool: Option<SpoolProbe>, conditions: Arc<Conditions>) -> Self {
        Self {
            draining: AtomicBool::new(false),
            kafka: Mutex::new(None),
            queue_full: AtomicBool::new(false),
            fatal: Mutex::new(None),
            spool,
            conditions,
        }
    }

    /// Every active condition, for the readiness body: its code, why, since when.
    pub fn conditions(&self) -> serde_json::Value {
        let active: Vec<serde_json::Value> = self
            .conditions
            .active()
            .iter()
            .map(|active| {
                let since = time::OffsetDateTime::from(active.since)
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default();
                json!({
                    "code": active.condition.code(),
                    "reason": active.reason,
                    "since": since,
                    "seconds": active.lasted().as_secs_f64(),
                })
            })
            .collect();
        serde_json::Value::Array(active)
    }

    /// The spool's status now, in spool mode.
    pub fn spool_status(&self) -> Option<SpoolStatus> {
        self.spool.as_ref().and_then(|probe| probe())
    }

    pub fn set_fatal(&self, reason: Fatal) {
        *lock(&self.fatal) = Some(reason);
    }

    /// `Ok` while the process can still do its job; else why it must be restarted.
    pub fn liveness(&self) -> Result<(), Fatal> {
        match &*lock(&self.fatal) {
            Some(reason) => Err(reason.clone()),
            None => Ok(()),
        }
    }

    /// `Ok` when the bridge should get traffic, else the reason it should not. In spool mode
    /// that is while the spool has room, whether Kafka is reachable or not.
    pub fn readiness(&self) -> Result<(), NotReady> {
        self.liveness().map_err(NotReady::Failed)?;
        if self.is_draining() {
            return Err(NotReady::ShuttingDown);
        }
        if let Some(spool) = self.spool_status() {
            if let Some(running) = spool.stalled_for {
                return Err(NotReady::VolumeStalled {
                    ms: running.as_millis() as u64,
                });
            }
            if spool.volume_full {
                return Err(NotReady::VolumeFull);
            }
            return match spool.has_room {
                true => Ok(()),
                false => Err(NotReady::SpoolFull {
                    bytes: spool.bytes,
                    limit: spool.limit,
                }),
            };
        }
        if self.queue_full.load(Ordering::SeqCst) {
            return Err(NotReady::QueueFull);
        }
        match &*lock(&self.kafka) {
            None => Err(NotReady::NotProbed),
            Some(verdict) => verdict.clone().map_err(NotReady::Kafka),
        }
    }

    /// What readiness reports besides its verdict: in spool mode, Kafka's state and the
    /// spool's, since the bridge is ready while Kafka is away.
    pub fn details(&self) -> Option<serde_json::Value> {
        let spool = self.spool_status()?;
        let kafka = match &*lock(&self.kafka) {
            None => "not probed yet".to_owned(),
            Some(Ok(())) => "reachable".to_owned(),
            Some(Err(unusable)) => unusable.to_string(),
        };
        Some(json!({
            "mode": "spool",
            "kafka": kafka,
            "spool": {
                "records": spool.records,
                "bytes": spool.bytes,
                "limitBytes": spool.limit,
                "oldestRecordAgeSeconds": spool.oldest_age.as_secs_f64(),
                "forwarded": spool.forwarded,
                "forwardError": spool.forward_error,
                "setAside": {
                    "toDeadLetterTopic": spool.set_aside_to_deadletter,
                    "toQuarantine": spool.set_aside_to_quarantine,
                    "last": spool.last_set_aside,
                },
                "damagedSegments": spool.damaged_segments,
                "quarantineBytes": spool.quarantine_bytes,
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};

    #[test]
    fn ready_only_when_kafka_is_probed_usable_and_not_draining() {
        let health = Health::default();
        assert!(
            health.readiness().is_err(),
            "not ready before the first probe"
        );
        assert!(health.set_kafka(Ok(())), "first verdict is a change");
        assert_eq!(health.readiness(), Ok(()));
        assert!(!health.set_kafka(Ok(())), "same verdict is not a change");
        assert!(health.set_kafka(Err(KafkaUnusable::TopicsMissing(vec!["a".into()]))));
        assert_eq!(
            health.readiness().map_err(|e| (e.code(), e.to_string())),
            Err(("topics_missing", "topics do not exist: a".to_owned()))
        );
        health.set_kafka(Ok(()));
        health.set_queue_full(true);
        assert!(health.readiness().is_err());
        health.set_queue_full(false);
        health.start_draining();
        assert_eq!(health.readiness(), Err(NotReady::ShuttingDown));
        assert_eq!(health.liveness(), Ok(()), "draining is alive");
    }

    #[test]
    fn in_spool_mode_ready_while_the_spool_has_room_whatever_kafka_says() {
        let status = Arc::new(Mutex::new(SpoolStatus {
            has_room: true,
            limit: 100,
            ..SpoolStatus::default()
        }));
        let source = status.clone();
        let health = Health::new(
            Some(Arc::new(move || {
                Some(source.lock().expect("status").clone())
            })),
            Arc::default(),
        );
        assert_eq!(health.readiness(), Ok(()), "no need to wait for Kafka");
        health.set_kafka(Err(KafkaUnusable::Unreachable(KafkaError::MetadataFetch(
            RDKafkaErrorCode::AllBrokersDown,
        ))));
        assert_eq!(health.readiness(), Ok(()));
        let details = health.details().expect("spool details");
        assert_eq!(details["mode"], "spool");
        assert!(
            details["kafka"]
                .as_str()
                .is_some_and(|k| k.contains("All broker connections are down")),
            "{details}"
        );
        status.lock().expect("status").has_room = false;
        let full = health.readiness().expect_err("full");
        assert_eq!(full.code(), "spool_full");
        assert!(full.to_string().contains("spool is full"), "{full}");
        status.lock().expect("status").has_room = true;
        health.start_draining();
        assert_eq!(health.readiness(), Err(NotReady::ShuttingDown));
    }

    #[test]
    fn a_fatal_producer_error_fails_liveness_and_readiness() {
        let health = Health::default();
        health.set_kafka(Ok(()));
        health.set_fatal(Fatal::Spool(crate::spool::SpoolFatal::WriterStopped));
        assert!(health.liveness().is_err());
        assert!(health.readiness().is_err());
    }
}
