//! The writer thread: appends go through it, and each batch is written and fsynced once before
//! every request in it is answered (group commit), so concurrent requests share a fsync.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::segments::{AppendError, SegmentWriter};
use super::{MAX_BATCH_BYTES, SLOW_COMMIT, Shared, now_ms};
use crate::publish::{PublishError, StorageError};

/// While the volume is full, how often the writer looks whether it has room again.
const ROOM_PROBE_EVERY: Duration = Duration::from_secs(1);

/// One request's frame, and where its answer goes once the frame is durable.
pub(super) struct Append {
    pub(super) frame: Vec<u8>,
    pub(super) done: oneshot::Sender<Result<(), PublishError>>,
}

/// The writer thread: one batch per fsync, answered only after it.
pub(super) fn write_loop(
    mut writer: SegmentWriter,
    queue: &mpsc::Receiver<Append>,
    shared: &Shared,
) {
    let mut frames = Vec::with_capacity(MAX_BATCH_BYTES);
    let mut batch = Vec::new();
    loop {
        let first = match next_append(queue, shared) {
            Ok(first) => first,
            Err(RecvTimeoutError::Timeout) => {
                probe_room(&writer, shared);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut bytes = first.frame.len();
        batch.push(first);
        while bytes < MAX_BATCH_BYTES {
            match queue.try_recv() {
                Ok(next) => {
                    bytes += next.frame.len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let outcome = match shared.failure() {
            Some(failure) => Err(AppendError::Io(std::io::Error::other(failure))),
            None if shared.abandoned.load(Ordering::Acquire) => Err(AppendError::Io(
                std::io::Error::other("the bridge stopped before this record was written"),
            )),
            None => {
                frames.clear();
                for append in &batch {
                    frames.extend_from_slice(&append.frame);
                }
                commit(&mut writer, &frames, batch.len(), shared)
            }
        };
        settle(outcome, &mut batch, bytes as u64, &writer, shared);
        shared.queued.fetch_sub(bytes as u64, Ordering::AcqRel);
    }
}

/// The next append; while the volume is full, a timeout now and then to probe it.
fn next_append(
    queue: &mpsc::Receiver<Append>,
    shared: &Shared,
) -> Result<Append, RecvTimeoutError> {
    if shared.disk_full.load(Ordering::Acquire) {
        queue.recv_timeout(ROOM_PROBE_EVERY)
    } else {
        queue.recv().map_err(|_| RecvTimeoutError::Disconnected)
    }
}

/// Nothing comes while readiness says the volume is full, so the writer asks the volume.
fn probe_room(writer: &SegmentWriter, shared: &Shared) {
    match writer.has_room_for(shared.largest_event as usize) {
        Ok(true) => {
            tracing::info!("Spool volume has room again");
            shared.volume_has_room();
        }
        Ok(false) => {}
        Err(error) => tracing::debug!(error = %error, "Spool volume room probe failed"),
    }
}

/// Writes and fsyncs one batch, timed: its start is what readiness sees of a stalled volume.
fn commit(
    writer: &mut SegmentWriter,
    frames: &[u8],
    records: usize,
    shared: &Shared,
) -> Result<(super::segments::Position, u64), AppendError> {
    shared.commit_started_ms.store(now_ms(), Ordering::Release);
    let started = Instant::now();
    let appended = writer.append(frames);
    let took = started.elapsed();
    shared.commit_started_ms.store(0, Ordering::Release);
    shared.commits.fetch_add(1, Ordering::AcqRel);
    shared
        .commit_micros
        .fetch_add(took.as_micros() as u64, Ordering::AcqRel);
    if took >= SLOW_COMMIT {
        tracing::warn!(
            took_ms = took.as_millis() as u64,
            records,
            "Spool write and fsync were slow; every 202 waits for one: check the volume"
        );
    }
    appended
}

/// Answers every request of the batch with the commit's outcome.
fn settle(
    outcome: Result<(super::segments::Position, u64), AppendError>,
    batch: &mut Vec<Append>,
    reserved: u64,
    writer: &SegmentWriter,
    shared: &Shared,
) {
    let answer = match outcome {
        Ok((end, grown)) => {
            shared.volume_has_room();
            // The batch's reservation becomes what the files grew by: a new segment's size,
            // or nothing while a preallocated segment has room.
            if grown >= reserved {
                shared.used.fetch_add(grown - reserved, Ordering::AcqRel);
            } else {
                shared.release(reserved - grown);
            }
            shared
                .records
                .fetch_add(batch.len() as u64, Ordering::AcqRel);
            shared.committed.send_replace(end);
            Ok(())
        }
        Err(AppendError::NoSpace(error)) => {
            // The writer sealed its segment: the forwarder may pass its end and delete it.
            shared.committed.send_replace(writer.end());
            // Nothing of the batch was kept; the senders retry once the volume has room, and
            // readiness says it is full meanwhile.
            shared.volume_full(&error);
            shared.release(reserved);
            Err(PublishError::DiskFull {
                limit: shared.limit,
            })
        }
        Err(AppendError::Io(error)) => {
            let failure = StorageError::from(&error);
            if shared.failure().is_none() && !shared.abandoned.load(Ordering::Acquire) {
                shared.fail(failure.clone());
            }
            shared.release(reserved);
            Err(PublishError::Storage(failure))
        }
    };
    for append in batch.drain(..) {
        let _ = append.done.send(answer.clone());
        shared.unanswered.fetch_sub(1, Ordering::AcqRel);
    }
}
