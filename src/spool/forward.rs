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
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use super::Shared;
use super::segments::{self, Entry, Position, SegmentReader};
use crate::conditions::Condition;
use crate::publish::kafka::{Delivery, KafkaPublisher, SendError};
use crate::publish::refusal::{Refused, Verdict};
use crate::publish::{PublishError, Record, StorageError};
use rdkafka::error::RDKafkaErrorCode;

mod fill;
mod recover;
mod set_aside;
mod wake;
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
}

/// The accept time of a spooled record as a time.
pub(super) fn accepted_at(entry: &Entry) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(entry.accepted_ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests;
