//! What the request path, the writer thread and the forwarder share, and what readiness and
//! metrics see of it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::forward;
use super::now_ms;
use super::segments::{self, Position};
use crate::conditions::{Condition, Conditions};
use crate::locks::lock;
use crate::publish::{PublishError, StorageError};

/// What the probe, readiness and metrics see of the spool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolStatus {
    /// Records accepted and not yet acknowledged by Kafka.
    pub records: u64,
    /// Bytes of the spool's files on disk, the quarantine's included, counted against the limit.
    pub bytes: u64,
    /// Bytes of the quarantine's files: records set aside there, and damaged segments.
    pub quarantine_bytes: u64,
    pub limit: u64,
    /// Age of the oldest record not yet acknowledged by Kafka.
    pub oldest_age: Duration,
    /// Records acknowledged by Kafka since start.
    pub forwarded: u64,
    /// Whether an event of the largest allowed size still fits.
    pub has_room: bool,
    /// The volume refused the last write for space (and no probe since found room).
    pub volume_full: bool,
    /// How long the group commit under way has taken, when it has taken longer than the
    /// publish deadline: every request waiting for it is answered 503.
    pub stalled_for: Option<Duration>,
    /// Why forwarding is held up, when Kafka refused a record.
    pub forward_error: Option<String>,
    /// Forwarding failures since start, by Kafka error code (a bounded set).
    pub forward_failures: Vec<(String, u64)>,
    /// Records Kafka refused for good, set aside since start: to the dead-letter topic, and to
    /// the quarantine when that topic refused them too.
    pub set_aside_to_deadletter: u64,
    pub set_aside_to_quarantine: u64,
    /// The last record set aside, and why.
    pub last_set_aside: Option<String>,
    /// Damaged segments recovery moved to the quarantine at start.
    pub damaged_segments: u64,
    /// Group commits (one write and fdatasync each) since start, and the time they took.
    pub commits: u64,
    pub commit_time: Duration,
}

/// State the request path, the writer thread and the forwarder share.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) limit: u64,
    pub(super) largest_event: u64,
    /// Bytes on disk plus bytes reserved by requests waiting for the writer.
    pub(super) used: AtomicU64,
    /// The volume refused the last write for space; cleared by the next write that succeeds
    /// or when forwarding deletes a segment.
    pub(super) disk_full: AtomicBool,
    /// Damaged segments recovery moved to the quarantine since start.
    pub(super) set_aside_segments: AtomicU64,
    pub(super) records: AtomicU64,
    pub(super) forwarded: AtomicU64,
    pub(super) commits: AtomicU64,
    pub(super) commit_micros: AtomicU64,
    /// Accepted-at (ms since the epoch) of the oldest record not yet acknowledged; 0 if none.
    pub(super) oldest_ms: AtomicU64,
    /// Set when a write or fsync failed: the log's state on disk is unknown until a restart
    /// recovers it, so nothing more is accepted.
    pub(super) failed: Mutex<Option<StorageError>>,
    /// Set when the forwarder met damage it must not skip: only a restart's recovery (which
    /// refuses or sets the segment aside) goes on from there.
    pub(super) forwarding_failed: Mutex<Option<StorageError>>,
    pub(super) forward_error: Mutex<Option<String>>,
    pub(super) forward_failures: Mutex<Vec<(String, u64)>>,
    pub(super) set_aside_to_deadletter: AtomicU64,
    pub(super) set_aside_to_quarantine: AtomicU64,
    /// Bytes of the quarantine's files, counted in `used` too.
    pub(super) quarantine_bytes: AtomicU64,
    pub(super) last_set_aside: Mutex<Option<String>>,
    /// The end of what is durable; the forwarder follows it.
    pub(super) committed: watch::Sender<Position>,
    /// The position after the last record Kafka acknowledged.
    pub(super) acknowledged: watch::Sender<Position>,
    pub(super) conditions: Arc<Conditions>,
    /// Bytes of frames handed to the writer and not yet written; bounded, so that requests
    /// which gave up on a stalled volume cannot pile their records up in memory.
    pub(super) queued: AtomicU64,
    /// Appends handed to the writer and not yet answered.
    pub(super) unanswered: AtomicU64,
    /// When the group commit under way started (ms since the epoch); 0 when none is.
    pub(super) commit_started_ms: AtomicU64,
    /// Wakes the forwarder out of a backoff: readiness found Kafka usable again.
    pub(super) kick: Notify,
    /// Shutdown's deadline passed with the writer still at work: it starts no more writes,
    /// since a thread inside an fsync the volume never answers holds the process's exit.
    pub(super) abandoned: AtomicBool,
}

