//! The forwarder: carries the spool to Kafka in log order, on a thread of its own.
//!
//! Up to a window of records is handed to one producer generation at once, in log order, and
//! progress moves only as the oldest of them is acknowledged. The producer is gapless
//! (`enable.gapless.guarantee`): a partition's records land in the order they were handed over
//! or the producer fails as a whole. On any failure the generation is replaced (every record it
//! held resolved, the producer destroyed) and sending starts again from the oldest
//! unacknowledged record, skipping those Kafka acknowledged meanwhile: a record is sent again
//! only if it was not acknowledged, and a chat's first occurrences always follow log order.
//!
//! A record Kafka refuses for good is sent once more on its own (a refusal may concern the
//! whole batch it travelled in); refused again, it is set aside (see [`set_aside`]) and
//! forwarding goes on behind it. Errors an operator must fix keep it at the head, retried with
//! backoff, as does a set-aside that fails; readiness names what holds forwarding up.
//!
//! The loop is [`Forwarder::run`]: fill the window, wait for what wakes it, settle what Kafka
//! reported, and recover from a failure.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use super::Shared;
use super::segments::{self, Entry, Position, SegmentReader};
use crate::conditions::Condition;
use crate::publish::kafka::{Delivery, KafkaPublisher, SendError};
use crate::publish::refusal::{Refused, Verdict};
use crate::publish::{PublishError, Record, StorageError};
use rdkafka::error::RDKafkaErrorCode;

mod set_aside;
mod window;

pub(crate) use set_aside::SetAsideTo;
use set_aside::{NotSetAside, SetAsideFailure};
use window::{Pending, Window};

/// Records handed to the producer and not yet acknowledged, at most.
pub const WINDOW_RECORDS: usize = 4096;
pub const WINDOW_BYTES: usize = 32 << 20;
/// How often progress is made durable and fully forwarded segments are deleted: a crash sends
/// again what was acknowledged since (plus the window in flight). A checkpoint costs no fsync.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The longest pause after a producer failure that a new producer mends by itself.
const RETRY_MAX_BACKOFF: Duration = Duration::from_secs(1);
const SEND_FAILURE: &str = "the spool forwarder could not hand a record over";
/// The oldest record waiting this long while Kafka acknowledges records behind it: its
/// partition is away (a leader down, too few in-sync replicas), and readiness says so.
const PARTITION_AWAY_AFTER: Duration = Duration::from_secs(5);

/// What the forwarder needs of Kafka: generations of a producer. [`KafkaPublisher`] is the one
/// implementation; the model-based test drives a scripted one.
pub(crate) trait Sink: Send + Sync + 'static {
    /// The generation records go to now; `None` while one is being replaced.
    fn generation(&self) -> Option<u64>;
    /// Hands `record` to generation `generation`'s producer, in order.
    fn send(&self, record: &Record, generation: u64) -> Result<Delivery, SendError>;
    /// Resolves every record of `generation`, destroys its producer and starts the next one;
    /// nothing if that generation is already gone. Blocks.
    fn replace(&self, generation: u64, why: &str);
    /// Changes whenever a record is not delivered.
    fn failures(&self) -> watch::Receiver<u64>;
}

impl Sink for KafkaPublisher {
    fn generation(&self) -> Option<u64> {
        KafkaPublisher::generation(self)
    }

    fn send(&self, record: &Record, generation: u64) -> Result<Delivery, SendError> {
        KafkaPublisher::send(self, record, Some(generation)).map(|(_, delivery)| delivery)
    }

    fn replace(&self, generation: u64, why: &str) {
        KafkaPublisher::replace(self, generation, why);
    }

    fn failures(&self) -> watch::Receiver<u64> {
        KafkaPublisher::failures(self)
    }
}

/// Where the forwarder's records go, and what it does with those Kafka refuses for good.
pub(super) struct Forwarder<S: Sink> {
    dir: PathBuf,
    shared: Arc<Shared>,
    sink: Arc<S>,
    deadletter: Arc<str>,
    max_record_bytes: usize,
    quarantine: Arc<super::quarantine::Quarantine>,
    start: Position,
}

