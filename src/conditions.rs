//! States that stop the bridge from accepting or forwarding events while a dependency
//! misbehaves: a full or stalled volume, a set-aside that keeps failing, a topic missing, a
//! partition away. Each has a stable code. Whoever detects one raises it and whoever sees its
//! cause gone clears it; each start and each end is logged once and counted, and readiness
//! names every active one.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// One state that stops acceptance or forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Condition {
    /// Kafka answers no metadata request.
    KafkaUnreachable,
    /// A configured topic does not exist.
    TopicsMissing,
    /// One or more partitions have no leader, or take no records while others do.
    PartitionUnavailable,
    /// The producer's queue is at its limit.
    QueueFull,
    /// The spool holds `BRIDGE_SPOOL_MAX_BYTES`.
    SpoolFull,
    /// The spool's volume refused a write for space.
    VolumeFull,
    /// A write and fsync to the spool's volume has taken longer than the publish deadline.
    VolumeStalled,
    /// Kafka refuses the spool's oldest record for a reason an operator must mend.
    ForwardingHeld,
    /// A record Kafka refused for good can be neither dead-lettered nor quarantined.
    SetAsideFailing,
}

impl Condition {
    pub const ALL: [Condition; 9] = [
        Condition::KafkaUnreachable,
        Condition::TopicsMissing,
        Condition::PartitionUnavailable,
        Condition::QueueFull,
        Condition::SpoolFull,
        Condition::VolumeFull,
        Condition::VolumeStalled,
        Condition::ForwardingHeld,
        Condition::SetAsideFailing,
    ];

    /// The stable code readiness, metrics and logs name it by.
    pub fn code(self) -> &'static str {
        match self {
            Condition::KafkaUnreachable => "kafka_unreachable",
            Condition::TopicsMissing => "topics_missing",
            Condition::PartitionUnavailable => "partition_unavailable",
            Condition::QueueFull => "queue_full",
            Condition::SpoolFull => "spool_full",
            Condition::VolumeFull => "volume_full",
            Condition::VolumeStalled => "volume_stalled",
            Condition::ForwardingHeld => "forwarding_held",
            Condition::SetAsideFailing => "set_aside_failing",
        }
    }

    fn index(self) -> usize {
        Condition::ALL
            .iter()
            .position(|c| *c == self)
            .unwrap_or_default()
    }
}

/// An active condition, as readiness shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Active {
    pub condition: Condition,
    /// The latest reason, in words.
    pub reason: String,
    pub since: SystemTime,
    started: Instant,
}

impl Active {
    pub fn lasted(&self) -> Duration {
        self.started.elapsed()
    }
}

/// The conditions active now, and how often each started.
#[derive(Debug, Default)]
pub struct Conditions {
    active: Mutex<Vec<Active>>,
    starts: [AtomicU64; Condition::ALL.len()],
}

impl Conditions {
    /// `condition` holds, for `reason`. Logged when it starts; later calls only update the
    /// reason.
    pub fn raise(&self, condition: Condition, reason: impl Into<String>) {
        let reason = reason.into();
        let mut active = self.lock();
        if let Some(known) = active.iter_mut().find(|a| a.condition == condition) {
            known.reason = reason;
            return;
        }
        self.starts[condition.index()].fetch_add(1, Ordering::AcqRel);
        tracing::warn!(condition = condition.code(), reason = %reason, "Condition started");
        active.push(Active {
            condition,
            reason,
            since: SystemTime::now(),
            started: Instant::now(),
        });
    }

    /// `condition` no longer holds. Logged once, with how long it lasted.
    pub fn clear(&self, condition: Condition) {
        let mut active = self.lock();
        if let Some(at) = active.iter().position(|a| a.condition == condition) {
            let ended = active.remove(at);
            tracing::info!(
                condition = condition.code(),
                lasted_ms = ended.lasted().as_millis() as u64,
                "Condition ended"
            );
        }
    }

    /// Raises `condition` with `reason` when there is one, else clears it.
    pub fn set(&self, condition: Condition, reason: Option<String>) {
        match reason {
            Some(reason) => self.raise(condition, reason),
            None => self.clear(condition),
        }
    }

    pub fn is_active(&self, condition: Condition) -> bool {
        self.lock().iter().any(|a| a.condition == condition)
    }

    /// Every active condition, oldest first.
    pub fn active(&self) -> Vec<Active> {
        self.lock().clone()
    }

    /// How many times `condition` started since the process did.
    pub fn starts(&self, condition: Condition) -> u64 {
        self.starts[condition.index()].load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Active>> {
        crate::locks::lock(&self.active)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_starts_once_updates_its_reason_and_ends_once() {
        let conditions = Conditions::default();
        conditions.raise(Condition::VolumeFull, "no space");
        conditions.raise(Condition::VolumeFull, "still no space");
        assert_eq!(conditions.starts(Condition::VolumeFull), 1);
        let active = conditions.active();
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].reason, "still no space");
        conditions.clear(Condition::VolumeFull);
        conditions.clear(Condition::VolumeFull);
        assert!(!conditions.is_active(Condition::VolumeFull));
        conditions.set(Condition::VolumeFull, Some("again".into()));
        assert_eq!(conditions.starts(Condition::VolumeFull), 2);
        assert_eq!(conditions.starts(Condition::SpoolFull), 0);
    }

    #[test]
    fn codes_are_distinct() {
        let mut codes: Vec<&str> = Condition::ALL.iter().map(|c| c.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Condition::ALL.len());
    }
}
