//! Spool mode (`BRIDGE_ACK_MODE=spool`): a webhook is answered 202 once its record is fsynced to
//! a local log, and a forwarder carries the log to Kafka in order, whenever Kafka can take it.
//!
//! Appends go through one writer thread that takes everything queued, writes it, fsyncs once
//! and then answers every waiting request (group commit), so concurrent requests share a
//! fsync. The forwarder reads the log in order and sends it through an idempotent producer
//! that never gives a record up (`message.timeout.ms=0`): a record is never skipped and sent
//! again behind a later one, so a chat's order in the log is its order in the partition. Its
//! progress is checkpointed only after Kafka acknowledged, and whole segments behind the
//! checkpoint are deleted. After a crash, what was sent but not checkpointed is sent again:
//! at least once, same event id, in order.

mod forward;
mod group_commit;
mod quarantine;
mod shared;
mod volume;

/// How much the forwarder hands the producer at once (the producer's queue must hold it).
pub use forward::{WINDOW_BYTES as FORWARD_WINDOW_BYTES, WINDOW_RECORDS as FORWARD_WINDOW_RECORDS};
pub mod segments;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

use crate::conditions::{Condition, Conditions};
use crate::config::SpoolSettings;
use crate::publish::kafka::{KafkaPublisher, ProducerBroken};
use crate::publish::{PublishError, PublishFuture, Publisher, Record, StorageError, Stored};
use group_commit::{Append, write_loop};
use segments::{SegmentWriter, SpoolDirError};
use shared::Shared;
pub use shared::SpoolStatus;

/// The largest segment file; smaller spools use a sixteenth of their limit, so that a spool
/// whose records are all forwarded always has room to roll to a new segment.
const MAX_SEGMENT_BYTES: u64 = 64 << 20;
const MIN_SEGMENT_BYTES: u64 = 64 << 10;
/// One group commit writes at most this much before its fsync, so a burst does not make the
/// first requests of the batch wait for the last.
const MAX_BATCH_BYTES: usize = 4 << 20;
/// A group commit this slow is logged: senders waited that long for their 202.
const SLOW_COMMIT: Duration = Duration::from_secs(1);
/// Frames waiting for the writer, at most: past it a request is answered 503 at once. A
/// stalled volume holds them all, and the requests that gave up on it would otherwise go on
/// adding their records while their senders retry.
const MAX_QUEUED_BYTES: u64 = 4 * MAX_BATCH_BYTES as u64;

/// What an operator should know of what recovery found.
fn report_recovery(dir: &Path, recovered: &segments::Recovered) {
    if let Some(filesystem) = volume::in_memory(dir) {
        tracing::warn!(
            path = %dir.display(),
            filesystem,
            "BRIDGE_SPOOL_DIR is in memory: spooled events survive a crash of the process, \
             but not a restart of the pod or the node; put it on a persistent volume"
        );
    }
    if recovered.records > 0 {
        tracing::info!(
            records = recovered.records,
            bytes = recovered.bytes,
            cut_bytes = recovered.cut_bytes,
            "Spool holds records from an earlier run; forwarding them before new ones"
        );
    }
}

/// Starts one of the spool's threads.
fn spawn(
    dir: &Path,
    name: &str,
    work: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, SpoolDirError> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(work)
        .map_err(|source| SpoolDirError::Io {
            path: dir.to_owned(),
            source,
        })
}

/// Records a shutdown left on disk for the next start.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{records} records stay in the spool at {}; the next start forwards them", .dir.display())]
pub struct Unflushed {
    pub records: u64,
    pub dir: PathBuf,
}

/// Why the spool cannot go on without a restart (and its recovery).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpoolFatal {
    /// A write or fsync failed: what is on disk is unknown until recovery reads it.
    #[error(transparent)]
    Storage(StorageError),
    /// Damage met while forwarding; never skipped.
    #[error("the spool cannot be read: {0}")]
    Unreadable(StorageError),
    #[error("the spool writer stopped")]
    WriterStopped,
    #[error("the spool forwarder stopped")]
    ForwarderStopped,
    #[error(transparent)]
    Producer(ProducerBroken),
}

