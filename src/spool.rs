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
mod quarantine;

/// How much the forwarder hands the producer at once (the producer's queue must hold it).
pub(crate) use forward::{
    WINDOW_BYTES as FORWARD_WINDOW_BYTES, WINDOW_RECORDS as FORWARD_WINDOW_RECORDS,
};
pub mod segments;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{oneshot, watch};

use crate::config::SpoolSettings;
use crate::publish::kafka::KafkaPublisher;
use crate::publish::{PublishError, PublishFuture, Publisher, Record, Stored};
use segments::{AppendError, Position, SegmentWriter, SpoolDirError};

/// The largest segment file; smaller spools use a sixteenth of their limit, so that a spool
/// whose records are all forwarded always has room to roll to a new segment.
const MAX_SEGMENT_BYTES: u64 = 64 << 20;
const MIN_SEGMENT_BYTES: u64 = 64 << 10;
/// One group commit writes at most this much before its fsync, so a burst does not make the
/// first requests of the batch wait for the last.
const MAX_BATCH_BYTES: usize = 4 << 20;
/// A group commit this slow is logged: senders waited that long for their 202.
const SLOW_COMMIT: Duration = Duration::from_secs(1);

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
struct Shared {
    limit: u64,
    largest_event: u64,
    /// Bytes on disk plus bytes reserved by requests waiting for the writer.
    used: AtomicU64,
    /// The volume refused the last write for space; cleared by the next write that succeeds
    /// or when forwarding deletes a segment.
    disk_full: AtomicBool,
    /// Damaged segments recovery moved to the quarantine since start.
    set_aside_segments: AtomicU64,
    records: AtomicU64,
    forwarded: AtomicU64,
    commits: AtomicU64,
    commit_micros: AtomicU64,
    /// Accepted-at (ms since the epoch) of the oldest record not yet acknowledged; 0 if none.
    oldest_ms: AtomicU64,
    /// Set when a write or fsync failed: the log's state on disk is unknown until a restart
    /// recovers it, so nothing more is accepted.
    failed: Mutex<Option<String>>,
    /// Set when the forwarder met damage it must not skip: only a restart's recovery (which
    /// refuses or sets the segment aside) goes on from there.
    forwarding_failed: Mutex<Option<String>>,
    forward_error: Mutex<Option<String>>,
    forward_failures: Mutex<Vec<(String, u64)>>,
    set_aside_to_deadletter: AtomicU64,
    set_aside_to_quarantine: AtomicU64,
    /// Bytes of the quarantine's files, counted in `used` too.
    quarantine_bytes: AtomicU64,
    last_set_aside: Mutex<Option<String>>,
    /// The end of what is durable; the forwarder follows it.
    committed: watch::Sender<Position>,
    /// The position after the last record Kafka acknowledged.
    acknowledged: watch::Sender<Position>,
}

impl Shared {
    /// The state after recovery found `recovered`; the writer's log ends at `end`.
    fn new(limit: u64, largest_event: u64, recovered: &segments::Recovered, end: Position) -> Self {
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
        }
    }

    fn failure(&self) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn fail(&self, reason: String) {
        tracing::error!(
            "Spool write failed; no more events are accepted until a restart: {reason}"
        );
        *self.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
    }

    fn fail_forwarding(&self, reason: String) {
        let mut failed = lock(&self.forwarding_failed);
        if failed.is_none() {
            tracing::error!(
                "Spool forwarding stopped; liveness fails so a restart recovers: {reason}"
            );
            *failed = Some(reason);
        }
    }

    fn set_forward_error(&self, reason: Option<String>) {
        *lock(&self.forward_error) = reason;
    }

    fn count_forward_failure(&self, refused: &crate::publish::refusal::Refused) {
        let code = refused.code_name();
        let mut failures = lock(&self.forward_failures);
        match failures.iter_mut().find(|(known, _)| *known == code) {
            Some((_, count)) => *count += 1,
            None => failures.push((code, 1)),
        }
    }

    fn count_set_aside(&self, to: forward::SetAsideTo, reason: String) {
        let counter = match to {
            forward::SetAsideTo::DeadLetterTopic => &self.set_aside_to_deadletter,
            forward::SetAsideTo::Quarantine => &self.set_aside_to_quarantine,
        };
        counter.fetch_add(1, Ordering::AcqRel);
        *lock(&self.last_set_aside) = Some(reason);
    }

    /// Reserves room for `bytes`, or says the spool is full.
    fn reserve(&self, bytes: u64) -> Result<(), PublishError> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + bytes <= self.limit).then_some(used + bytes)
            })
            .map(drop)
            .map_err(|_| PublishError::SpoolFull { limit: self.limit })
    }

    fn release(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// The quarantine's files grew by `bytes`: they count against the limit like segments.
    fn grow_quarantine(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::AcqRel);
        self.quarantine_bytes.fetch_add(bytes, Ordering::AcqRel);
    }

    fn shrink_quarantine(&self, bytes: u64) {
        self.release(bytes);
        self.quarantine_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }
}

