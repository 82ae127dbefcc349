//! The forwarder: carries the spool to Kafka in log order, on a thread of its own.
//!
//! Up to a window of records is handed to the producer at once, in log order, and progress
//! moves only as the oldest of them is acknowledged. If Kafka refuses one, everything from it
//! on is sent again after a pause: the producer keeps a partition's records in the order they
//! were handed over, so a chat's records reach its partition in log order, possibly more than
//! once, never out of order.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::sync::oneshot;

use super::Shared;
use super::log::{self, Position, SegmentReader};
use crate::publish::{PublishFuture, Publisher};

/// Records handed to the producer and not yet acknowledged, at most.
const WINDOW_RECORDS: usize = 4096;
const WINDOW_BYTES: usize = 32 << 20;
/// How often progress is made durable and fully forwarded segments are deleted: a crash sends
/// again what was acknowledged since (plus the window in flight). A checkpoint costs one small
/// fsync.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub(super) struct Forwarder {
    dir: PathBuf,
    start: Position,
    shared: Arc<Shared>,
    kafka: Arc<dyn Publisher>,
}

enum Event {
    Stop,
    /// Reading the spool failed; nothing to wait for.
    Failed,
    Delivered(Result<crate::publish::Stored, crate::publish::PublishError>),
    Committed,
    Checkpoint,
}

struct Pending<'a> {
    after: Position,
    accepted_ms: u64,
    bytes: usize,
    delivery: PublishFuture<'a>,
}

impl Forwarder {
    pub(super) fn new(
        dir: &Path,
        start: Position,
        shared: Arc<Shared>,
        kafka: Arc<dyn Publisher>,
    ) -> Self {
        Self {
            dir: dir.to_owned(),
            start,
            shared,
            kafka,
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

    async fn run(self, mut stop: oneshot::Receiver<()>) {
        let kafka = self.kafka.clone();
        let kafka: &dyn Publisher = &*kafka;
        let shared = &self.shared;
        let mut reader = SegmentReader::new(&self.dir, self.start);
        let mut committed = shared.committed.subscribe();
        let mut writer_open = true;
        let mut outstanding: VecDeque<Pending<'_>> = VecDeque::new();
        let mut outstanding_bytes = 0;
        let mut acknowledged = self.start;
        let mut checkpointed = self.start;
        let mut backoff = FIRST_BACKOFF;
        let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            let end = *committed.borrow_and_update();
            let mut read_error = None;
            while outstanding.len() < WINDOW_RECORDS && outstanding_bytes < WINDOW_BYTES {
                match reader.next(end) {
                    Ok(Some((entry, after))) => {
                        let bytes = entry.record.size();
                        outstanding_bytes += bytes;
                        outstanding.push_back(Pending {
                            after,
                            accepted_ms: entry.accepted_ms,
                            bytes,
                            delivery: kafka.publish(entry.record),
                        });
                    }
                    Ok(None) => break,
                    Err(error) => {
                        read_error = Some(error);
                        break;
                    }
                }
            }
            match outstanding.front() {
                Some(oldest) => shared
                    .oldest_ms
                    .store(oldest.accepted_ms, Ordering::Release),
                None if read_error.is_none() => {
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
            let mut failure = read_error.map(|error| format!("the spool cannot be read: {error}"));

            let event = if failure.is_some() {
                Event::Failed
            } else {
                tokio::select! {
                biased;
                _ = &mut stop => Event::Stop,
                outcome = async {
                    match outstanding.front_mut() {
                        Some(pending) => pending.delivery.as_mut().await,
                        None => std::future::pending().await,
                    }
                }, if !outstanding.is_empty() => Event::Delivered(outcome),
                changed = committed.changed(), if writer_open => {
                    // The writer is gone on shutdown; nothing more will be committed.
                    writer_open = changed.is_ok();
                    Event::Committed
                }
                _ = tick.tick() => Event::Checkpoint,
                }
            };
            match event {
                Event::Stop => break,
                Event::Committed | Event::Failed => {}
                Event::Checkpoint => self.checkpoint(acknowledged, &mut checkpointed),
                Event::Delivered(mut outcome) => {
                    // Acknowledgements come in bursts: take every one already there at the
                    // front of the window, not one per wake-up.
                    let mut done = 0;
                    let mut refused = None;
                    loop {
                        match outcome {
                            Ok(_) => {
                                if let Some(pending) = outstanding.pop_front() {
                                    outstanding_bytes -= pending.bytes;
                                    acknowledged = pending.after;
                                }
                                done += 1;
                            }
                            Err(error) => {
                                refused = Some(error);
                                break;
                            }
                        }
                        let mut context = Context::from_waker(Waker::noop());
                        match outstanding
                            .front_mut()
                            .map(|pending| pending.delivery.as_mut().poll(&mut context))
                        {
                            Some(Poll::Ready(next)) => outcome = next,
                            _ => break,
                        }
                    }
                    if done > 0 {
                        // Counted as forwarded before no longer waiting, so whoever sees the
                        // spool empty also sees every record forwarded.
                        shared.forwarded.fetch_add(done, Ordering::AcqRel);
                        shared.records.fetch_sub(done, Ordering::AcqRel);
                        shared.acknowledged.send_replace(acknowledged);
                        if backoff != FIRST_BACKOFF {
                            backoff = FIRST_BACKOFF;
                            *shared
                                .forward_error
                                .lock()
                                .unwrap_or_else(|e| e.into_inner()) = None;
                            tracing::info!("Kafka takes spooled records again");
                        }
                    }
                    if let Some(error) = refused {
                        failure = Some(format!("Kafka refused a spooled record: {error}"));
                    }
                }
            }
            if let Some(reason) = failure {
                // Send again from the oldest unacknowledged record. Whatever the producer still
                // holds was handed over earlier, so it stays ahead of what is sent again.
                outstanding.clear();
                outstanding_bytes = 0;
                reader.seek(acknowledged);
                if !self.hold_up(reason, &mut backoff, &mut stop).await {
                    break;
                }
            }
        }
        drop(outstanding);
        self.checkpoint(acknowledged, &mut checkpointed);
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
            "Spool forwarding held up, sending again from the oldest unacknowledged record: {reason}"
        );
        *self
            .shared
            .forward_error
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(reason);
        let waited = tokio::select! {
            _ = stop => false,
            () = tokio::time::sleep(*backoff) => true,
        };
        *backoff = (*backoff * 2).min(MAX_BACKOFF);
        waited
    }

    /// Makes `acknowledged` durable, then deletes the segments wholly before it.
    fn checkpoint(&self, acknowledged: Position, checkpointed: &mut Position) {
        if acknowledged == *checkpointed {
            return;
        }
        if let Err(error) = log::write_checkpoint(&self.dir, acknowledged) {
            tracing::warn!("Spool checkpoint not written (records may be sent again): {error}");
            return;
        }
        for segment in checkpointed.segment..acknowledged.segment {
            let path = log::segment_path(&self.dir, segment);
            let Ok(metadata) = std::fs::metadata(&path) else {
                continue;
            };
            match std::fs::remove_file(&path) {
                Ok(()) => self.shared.release(metadata.len()),
                Err(error) => tracing::warn!(
                    segment = %path.display(),
                    "Forwarded spool segment not deleted: {error}"
                ),
            }
        }
        *checkpointed = acknowledged;
    }
}
