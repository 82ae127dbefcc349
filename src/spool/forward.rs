//! The forwarder: carries the spool to Kafka in log order, on a thread of its own.
//!
//! Up to a window of records is handed to one producer generation at once, in log order, and
//! progress moves only as the oldest of them is acknowledged. The producer is gapless
//! (`enable.gapless.guarantee`): a partition's records land in the order they were handed over
//! or the producer fails as a whole. On any failure the generation is replaced (every record it
//! held resolved, the producer destroyed) and sending starts again from the oldest
//! unacknowledged record, so at most one window is sent twice and a chat's first occurrences
//! always follow log order.
//!
//! A record Kafka refuses for good is sent once more on its own (a refusal may concern the
//! whole batch it travelled in); refused again, it is set aside (see [`set_aside`]) and
//! forwarding goes on behind it. Errors an operator must fix keep it at the head, retried with
//! backoff.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::oneshot;

use super::Shared;
use super::segments::{self, Entry, Position, SegmentReader};
use crate::publish::PublishError;
use crate::publish::Record;
use crate::publish::kafka::{Delivery, KafkaPublisher, Outcome, SendError};
use crate::publish::refusal::{Refused, Verdict};
use rdkafka::error::RDKafkaErrorCode;

mod set_aside;
mod window;

use window::{Pending, Window};

use set_aside::NotSetAside;
pub(crate) use set_aside::SetAsideTo;

/// Records handed to the producer and not yet acknowledged, at most.
pub(crate) const WINDOW_RECORDS: usize = 4096;
pub(crate) const WINDOW_BYTES: usize = 32 << 20;
/// How often progress is made durable and fully forwarded segments are deleted: a crash sends
/// again what was acknowledged since (plus the window in flight). A checkpoint costs no fsync.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

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
    fn failures(&self) -> tokio::sync::watch::Receiver<u64>;
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

    fn failures(&self) -> tokio::sync::watch::Receiver<u64> {
        KafkaPublisher::failures(self)
    }
}

pub(super) struct Forwarder<S: Sink> {
    dir: PathBuf,
    start: Position,
    shared: Arc<Shared>,
    sink: Arc<S>,
    deadletter: Arc<str>,
    max_record_bytes: usize,
    quarantine: Arc<super::quarantine::Quarantine>,
}

/// What woke the forwarder.
enum Event {
    Stop,
    Delivered(Outcome),
    /// A record somewhere in the window was not delivered.
    Failed,
    Committed,
    Tick,
}