/// The forwarder at work: its place in the log and what Kafka holds of it.
struct Forwarding<S: Sink> {
    to: Forwarder<S>,
    reader: SegmentReader,
    window: Window,
    /// The position after the last record acknowledged in log order.
    acknowledged: Position,
    checkpointed: Position,
    /// Records behind the oldest unacknowledged one that Kafka acknowledged before their
    /// producer was replaced: passed over, never sent again.
    acknowledged_ahead: BTreeSet<Position>,
    backoff: Duration,
    /// Forwarding was held up (readiness says why) and has not moved since.
    held: bool,
    /// After a refusal for good: records up to here go one at a time, so that the one Kafka
    /// refuses is known.
    careful_until: Option<Position>,
    /// The head record was refused for good on its own: set it aside, do not send it.
    poison_head: Option<Refused>,
    /// The dead-letter topic refused the head record's letter for good: it goes straight to
    /// the quarantine on the next attempt.
    letter_refused: Option<Refused>,
    /// The oldest forwarded segment a checkpoint could not delete: tried again at the next.
    undeleted: Option<u64>,
    /// The oldest record of the window, and since when it has been the oldest.
    front_since: Option<(Position, Instant)>,
    last_tick: Instant,
    stop: oneshot::Receiver<()>,
    committed: watch::Receiver<Position>,
    writer_open: bool,
    failures: watch::Receiver<u64>,
    tick: tokio::time::Interval,
}

/// What woke the forwarder while it waited.
enum WakeUp {
    Stop,
    /// The oldest record's outcome came.
    FrontReported,
    /// A record somewhere in the window was not delivered: its generation is done for.
    NotDelivered,
    /// The writer made more records durable.
    Committed,
    Tick,
}

/// Why forwarding stopped making progress, and how to go on.
enum Failure {
    /// The generation failed, with a reason when it is not in the window's outcomes.
    Window(Option<String>),
    /// The head record cannot be read: only a restart's recovery goes on from there.
    Unreadable(StorageError),
    /// Nothing of the window is outstanding and the head record could not be handed over.
    Send {
        reason: String,
        refused: Option<Refused>,
    },
    /// The head record, refused for good, could not be set aside yet.
    SetAside(set_aside::SetAsideError),
}

/// How a step ended: go on, or stop as told.
type Step = Result<(), Stopped>;
struct Stopped;

impl<S: Sink> Forwarder<S> {
    pub(super) fn new(
        dir: &Path,
        start: Position,
        shared: Arc<Shared>,
        sink: Arc<S>,
        quarantine: Arc<super::quarantine::Quarantine>,
        deadletter: Arc<str>,
        max_record_bytes: usize,
    ) -> Self {
        Self {
            dir: dir.to_owned(),
            shared,
            sink,
            deadletter,
            max_record_bytes,
            quarantine,
            start,
        }
    }

    /// Forwards until `stop` fires, then checkpoints what was acknowledged.
    pub(super) fn run_until(self, stop: oneshot::Receiver<()>) {
        match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(runtime) => runtime.block_on(self.run(stop)),
            Err(error) => self.shared.fail(StorageError::from(&error)),
        }
    }

    pub(super) async fn run(self, stop: oneshot::Receiver<()>) {
        let mut forwarding = Forwarding::new(self, stop);
        while forwarding.step().await.is_ok() {}
        forwarding.window.clear();
        forwarding.checkpoint();
    }
}