/// The spool: a [`Publisher`] that answers once a record is durable on local disk.
pub struct Spool {
    dir: PathBuf,
    shared: Arc<Shared>,
    /// Taken on shutdown, which lets the writer finish its queue and stop.
    appends: RwLock<Option<mpsc::Sender<Append>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    forwarder: Mutex<Option<(oneshot::Sender<()>, JoinHandle<()>)>>,
    quarantine: Arc<quarantine::Quarantine>,
    kafka: Arc<KafkaPublisher>,
    max_record_bytes: usize,
    /// How long a request waits for its fsync before it is answered 503.
    publish_timeout: Duration,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

use crate::locks::{lock, read, write};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Spool {
    /// Recovers the spool in `settings.dir` and starts its writer and forwarder. Records left
    /// by an earlier run are forwarded before any new one. `kafka` is the forwarder's
    /// producer ([`KafkaPublisher::unbounded`]); records it refuses for good go to
    /// `deadletter`. A request not fsynced within `publish_timeout` is answered 503; what
    /// holds the spool up is raised in `conditions`.
    pub fn open(
        settings: &SpoolSettings,
        largest_event: usize,
        kafka: KafkaPublisher,
        deadletter: Arc<str>,
        publish_timeout: Duration,
        conditions: Arc<Conditions>,
    ) -> Result<Self, SpoolDirError> {
        let max_record_bytes = kafka.max_record_bytes();
        let kafka = Arc::new(kafka);
        let dir = settings.dir.clone();
        let recovered = segments::recover(&dir, settings.on_damage)?;
        report_recovery(&dir, &recovered);
        let segment_bytes = (settings.max_bytes / 16).clamp(MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES);
        let next = recovered.next_segment;
        // Nothing is written until the first record: a full volume must still start, so that
        // forwarding frees it.
        let writer = SegmentWriter::new(&dir, next, segment_bytes);
        let shared = Arc::new(Shared::new(
            settings.max_bytes,
            largest_event as u64,
            &recovered,
            writer.end(),
            conditions,
        ));
        shared.grow_quarantine(quarantine::bytes_on_disk(&dir));
        let quarantine = Arc::new(quarantine::Quarantine::new(&dir, shared.clone()));

        let (appends, queue) = mpsc::channel();
        let writer_shared = shared.clone();
        let writer = spawn(&dir, "spool-writer", move || {
            write_loop(writer, &queue, &writer_shared);
        })?;
        let (stop, stopped) = oneshot::channel();
        let forwarder = forward::Forwarder::new(
            &dir,
            recovered.start,
            shared.clone(),
            kafka.clone(),
            quarantine.clone(),
            deadletter,
            max_record_bytes,
        );
        let lock = recovered.lock;
        let forwarder = spawn(&dir, "spool-forwarder", move || {
            forwarder.run_until(stopped);
            // The forwarder is the last to touch the directory (its final checkpoint): until
            // then it stays locked against another process.
            drop(lock);
        })?;
        Ok(Self {
            dir,
            shared,
            appends: RwLock::new(Some(appends)),
            writer: Mutex::new(Some(writer)),
            forwarder: Mutex::new(Some((stop, forwarder))),
            quarantine,
            kafka,
            max_record_bytes,
            publish_timeout,
        })
    }

    /// Hands the record to the writer, with room reserved for it; the answer comes once it is
    /// fsynced.
    fn append(
        &self,
        record: &Record,
    ) -> Result<oneshot::Receiver<Result<(), PublishError>>, PublishError> {
        let size = record.size();
        if size > self.max_record_bytes {
            // Kafka would refuse it for good, and it would hold up every record behind it.
            let limit = self.max_record_bytes;
            return Err(PublishError::TooLarge { size, limit });
        }
        if let Some(failure) = self.shared.failure() {
            return Err(PublishError::Storage(failure));
        }
        let frame = segments::encode(record, now_ms());
        let bytes = frame.len() as u64;
        let shared = &self.shared;
        let queued = shared
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued + bytes <= MAX_QUEUED_BYTES).then_some(queued + bytes)
            });
        if let Err(queued) = queued {
            return Err(PublishError::VolumeStalled { queued });
        }
        let unqueue = || {
            shared.queued.fetch_sub(bytes, Ordering::AcqRel);
        };
        if let Err(full) = shared.reserve(bytes) {
            unqueue();
            return Err(full);
        }
        let (done, answer) = oneshot::channel();
        let appends = read(&self.appends);
        shared.unanswered.fetch_add(1, Ordering::AcqRel);
        match appends.as_ref().map(|a| a.send(Append { frame, done })) {
            Some(Ok(())) => Ok(answer),
            _ => {
                shared.unanswered.fetch_sub(1, Ordering::AcqRel);
                shared.release(bytes);
                unqueue();
                Err(PublishError::Storage(StorageError::Closed))
            }
        }
    }

    /// The spool's state now. Also raises or clears what it finds holding acceptance up, so
    /// readiness, which asks for it every probe, re-checks those conditions with no traffic.
    pub fn status(&self) -> SpoolStatus {
        let shared = &self.shared;
        let used = shared.used.load(Ordering::Acquire);
        let oldest = shared.oldest_ms.load(Ordering::Acquire);
        let disk_full = shared.disk_full.load(Ordering::Acquire);
        let limit_reached = used + shared.largest_event > shared.limit;
        let stalled_for = shared
            .commit_running_for()
            .filter(|running| *running > self.publish_timeout);
        shared.conditions.set(
            Condition::SpoolFull,
            limit_reached.then(|| {
                format!(
                    "the spool holds {used} of {} bytes until Kafka takes the backlog",
                    shared.limit
                )
            }),
        );
        shared.conditions.set(
            Condition::VolumeStalled,
            stalled_for.map(|running| {
                format!(
                    "a write and fsync to the spool's volume has taken {} ms, longer than \
                     BRIDGE_PUBLISH_TIMEOUT_MS: requests get 503 until it returns",
                    running.as_millis()
                )
            }),
        );
        SpoolStatus {
            records: shared.records.load(Ordering::Acquire),
            bytes: used,
            limit: shared.limit,
            oldest_age: Duration::from_millis(if oldest == 0 {
                0
            } else {
                now_ms().saturating_sub(oldest)
            }),
            forwarded: shared.forwarded.load(Ordering::Acquire),
            has_room: !disk_full && !limit_reached,
            volume_full: disk_full,
            stalled_for,
            forward_error: lock(&shared.forward_error).clone(),
            forward_failures: lock(&shared.forward_failures).clone(),
            set_aside_to_deadletter: shared.set_aside_to_deadletter.load(Ordering::Acquire),
            set_aside_to_quarantine: shared.set_aside_to_quarantine.load(Ordering::Acquire),
            quarantine_bytes: shared.quarantine_bytes.load(Ordering::Acquire),
            last_set_aside: lock(&shared.last_set_aside).clone(),
            damaged_segments: shared.set_aside_segments.load(Ordering::Acquire),
            commits: shared.commits.load(Ordering::Acquire),
            commit_time: Duration::from_micros(shared.commit_micros.load(Ordering::Acquire)),
        }
    }

    /// Stops taking records, gives the forwarder until `deadline` to catch up, then stops it
    /// with its progress checkpointed. Returns how many records stay spooled. Never waits past
    /// `deadline`: a writer stuck in an fsync of a stalled volume is left to end with the
    /// process, and none of what it holds was answered 202.
    async fn drain(&self, deadline: Instant) -> u64 {
        drop(write(&self.appends).take());
        let writer = lock(&self.writer).take();
        if let Some(writer) = writer
            && !join_by(writer, deadline).await
        {
            self.shared.abandoned.store(true, Ordering::Release);
            tracing::error!(
                unanswered = self.shared.unanswered.load(Ordering::Acquire),
                "The spool's volume did not finish a write before the shutdown deadline; \
                 the requests it held were never answered 202, so nothing acknowledged is lost"
            );
        }
        let end = *self.shared.committed.borrow();
        let mut acknowledged = self.shared.acknowledged.subscribe();
        let caught_up = tokio::time::timeout_at(
            deadline.into(),
            acknowledged.wait_for(|position| *position >= end),
        )
        .await
        .is_ok_and(|caught_up| caught_up.is_ok());
        let forwarder = lock(&self.forwarder).take();
        if let Some((stop, forwarder)) = forwarder {
            let _ = stop.send(());
            // Its last checkpoint only saves sending records again: a moment past the deadline
            // at most.
            if !join_by(forwarder, deadline.max(Instant::now()) + FORWARDER_STOP).await {
                tracing::warn!(
                    "The spool forwarder did not stop in time; the next start resumes from its last checkpoint"
                );
            }
        }
        if caught_up {
            0
        } else {
            self.shared.records.load(Ordering::Acquire)
        }
    }

    /// Bytes the forwarder's producer sent to Kafka since start.
    pub fn sent_bytes(&self) -> u64 {
        self.kafka.sent_bytes()
    }

    /// What holds the spool up, raised by its writer and forwarder.
    pub fn conditions(&self) -> Arc<Conditions> {
        self.shared.conditions.clone()
    }

    /// Readiness found Kafka usable again: a forwarder backing off tries at once.
    pub fn kafka_usable(&self) {
        self.shared.kick.notify_one();
    }
}

