//! The writer thread: appends go through it, and each batch is written and fsynced once before
//! every request in it is answered (group commit), so concurrent requests share a fsync.

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Instant;

use tokio::sync::oneshot;

use super::segments::{AppendError, SegmentWriter};
use super::{MAX_BATCH_BYTES, SLOW_COMMIT, Shared};
use crate::publish::PublishError;

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
    while let Ok(first) = queue.recv() {
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
            Some(reason) => Err(AppendError::Io(std::io::Error::other(reason))),
            None => {
                frames.clear();
                for append in &batch {
                    frames.extend_from_slice(&append.frame);
                }
                let started = Instant::now();
                let appended = writer.append(&frames);
                let took = started.elapsed();
                shared.commits.fetch_add(1, Ordering::AcqRel);
                shared
                    .commit_micros
                    .fetch_add(took.as_micros() as u64, Ordering::AcqRel);
                if took >= SLOW_COMMIT {
                    tracing::warn!(
                        took_ms = took.as_millis() as u64,
                        records = batch.len(),
                        "Spool write and fsync were slow; every 202 waits for one: check the volume"
                    );
                }
                appended
            }
        };
        match outcome {
            Ok((end, grown)) => {
                shared.disk_full.store(false, Ordering::Release);
                // The batch's reservation becomes what the files grew by: a new segment's
                // size, or nothing while a preallocated segment has room.
                let reserved = bytes as u64;
                if grown >= reserved {
                    shared.used.fetch_add(grown - reserved, Ordering::AcqRel);
                } else {
                    shared.release(reserved - grown);
                }
                shared
                    .records
                    .fetch_add(batch.len() as u64, Ordering::AcqRel);
                shared.committed.send_replace(end);
                for append in batch.drain(..) {
                    let _ = append.done.send(Ok(()));
                }
            }
            Err(AppendError::NoSpace(error)) => {
                // The writer sealed its segment: the forwarder may pass its end and delete it.
                shared.committed.send_replace(writer.end());
                // Nothing of the batch was kept; the senders retry once forwarding has freed
                // space, and readiness says the spool is full meanwhile.
                if !shared.disk_full.swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        error = %error,
                        "Spool volume full; answering 503 spool_full until forwarding frees space"
                    );
                }
                shared.release(bytes as u64);
                for append in batch.drain(..) {
                    let _ = append.done.send(Err(PublishError::DiskFull {
                        limit: shared.limit,
                    }));
                }
            }
            Err(AppendError::Io(error)) => {
                let reason = error.to_string();
                if shared.failure().is_none() {
                    shared.fail(reason.clone());
                }
                shared.release(bytes as u64);
                for append in batch.drain(..) {
                    let _ = append.done.send(Err(PublishError::Failed(format!(
                        "the spool cannot write: {reason}"
                    ))));
                }
            }
        }
    }
}