struct Append {
    frame: Vec<u8>,
    done: oneshot::Sender<Result<(), PublishError>>,
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
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Spool {
    /// Recovers the spool in `settings.dir` and starts its writer and forwarder. Records left
    /// by an earlier run are forwarded before any new one. `kafka` is the forwarder's
    /// producer ([`KafkaPublisher::unbounded`]); records it refuses for good go to
    /// `deadletter`.
    pub fn open(
        settings: &SpoolSettings,
        largest_event: usize,
        kafka: KafkaPublisher,
        deadletter: Arc<str>,
    ) -> Result<Self, SpoolDirError> {
        let max_record_bytes = kafka.max_record_bytes();
        let kafka = Arc::new(kafka);
        let dir = settings.dir.clone();
        let recovered = segments::recover(&dir, settings.on_damage)?;
        if recovered.records > 0 {
            tracing::info!(
                records = recovered.records,
                bytes = recovered.bytes,
                cut_bytes = recovered.cut_bytes,
                "Spool holds records from an earlier run; forwarding them before new ones"
            );
        }
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
        ));
        shared.grow_quarantine(quarantine::bytes_on_disk(&dir));
        let quarantine = Arc::new(quarantine::Quarantine::new(&dir, shared.clone()));

        let (appends, queue) = mpsc::channel();
        let writer_shared = shared.clone();
        let lock = recovered.lock;
        let writer = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || write_loop(writer, &queue, &writer_shared))
            .map_err(|source| SpoolDirError::Io {
                path: dir.clone(),
                source,
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
        let forwarder = std::thread::Builder::new()
            .name("spool-forwarder".into())
            .spawn(move || {
                forwarder.run_until(stopped);
                // The forwarder is the last to touch the directory (its final checkpoint):
                // until then it stays locked against another process.
                drop(lock);
            })
            .map_err(|source| SpoolDirError::Io {
                path: dir.clone(),
                source,
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
        if let Some(reason) = self.shared.failure() {
            return Err(PublishError::Failed(format!(
                "the spool cannot write: {reason}"
            )));
        }
        let frame = segments::encode(record, now_ms());
        let bytes = frame.len() as u64;
        self.shared.reserve(bytes)?;
        let (done, answer) = oneshot::channel();
        let appends = self.appends.read().unwrap_or_else(|e| e.into_inner());
        match appends.as_ref().map(|a| a.send(Append { frame, done })) {
            Some(Ok(())) => Ok(answer),
            _ => {
                self.shared.release(bytes);
                Err(PublishError::Failed("the spool is closed".to_owned()))
            }
        }
    }

    pub fn status(&self) -> SpoolStatus {
        let shared = &self.shared;
        let used = shared.used.load(Ordering::Acquire);
        let oldest = shared.oldest_ms.load(Ordering::Acquire);
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
            has_room: !shared.disk_full.load(Ordering::Acquire)
                && used + shared.largest_event <= shared.limit,
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
    /// with its progress checkpointed. Returns how many records stay spooled.
    async fn drain(&self, deadline: Instant) -> u64 {
        drop(
            self.appends
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(writer) = writer {
            // Quick: the server has stopped, so at most one batch is being written.
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
        let end = *self.shared.committed.borrow();
        let mut acknowledged = self.shared.acknowledged.subscribe();
        let caught_up = tokio::time::timeout_at(
            deadline.into(),
            acknowledged.wait_for(|position| *position >= end),
        )
        .await
        .is_ok_and(|caught_up| caught_up.is_ok());
        let forwarder = self
            .forwarder
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((stop, forwarder)) = forwarder {
            let _ = stop.send(());
            let _ = tokio::task::spawn_blocking(move || forwarder.join()).await;
        }
        if caught_up {
            0
        } else {
            self.shared.records.load(Ordering::Acquire)
        }
    }
}

/// The writer thread: one batch per fsync, answered only after it.
fn write_loop(mut writer: SegmentWriter, queue: &mpsc::Receiver<Append>, shared: &Shared) {
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
                        "Spool volume full; answering 503 spool_full until forwarding frees space: {error}"
                    );
                }
                shared.release(bytes as u64);
                for append in batch.drain(..) {
                    let _ = append.done.send(Err(PublishError::SpoolFull {
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

impl Publisher for Spool {
    fn publish(&self, record: Record) -> PublishFuture<'_> {
        let queued = self.append(&record);
        Box::pin(async move {
            match queued?.await {
                Ok(Ok(())) => Ok(Stored::Spooled),
                Ok(Err(error)) => Err(error),
                Err(_) => Err(PublishError::Failed("the spool writer stopped".to_owned())),
            }
        })
    }
}

/// Lifecycle and health, for the backend that owns the spool.
impl Spool {
    /// Stops taking records and gives the forwarder until `timeout` to drain the spool; what it
    /// cannot send stays on disk for the next start.
    pub async fn flush(&self, timeout: Duration) -> Result<(), PublishError> {
        let left = self.drain(Instant::now() + timeout).await;
        if left == 0 {
            tracing::info!("Spool drained: Kafka has every record");
            Ok(())
        } else {
            Err(PublishError::Failed(format!(
                "{left} records stay in the spool at {}; the next start forwards them",
                self.dir.display()
            )))
        }
    }

    /// Whether Kafka answers for these topics (the spool itself takes records either way).
    pub fn probe(
        &self,
        topics: &[&str],
        timeout: Duration,
    ) -> Result<(), crate::publish::kafka::KafkaUnusable> {
        self.kafka.probe(topics, timeout)
    }

    /// Why the spool cannot go on without a restart (and its recovery), if it cannot.
    pub fn fatal_error(&self) -> Option<String> {
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
            .map(|reason| format!("the spool cannot write: {reason}"))
            .or_else(|| lock(&self.shared.forwarding_failed).clone())
            .or_else(|| writer_ended.then(|| "the spool writer stopped".to_owned()))
            .or_else(|| forwarder_ended.then(|| "the spool forwarder stopped".to_owned()))
            .or_else(|| self.kafka.fatal_error())
    }
}