impl Shared {
    /// The state after recovery found `recovered`; the writer's log ends at `end`.
    pub(super) fn new(
        limit: u64,
        largest_event: u64,
        recovered: &segments::Recovered,
        end: Position,
        conditions: Arc<Conditions>,
    ) -> Self {
        Self {
            limit,
            largest_event,
            used: AtomicU64::new(recovered.bytes),
            disk_full: AtomicBool::new(false),
            set_aside_segments: AtomicU64::new(recovered.set_aside_segments),
            records: AtomicU64::new(recovered.records),
            forwarded: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            commit_micros: AtomicU64::new(0),
            oldest_ms: AtomicU64::new(0),
            failed: Mutex::new(None),
            forwarding_failed: Mutex::new(None),
            forward_error: Mutex::new(None),
            forward_failures: Mutex::new(Vec::new()),
            set_aside_to_deadletter: AtomicU64::new(0),
            set_aside_to_quarantine: AtomicU64::new(0),
            quarantine_bytes: AtomicU64::new(0),
            last_set_aside: Mutex::new(None),
            committed: watch::channel(end).0,
            acknowledged: watch::channel(recovered.start).0,
            conditions,
            queued: AtomicU64::new(0),
            unanswered: AtomicU64::new(0),
            commit_started_ms: AtomicU64::new(0),
            kick: Notify::new(),
            abandoned: AtomicBool::new(false),
        }
    }

    /// The volume refused a write for space; `why` says how.
    pub(super) fn volume_full(&self, why: &std::io::Error) {
        self.disk_full.store(true, Ordering::Release);
        self.conditions.raise(
            Condition::VolumeFull,
            format!("the spool's volume refused a write for space ({why}); answering 503 spool_full until it has room"),
        );
    }

    /// A write went through, a probe found room, or forwarding freed space.
    pub(super) fn volume_has_room(&self) {
        if self.disk_full.swap(false, Ordering::AcqRel) {
            self.conditions.clear(Condition::VolumeFull);
        }
    }

    /// How long the group commit under way has run, if one is.
    pub(super) fn commit_running_for(&self) -> Option<Duration> {
        match self.commit_started_ms.load(Ordering::Acquire) {
            0 => None,
            started => Some(Duration::from_millis(now_ms().saturating_sub(started))),
        }
    }

    pub(super) fn failure(&self) -> Option<StorageError> {
        lock(&self.failed).clone()
    }

    pub(super) fn fail(&self, failure: StorageError) {
        tracing::error!(
            error = %failure,
            "Spool write failed; no more events are accepted until a restart"
        );
        *lock(&self.failed) = Some(failure);
    }

    pub(super) fn fail_forwarding(&self, unreadable: StorageError) {
        let mut failed = lock(&self.forwarding_failed);
        if failed.is_none() {
            tracing::error!(
                error = %unreadable,
                "Spool forwarding stopped; liveness fails so a restart recovers"
            );
            *failed = Some(unreadable);
        }
    }

    /// Forwarding is held up for `reason` (readiness' `forwardError`), and by `condition`
    /// when it is one an operator must see.
    pub(super) fn hold_forwarding(&self, condition: Option<Condition>, reason: String) {
        if let Some(condition) = condition {
            self.conditions.raise(condition, reason.clone());
        }
        *lock(&self.forward_error) = Some(reason);
    }

    /// Forwarding moves again: Kafka took a record, or one was set aside.
    pub(super) fn forwarding_moves(&self) {
        if lock(&self.forward_error).take().is_some() {
            tracing::info!("Kafka takes spooled records again");
        }
        self.conditions.clear(Condition::ForwardingHeld);
        self.conditions.clear(Condition::SetAsideFailing);
    }

    pub(super) fn count_forward_failure(&self, refused: &crate::publish::refusal::Refused) {
        let code = refused.code_name();
        let mut failures = lock(&self.forward_failures);
        match failures.iter_mut().find(|(known, _)| *known == code) {
            Some((_, count)) => *count += 1,
            None => failures.push((code, 1)),
        }
    }

    pub(super) fn count_set_aside(&self, to: forward::SetAsideTo, reason: String) {
        let counter = match to {
            forward::SetAsideTo::DeadLetterTopic => &self.set_aside_to_deadletter,
            forward::SetAsideTo::Quarantine => &self.set_aside_to_quarantine,
        };
        counter.fetch_add(1, Ordering::AcqRel);
        *lock(&self.last_set_aside) = Some(reason);
    }

    /// Reserves room for `bytes`, or says the spool is full.
    pub(super) fn reserve(&self, bytes: u64) -> Result<(), PublishError> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + bytes <= self.limit).then_some(used + bytes)
            })
            .map(drop)
            .map_err(|_| PublishError::DiskFull { limit: self.limit })
    }

    /// Never below zero: a miscount must not make the spool look 18 EB full.
    pub(super) fn release(&self, bytes: u64) {
        saturating_sub(&self.used, bytes);
    }

    /// The quarantine's files grew by `bytes`: they count against the limit like segments.
    pub(super) fn grow_quarantine(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::AcqRel);
        self.quarantine_bytes.fetch_add(bytes, Ordering::AcqRel);
    }

    pub(super) fn shrink_quarantine(&self, bytes: u64) {
        self.release(bytes);
        saturating_sub(&self.quarantine_bytes, bytes);
    }
}

fn saturating_sub(counter: &AtomicU64, bytes: u64) {
    let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
        Some(n.saturating_sub(bytes))
    });
}