/// What a spool directory holds, as a start finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// Records not yet acknowledged by Kafka.
    pub records: u64,
    /// Bytes of the segments kept.
    pub bytes: u64,
    /// Bytes of the quarantine's files: records set aside there and damaged segments, which
    /// only a bridge's re-drive takes out.
    pub quarantine_bytes: u64,
}

/// For `omnichat-bridge drain`, which opens a spool no bridge runs on and appends nothing.
impl Spool {
    /// Recovers the spool in `settings.dir` as a start would (its lock taken, a torn tail cut,
    /// damage handled as `settings.on_damage` says) and counts what it holds. Forwards nothing;
    /// the lock is released on return.
    pub fn backlog(settings: &SpoolSettings) -> Result<Backlog, SpoolDirError> {
        let recovered = segments::recover(&settings.dir, settings.on_damage)?;
        Ok(Backlog {
            records: recovered.records,
            bytes: recovered.bytes,
            quarantine_bytes: quarantine::bytes_on_disk(&settings.dir),
        })
    }

    /// Resolves once every record made durable so far was acknowledged by Kafka or set aside:
    /// with nothing appended, the spool is then empty.
    pub async fn forwarded_all(&self) {
        let end = *self.shared.committed.borrow();
        let mut acknowledged = self.shared.acknowledged.subscribe();
        // The sender lives in `shared`, as long as `self`: this ends only once caught up.
        let _ = acknowledged.wait_for(|position| *position >= end).await;
    }
}