/// Why forwarding stopped making progress, and how to go on.
struct Failure {
    reason: String,
    /// The Kafka error, when Kafka gave one.
    refused: Option<Refused>,
}

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
            start,
            shared,
            sink,
            deadletter,
            max_record_bytes,
            quarantine,
        }
    }

    /// Forwards until `stop` fires, then checkpoints what was acknowledged.
    pub(super) fn run_until(self, stop: oneshot::Receiver<()>) {
        match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(runtime) => runtime.block_on(self.run(stop)),
            Err(error) => self
                .shared
                .fail(format!("the spool forwarder cannot start: {error}")),
        }
    }

    pub(super) async fn run(self, mut stop: oneshot::Receiver<()>) {
        let shared = &self.shared;
        let mut reader = SegmentReader::new(&self.dir, self.start);
        let mut committed = shared.committed.subscribe();
        let mut failures = self.sink.failures();
        let mut writer_open = true;
        let mut window = Window::default();
        let mut acknowledged = self.start;
        let mut checkpointed = self.start;
        let mut backoff = FIRST_BACKOFF;
        // After a refusal for good: records up to here go one at a time, so that the one
        // Kafka refuses is known.
        let mut careful_until: Option<Position> = None;
        // The head record was refused for good on its own: set it aside, do not send it.
        let mut poison_head: Option<Refused> = None;
        let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        'forwarding: loop {
            let end = *committed.borrow_and_update();
            if careful_until.is_some_and(|until| acknowledged >= until) {
                careful_until = None;
            }
            if window.pending.is_empty() {
                window.generation = self.sink.generation();
                failures.mark_unchanged();
            }
            let mut failure = None;
            while let Some(generation) = window.generation {
                let room = match careful_until {
                    Some(_) => window.pending.is_empty(),
                    None => window.pending.len() < WINDOW_RECORDS && window.bytes < WINDOW_BYTES,
                };
                if !room {
                    break;
                }
                let before = reader.position();
                let (entry, after) = match reader.next(end) {
                    Ok(Some(next)) => next,
                    Ok(None) => break,
                    Err(error) => {
                        // Never skipped: a restart's recovery refuses or sets the segment aside.
                        let reason = format!("the spool cannot be read: {error}");
                        shared.fail_forwarding(reason.clone());
                        failure = Some(Failure {
                            reason,
                            refused: None,
                        });
                        break;
                    }
                };
                if let Some(refused) = poison_head.take() {
                    match self.set_aside(entry, &refused, generation, &mut stop).await {
                        Ok(()) => {
                            acknowledged = after;
                            shared.records.fetch_sub(1, Ordering::AcqRel);
                            shared.acknowledged.send_replace(acknowledged);
                            continue;
                        }
                        Err(NotSetAside::Stopping) => break 'forwarding,
                        Err(NotSetAside::Failed(reason)) => {
                            poison_head = Some(refused);
                            reader.seek(before);
                            failure = Some(Failure {
                                reason,
                                refused: None,
                            });
                            break;
                        }
                    }
                }
                let bytes = entry.record.size();
                match self.sink.send(&entry.record, generation) {
                    Ok(delivery) => window.push(Pending {
                        after,
                        accepted_ms: entry.accepted_ms,
                        bytes,
                        delivery,
                    }),
                    Err(error) => {
                        reader.seek(before);
                        if window.pending.is_empty() {
                            failure = Some(send_failure(error, &mut poison_head));
                        }
                        // Else the window resolves first, and the failure shows there.
                        break;
                    }
                }
            }
            match window.pending.front() {
                Some(oldest) => shared
                    .oldest_ms
                    .store(oldest.accepted_ms, Ordering::Release),
                None if failure.is_none() => {
                    // Everything read was acknowledged; the reader may have passed empty
                    // segments, which counts as progress too.
                    shared.oldest_ms.store(0, Ordering::Release);
                    if reader.position() > acknowledged {
                        acknowledged = reader.position();
                        shared.acknowledged.send_replace(acknowledged);
                    }
                }
                None => {}
            }

            // Whether a record of the window was not delivered: its generation is done for.
            let mut window_failed = failure.is_some();
            if failure.is_none() {
                let event = tokio::select! {
                    biased;
                    _ = &mut stop => Event::Stop,
                    outcome = async {
                        match window.pending.front_mut() {
                            Some(pending) => (&mut pending.delivery).await,
                            None => std::future::pending().await,
                        }
                    }, if !window.pending.is_empty() => Event::Delivered(outcome.unwrap_or_else(|_| {
                        Err(Refused::new(RDKafkaErrorCode::Fail, "the producer closed before reporting"))
                    })),
                    _ = failures.changed(), if !window.pending.is_empty() => Event::Failed,
                    changed = committed.changed(), if writer_open => {
                        // The writer is gone on shutdown; nothing more will be committed.
                        writer_open = changed.is_ok();
                        Event::Committed
                    }
                    _ = tick.tick() => Event::Tick,
                };
                match event {
                    Event::Stop => break,
                    Event::Committed => {}
                    Event::Tick => self.checkpoint(acknowledged, &mut checkpointed),
                    Event::Failed => window_failed = true,
                    Event::Delivered(outcome) => {
                        let done = window.take_acknowledged(Some(outcome), &mut acknowledged);
                        self.count_forwarded(done, acknowledged, &mut backoff);
                        window_failed = window.refused.is_some();
                    }
                }
            }
            if !window_failed {
                continue;
            }
            // Every record of this generation is resolved and its producer destroyed before
            // anything goes to the next; then from the oldest unacknowledged record again.
            if let Some(generation) = window.generation {
                let why = failure
                    .as_ref()
                    .map_or("a spooled record was not delivered", |f| &f.reason);
                self.sink.replace(generation, why);
            }
            let done = window.take_acknowledged(None, &mut acknowledged);
            self.count_forwarded(done, acknowledged, &mut backoff);
            let alone = window.sent == 1;
            let refused = window.worst_refusal();
            window.clear();
            reader.seek(acknowledged);
            failures.mark_unchanged();
            let failure = match (failure, refused) {
                (Some(failure), _) => failure,
                (None, Some(refused)) => Failure {
                    reason: format!("Kafka refused a spooled record: {refused}"),
                    refused: Some(refused),
                },
                (None, None) => continue,
            };
            if let Some(refused) = &failure.refused {
                shared.count_forward_failure(refused);
                if refused.verdict() == Verdict::Poison && poison_head.is_none() {
                    if careful_until.is_some() && alone {
                        // Refused on its own: the record itself is the cause.
                        poison_head = Some(refused.clone());
                    } else {
                        careful_until = Some(window.end.max(acknowledged));
                    }
                    // Sending again at once is what finds the record: no backoff.
                    continue;
                }
            }
            if poison_head.is_some() {
                continue;
            }
            if !self.hold_up(failure.reason, &mut backoff, &mut stop).await {
                break;
            }
        }
        window.clear();
        self.checkpoint(acknowledged, &mut checkpointed);
    }

    fn count_forwarded(&self, done: u64, acknowledged: Position, backoff: &mut Duration) {
        if done == 0 {
            return;
        }
        let shared = &self.shared;
        // Counted as forwarded before no longer waiting, so whoever sees the spool empty also
        // sees every record forwarded.
        shared.forwarded.fetch_add(done, Ordering::AcqRel);
        shared.records.fetch_sub(done, Ordering::AcqRel);
        shared.acknowledged.send_replace(acknowledged);
        if *backoff != FIRST_BACKOFF {
            *backoff = FIRST_BACKOFF;
            shared.set_forward_error(None);
            tracing::info!("Kafka takes spooled records again");
        }
    }

    /// Reports why forwarding is held up and waits out the backoff, which doubles for the next
    /// time. Returns false when told to stop meanwhile.
    async fn hold_up(
        &self,
        reason: String,
        backoff: &mut Duration,
        stop: &mut oneshot::Receiver<()>,
    ) -> bool {
        tracing::warn!(
            retry_in_ms = backoff.as_millis() as u64,
            reason = %reason,
            "Spool forwarding held up, sending again from the oldest unacknowledged record"
        );
        self.shared.set_forward_error(Some(reason));
        let waited = tokio::select! {
            _ = stop => false,
            () = tokio::time::sleep(*backoff) => true,
        };
        *backoff = (*backoff * 2).min(MAX_BACKOFF);
        waited
    }

    /// Makes `acknowledged` durable, then deletes the segments wholly before it. Those were
    /// all acknowledged, so they go even when the checkpoint cannot be written (a full
    /// volume): a stale checkpoint only sends records again.
    fn checkpoint(&self, acknowledged: Position, checkpointed: &mut Position) {
        if acknowledged == *checkpointed {
            return;
        }
        if let Err(error) = segments::write_checkpoint(&self.dir, acknowledged) {
            tracing::warn!(error = %error, "Spool checkpoint not written (records may be sent again)");
        }
        for segment in checkpointed.segment..acknowledged.segment {
            let path = segments::segment_path(&self.dir, segment);
            let Ok(metadata) = std::fs::metadata(&path) else {
                continue;
            };
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    self.shared.release(metadata.len());
                    self.shared.disk_full.store(false, Ordering::Release);
                }
                Err(error) => tracing::warn!(
                    segment = %path.display(),
                    error = %error,
                    "Forwarded spool segment not deleted"
                ),
            }
        }
        *checkpointed = acknowledged;
    }
}

/// A failure to hand a record over, with nothing of the window outstanding.
fn send_failure(error: SendError, poison_head: &mut Option<Refused>) -> Failure {
    let reason = format!("the spool forwarder could not hand a record over: {error}");
    match error {
        SendError::Publish(PublishError::TooLarge { .. }) => {
            // The door keeps such records out; one written by an older version is set aside.
            let refused = Refused::new(RDKafkaErrorCode::MessageSizeTooLarge, reason.clone());
            *poison_head = Some(refused.clone());
            Failure {
                reason,
                refused: Some(refused),
            }
        }
        _ => Failure {
            reason,
            refused: None,
        },
    }
}

/// The accept time of a spooled record as a time.
pub(super) fn accepted_at(entry: &Entry) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(entry.accepted_ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests;