impl<S: Sink> Forwarding<S> {
    fn new(to: Forwarder<S>, stop: oneshot::Receiver<()>) -> Self {
        let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            reader: SegmentReader::new(&to.dir, to.start),
            window: Window::default(),
            acknowledged: to.start,
            checkpointed: to.start,
            acknowledged_ahead: BTreeSet::new(),
            backoff: FIRST_BACKOFF,
            held: false,
            careful_until: None,
            poison_head: None,
            letter_refused: None,
            front_since: None,
            undeleted: None,
            last_tick: Instant::now(),
            stop,
            committed: to.shared.committed.subscribe(),
            writer_open: true,
            failures: to.sink.failures(),
            tick,
            to,
        }
    }

    /// One turn of the loop: fill the window, wait, and recover if something failed.
    async fn step(&mut self) -> Step {
        let failure = match self.fill().await? {
            Some(failure) => Some(failure),
            None => self.wait().await?,
        };
        match failure {
            Some(failure) => self.recover(failure).await,
            None => Ok(()),
        }
    }

    /// Hands records to the producer, in log order, until the window is full or the log read.
    async fn fill(&mut self) -> Result<Option<Failure>, Stopped> {
        let end = *self.committed.borrow_and_update();
        if self
            .careful_until
            .is_some_and(|until| self.acknowledged >= until)
        {
            self.careful_until = None;
        }
        if self.window.pending.is_empty() {
            self.window.generation = self.to.sink.generation();
            self.failures.mark_unchanged();
        }
        while let Some(generation) = self.window.generation {
            if self.window.is_full(self.careful_until.is_some()) {
                break;
            }
            let before = self.reader.position();
            let (entry, after) = match self.reader.next(end) {
                Ok(Some(next)) => next,
                Ok(None) => break,
                Err(error) => return Ok(Some(Failure::Unreadable(StorageError::from(&error)))),
            };
            if let Some(refused) = self.poison_head.take() {
                match self
                    .set_aside_head(entry, after, refused, generation)
                    .await?
                {
                    None => continue,
                    Some(failure) => {
                        self.reader.seek(before);
                        return Ok(Some(failure));
                    }
                }
            }
            if self.acknowledged_ahead.remove(&after) {
                let pending = Pending::acknowledged_before(after, entry.accepted_ms, &entry.record);
                self.window.push(pending, false);
                continue;
            }
            match self.to.sink.send(&entry.record, generation) {
                Ok(delivery) => {
                    let pending = Pending::sent(after, entry.accepted_ms, &entry.record, delivery);
                    self.window.push(pending, true);
                }
                Err(error) => {
                    self.reader.seek(before);
                    // With records outstanding, the window resolves first and shows the failure.
                    if !self.window.pending.is_empty() {
                        break;
                    }
                    // Someone else replaced the producer (the probe, a dead-letter refusal):
                    // nothing of the window is in the old one, so go on with the new one.
                    if matches!(error, SendError::Replaced) {
                        let current = self.to.sink.generation();
                        if current.is_some() && current != Some(generation) {
                            self.window.generation = current;
                            self.failures.mark_unchanged();
                            continue;
                        }
                    }
                    return Ok(Some(self.send_failure(error)));
                }
            }
        }
        self.note_oldest();
        Ok(None)
    }

    /// Sets the head record aside; the failure to report when it could not be.
    async fn set_aside_head(
        &mut self,
        entry: Entry,
        after: Position,
        refused: Refused,
        generation: u64,
    ) -> Result<Option<Failure>, Stopped> {
        let by_topic = self.letter_refused.take();
        match self
            .to
            .set_aside(entry, &refused, by_topic, generation, &mut self.stop)
            .await
        {
            Ok(()) => {
                self.acknowledged = after;
                self.to.shared.records.fetch_sub(1, Ordering::AcqRel);
                self.to.shared.acknowledged.send_replace(after);
                self.moved();
                // A refusal by the dead-letter topic replaced the producer; the window is
                // empty, so the records behind go to the new one.
                self.window.generation = self.to.sink.generation();
                self.failures.mark_unchanged();
                Ok(None)
            }
            Err(NotSetAside::Stopping) => Err(Stopped),
            Err(NotSetAside::Failed(error)) => {
                self.poison_head = Some(refused);
                if let SetAsideFailure::Quarantine { by_topic, .. } = &error.why {
                    self.letter_refused = Some(by_topic.clone());
                }
                Ok(Some(Failure::SetAside(error)))
            }
        }
    }

    /// What readiness shows of the oldest record; an empty window with everything read is
    /// progress too (the reader may have passed empty segments).
    fn note_oldest(&mut self) {
        let shared = &self.to.shared;
        match self.window.pending.front() {
            Some(oldest) => shared
                .oldest_ms
                .store(oldest.accepted_ms, Ordering::Release),
            None => {
                shared.oldest_ms.store(0, Ordering::Release);
                if self.reader.position() > self.acknowledged {
                    self.acknowledged = self.reader.position();
                    shared.acknowledged.send_replace(self.acknowledged);
                }
            }
        }
    }

    /// Waits for the next thing that moves forwarding, and takes it in.
    async fn wait(&mut self) -> Result<Option<Failure>, Stopped> {
        // By the clock, not only the tick: a forwarder that always has an outcome or a commit
        // to take is rarely left to see its timer fire, and would keep every drained segment.
        if self.last_tick.elapsed() >= CHECKPOINT_EVERY {
            self.on_tick();
        }
        let waiting = !self.window.pending.is_empty();
        let wake_up = tokio::select! {
            biased;
            _ = &mut self.stop => WakeUp::Stop,
            _ = self.tick.tick() => WakeUp::Tick,
            () = async {
                match self.window.pending.front_mut() {
                    Some(front) => front.outcome().await,
                    None => std::future::pending().await,
                }
            }, if waiting => WakeUp::FrontReported,
            _ = self.failures.changed(), if waiting => WakeUp::NotDelivered,
            changed = self.committed.changed(), if self.writer_open => {
                // The writer is gone on shutdown; nothing more will be committed.
                self.writer_open = changed.is_ok();
                WakeUp::Committed
            }
        };
        match wake_up {
            WakeUp::Stop => return Err(Stopped),
            WakeUp::Committed => {}
            WakeUp::Tick => self.on_tick(),
            WakeUp::NotDelivered => return Ok(Some(Failure::Window(None))),
            WakeUp::FrontReported => {
                self.settle();
                if self.window.refused.is_some() {
                    return Ok(Some(Failure::Window(None)));
                }
            }
        }
        Ok(None)
    }

    /// Every 200 ms: progress made durable, forwarded segments deleted, the front watched.
    fn on_tick(&mut self) {
        self.last_tick = Instant::now();
        self.checkpoint();
        self.watch_front();
    }

    /// Takes in what Kafka acknowledged at the front of the window.
    fn settle(&mut self) {
        let done = self.window.take_acknowledged(&mut self.acknowledged);
        self.window.settled();
        if done == 0 {
            return;
        }
        let shared = &self.to.shared;
        // Counted as forwarded before no longer waiting, so whoever sees the spool empty also
        // sees every record forwarded.
        shared.forwarded.fetch_add(done, Ordering::AcqRel);
        shared.records.fetch_sub(done, Ordering::AcqRel);
        shared.acknowledged.send_replace(self.acknowledged);
        if !self.acknowledged_ahead.is_empty() {
            let acknowledged = self.acknowledged;
            self.acknowledged_ahead
                .retain(|after| *after > acknowledged);
        }
        self.moved();
    }

    /// Forwarding moved: whatever held it up is over.
    fn moved(&mut self) {
        if self.held {
            self.held = false;
            self.backoff = FIRST_BACKOFF;
            self.to.shared.forwarding_moves();
        }
    }

    /// Names a partition that takes nothing while others take records (readiness), and clears
    /// it once the oldest record moves.
    fn watch_front(&mut self) {
        let conditions = &self.to.shared.conditions;
        let Some(front) = self.window.pending.front() else {
            self.front_since = None;
            conditions.clear(Condition::PartitionUnavailable);
            return;
        };
        let (topic, key, after) = (front.topic.clone(), front.key.clone(), front.after);
        match self.front_since {
            Some((position, since)) if position == after => {
                if since.elapsed() < PARTITION_AWAY_AFTER {
                    return;
                }
                if !self.window.front_waits_while_others_land() {
                    conditions.clear(Condition::PartitionUnavailable);
                } else {
                    conditions.raise(
                        Condition::PartitionUnavailable,
                        format!(
                            "the partition of {topic} that key {key} goes to has taken nothing for {} s while others take records (a leader down, or too few in-sync replicas)",
                            since.elapsed().as_secs()
                        ),
                    );
                }
            }
            _ => {
                self.front_since = Some((after, Instant::now()));
                conditions.clear(Condition::PartitionUnavailable);
            }
        }
    }

    /// After a failure: the generation replaced, the window resolved, and what to send again
    /// decided; then a backoff unless sending again at once is what finds a refused record.
    async fn recover(&mut self, failure: Failure) -> Step {
        let (reason, refused) = match failure {
            Failure::SetAside(error) => {
                let reason = error.to_string();
                return self.hold_up(Some(Condition::SetAsideFailing), reason).await;
            }
            Failure::Unreadable(error) => {
                // Never skipped: a restart's recovery refuses or sets the segment aside.
                let reason = format!("the spool cannot be read: {error}");
                self.to.shared.fail_forwarding(error);
                (Some(reason), None)
            }
            Failure::Send { reason, refused } => (Some(reason), refused),
            Failure::Window(reason) => (reason, None),
        };
        let alone = self.window.sent == 1;
        let refused = refused.or_else(|| self.replace_generation(reason.as_deref()));
        if let Some(refused) = &refused {
            self.to.shared.count_forward_failure(refused);
            if refused.verdict() == Verdict::Poison && self.poison_head.is_none() {
                if self.careful_until.is_some() && alone {
                    // Refused on its own: the record itself is the cause.
                    self.poison_head = Some(refused.clone());
                } else {
                    self.careful_until = Some(self.window.end.max(self.acknowledged));
                }
                return Ok(());
            }
        }
        if self.poison_head.is_some() {
            return Ok(());
        }
        let operator = refused
            .as_ref()
            .is_some_and(|r| r.verdict() == Verdict::Operator);
        let reason = match (reason, refused) {
            (Some(reason), _) => reason,
            (None, Some(refused)) => format!("Kafka refused a spooled record: {refused}"),
            (None, None) => return Ok(()),
        };
        if operator || reason.starts_with(SEND_FAILURE) {
            self.hold_up(Some(Condition::ForwardingHeld), reason).await
        } else {
            // A producer that was purged, fenced or failed: a new one goes on by itself, so
            // readiness names nothing (what keeps Kafka away has its own condition) and the
            // pause stays short, or the healthy partitions would wait with the stuck one.
            self.backoff = self.backoff.min(RETRY_MAX_BACKOFF);
            self.hold_up(None, reason).await
        }
    }

    /// Replaces the window's generation once every record it holds is resolved, keeps what
    /// Kafka acknowledged, and goes back to the oldest unacknowledged record. Returns the
    /// refusal that matters most among the window's outcomes.
    fn replace_generation(&mut self, reason: Option<&str>) -> Option<Refused> {
        if let Some(generation) = self.window.generation {
            let why = reason.unwrap_or("a spooled record was not delivered");
            self.to.sink.replace(generation, why);
        }
        self.settle();
        let acknowledged: Vec<Position> = self.window.acknowledged_behind_front().collect();
        self.acknowledged_ahead.extend(acknowledged);
        let refused = self.window.worst_refusal();
        self.window.clear();
        self.reader.seek(self.acknowledged);
        self.failures.mark_unchanged();
        refused
    }

    /// A failure to hand a record over, with nothing of the window outstanding.
    fn send_failure(&mut self, error: SendError) -> Failure {
        let reason = format!("{SEND_FAILURE}: {error}");
        let refused = match error {
            // The door keeps such records out; one written by an older version is set aside.
            SendError::Publish(PublishError::TooLarge { .. }) => {
                let refused = Refused::new(RDKafkaErrorCode::MessageSizeTooLarge, reason.clone());
                self.poison_head = Some(refused.clone());
                Some(refused)
            }
            _ => None,
        };
        Failure::Send { reason, refused }
    }

    /// Reports why forwarding is held up and waits out the backoff, which doubles for the next
    /// time; readiness finding Kafka usable again cuts it short. What was forwarded is
    /// checkpointed first, so its segments are deleted even while the head is stuck.
    async fn hold_up(&mut self, condition: Option<Condition>, reason: String) -> Step {
        self.checkpoint();
        tracing::warn!(
            retry_in_ms = self.backoff.as_millis() as u64,
            reason = %reason,
            "Spool forwarding held up, sending again from the oldest unacknowledged record"
        );
        self.to.shared.hold_forwarding(condition, reason);
        self.held = true;
        let waited = tokio::select! {
            _ = &mut self.stop => Err(Stopped),
            () = tokio::time::sleep(self.backoff) => Ok(()),
            () = self.to.shared.kick.notified() => Ok(()),
        };
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        waited
    }

    /// Records the acknowledged position, then deletes the segments wholly before it. Those
    /// were all acknowledged, so they go even when the checkpoint cannot be written (a full
    /// volume): a stale checkpoint only sends records again.
    fn checkpoint(&mut self) {
        let acknowledged = self.acknowledged;
        if acknowledged == self.checkpointed && self.undeleted.is_none() {
            return;
        }
        if acknowledged != self.checkpointed
            && let Err(error) = segments::write_checkpoint(&self.to.dir, acknowledged)
        {
            tracing::warn!(error = %error, "Spool checkpoint not written (records may be sent again)");
        }
        let from = self
            .checkpointed
            .segment
            .min(self.undeleted.unwrap_or(u64::MAX));
        self.checkpointed = acknowledged;
        for segment in from..acknowledged.segment {
            if let Err(error) = self.delete_segment(segment) {
                // Tried again at the next checkpoint (its bytes still count), logged once.
                if self.undeleted != Some(segment) {
                    tracing::warn!(segment, error = %error, "Forwarded spool segment not deleted");
                }
                self.undeleted = Some(segment);
                return;
            }
        }
        self.undeleted = None;
    }

    /// Deletes a forwarded segment and releases its bytes; one already gone is fine.
    fn delete_segment(&self, segment: u64) -> std::io::Result<()> {
        let path = segments::segment_path(&self.to.dir, segment);
        let metadata = match std::fs::metadata(&path) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(error),
        };
        std::fs::remove_file(&path)?;
        self.to.shared.release(metadata.len());
        self.to.shared.volume_has_room();
        Ok(())
    }
}

/// The accept time of a spooled record as a time.
pub(super) fn accepted_at(entry: &Entry) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(entry.accepted_ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests;