/// How long the forwarder gets to stop and write its last checkpoint once told.
const FORWARDER_STOP: Duration = Duration::from_millis(500);

/// Waits for `thread` until `deadline`; false if it is still running then. Joined on a thread
/// of its own, not the runtime's blocking pool, which would hold the process at exit.
async fn join_by(thread: JoinHandle<()>, deadline: Instant) -> bool {
    let (joined, done) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("spool-join".into())
        .spawn(move || {
            let _ = thread.join();
            let _ = joined.send(());
        });
    spawned.is_ok() && tokio::time::timeout_at(deadline.into(), done).await.is_ok()
}

impl Publisher for Spool {
    /// Resolves once the record is fsynced, or within the publish deadline with 503: a
    /// record whose fsync comes later is still forwarded (the sender's retry then makes a
    /// duplicate with the same event id), but never answered 202 before it is durable.
    fn publish(&self, record: Record) -> PublishFuture<'_> {
        let queued = self.append(&record);
        let deadline = self.publish_timeout;
        Box::pin(async move {
            match tokio::time::timeout(deadline, queued?).await {
                Ok(Ok(Ok(()))) => Ok(Stored::OnDisk),
                Ok(Ok(Err(error))) => Err(error),
                Ok(Err(_)) => Err(PublishError::Storage(StorageError::WriterStopped)),
                Err(_) => Err(PublishError::NotDurable(deadline)),
            }
        })
    }
}

/// Lifecycle and health, for the backend that owns the spool.
impl Spool {
    /// Stops taking records and gives the forwarder until `timeout` to drain the spool; what it
    /// cannot send stays on disk for the next start.
    pub async fn flush(&self, timeout: Duration) -> Result<(), Unflushed> {
        let records = self.drain(Instant::now() + timeout).await;
        if records == 0 {
            tracing::info!("Spool drained: Kafka has every record");
            Ok(())
        } else {
            Err(Unflushed {
                records,
                dir: self.dir.clone(),
            })
        }
    }

    /// Whether Kafka answers for these topics (the spool itself takes records either way).
    pub fn probe(
        &self,
        topics: &[&str],
        timeout: Duration,
    ) -> Result<Vec<String>, crate::publish::kafka::KafkaUnusable> {
        self.kafka.probe(topics, timeout)
    }

    /// Why the spool cannot go on without a restart (and its recovery), if it cannot.
    pub fn fatal_error(&self) -> Option<SpoolFatal> {
        // Both threads run until shutdown takes their handles; one that ended before is a bug
        // that only a restart (and recovery) mends.
        let writer_ended = lock(&self.writer)
            .as_ref()
            .is_some_and(JoinHandle::is_finished);
        let forwarder_ended = lock(&self.forwarder)
            .as_ref()
            .is_some_and(|(_, thread)| thread.is_finished());
        self.shared
            .failure()
            .map(SpoolFatal::Storage)
            .or_else(|| {
                lock(&self.shared.forwarding_failed)
                    .clone()
                    .map(SpoolFatal::Unreadable)
            })
            .or_else(|| writer_ended.then_some(SpoolFatal::WriterStopped))
            .or_else(|| forwarder_ended.then_some(SpoolFatal::ForwarderStopped))
            .or_else(|| self.kafka.fatal_error().map(SpoolFatal::Producer))
    }
}
