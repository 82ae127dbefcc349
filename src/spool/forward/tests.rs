//! A model-based test of the forwarder: random appends, acknowledgements, transient and
//! permanent refusals, whole-batch refusals, purged records that land anyway, producer
//! replacements and restarts, driven against the real forwarder and spool files, with Kafka
//! played by a scripted producer whose partitions are plain vectors (the model).
//!
//! Invariants, checked once everything is delivered:
//! - every record appended (answered 202) reached its partition or the dead-letter topic;
//! - per partition, first occurrences follow log order;
//! - only records Kafka refuses on their own are set aside;
//! - copies are bounded: at most one more per disruption (at most one window sent again).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use rdkafka::error::RDKafkaErrorCode;
use tokio::sync::oneshot;

use super::{Forwarder, Sink};
use crate::config::OnDamage;
use crate::publish::kafka::{Acked, Delivery, Outcome, SendError};
use crate::publish::refusal::Refused;
use crate::publish::{Header, PublishError, Record};
use crate::spool::Shared;
use crate::spool::segments::{self, SegmentWriter};

const CHATS: u64 = 3;
const DEADLETTER: &str = "dlq";

#[derive(Debug, Clone)]
enum Op {
    /// Spool this many records; every `poison_every`-th is one Kafka refuses for good.
    Append(u8),
    /// Kafka acknowledges (or, for a poison record, refuses) the oldest records of a partition.
    Deliver { partition: u64, count: u8 },
    /// The oldest record of a partition fails with an error the producer does not survive
    /// (gapless: the generation is dead from then on).
    Transient { partition: u64 },
    /// The oldest record's whole batch is refused as too large, though the record alone fits.
    BatchRefused { partition: u64 },
    /// The next replacement lets the oldest purged record of each partition land anyway.
    LandOnPurge,
    /// Someone else (the stuck-producer probe) replaces the producer.
    Replace,
    /// The process stops and starts again: in-flight records are resolved, the forwarder
    /// resumes from the checkpoint.
    Restart,
    /// Virtual time passes.
    Wait(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u8..12).prop_map(Op::Append),
        4 => (0..CHATS, 1u8..8).prop_map(|(partition, count)| Op::Deliver { partition, count }),
        1 => (0..CHATS).prop_map(|partition| Op::Transient { partition }),
        1 => (0..CHATS).prop_map(|partition| Op::BatchRefused { partition }),
        1 => Just(Op::LandOnPurge),
        1 => Just(Op::Replace),
        1 => Just(Op::Restart),
        2 => (1u16..2000).prop_map(Op::Wait),
    ]
}

struct InFlight {
    generation: u64,
    partition: u64,
    id: u64,
    poison: bool,
    reply: oneshot::Sender<Outcome>,
}

#[derive(Default)]
struct Kafka {
    failed: tokio::sync::watch::Sender<u64>,
    generation: u64,
    dead: bool,
    in_flight: Vec<InFlight>,
    land_on_purge: bool,
    partitions: HashMap<u64, Vec<u64>>,
    dead_letters: Vec<u64>,
    sent: HashMap<u64, usize>,
    disruptions: usize,
    /// Records acknowledged since the forwarder last started: a replacement must not send
    /// them again (only a restart may, for what was not checkpointed).
    acked: std::collections::HashSet<u64>,
    resent_after_ack: Vec<u64>,
    /// While set, the dead-letter topic answers every letter with this error.
    deadletter_refuses: Option<RDKafkaErrorCode>,
    deadletter_attempts: usize,
    replacements: usize,
}

/// The scripted producer: Kafka as the model sees it.
#[derive(Default)]
struct FakeSink(Mutex<Kafka>);

fn id_of(record: &Record) -> u64 {
    record
        .header("ce_id")
        .and_then(|id| id.parse().ok())
        .expect("test records carry a numeric ce_id")
}

impl Sink for FakeSink {
    fn generation(&self) -> Option<u64> {
        Some(self.0.lock().expect("sink").generation)
    }

    fn send(&self, record: &Record, generation: u64) -> Result<Delivery, SendError> {
        let mut kafka = self.0.lock().expect("sink");
        if generation != kafka.generation {
            return Err(SendError::Replaced);
        }
        if kafka.dead {
            return Err(SendError::Publish(PublishError::ProducerClosed));
        }
        let (reply, delivery) = oneshot::channel();
        let id = id_of(record);
        if &*record.topic == DEADLETTER {
            kafka.deadletter_attempts += 1;
            if let Some(code) = kafka.deadletter_refuses {
                let _ = reply.send(Err(Refused::new(code, "scripted dead-letter refusal")));
                return Ok(delivery);
            }
            kafka.dead_letters.push(id);
            let _ = reply.send(Ok(Acked {
                partition: 0,
                offset: 0,
            }));
            return Ok(delivery);
        }
        *kafka.sent.entry(id).or_default() += 1;
        if kafka.acked.contains(&id) {
            kafka.resent_after_ack.push(id);
        }
        kafka.in_flight.push(InFlight {
            generation,
            partition: id % CHATS,
            id,
            poison: record.header("poison").is_some(),
            reply,
        });
        Ok(delivery)
    }

    fn replace(&self, generation: u64, _why: &str) {
        let mut kafka = self.0.lock().expect("sink");
        if kafka.generation != generation {
            return;
        }
        kafka.resolve_all();
        kafka.generation += 1;
        kafka.replacements += 1;
        kafka.dead = false;
    }

    fn failures(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.lock().expect("sink").failed.subscribe()
    }
}

impl Kafka {
    fn oldest(&self, partition: u64) -> Option<usize> {
        let generation = self.generation;
        self.in_flight
            .iter()
            .position(|f| f.partition == partition && f.generation == generation)
    }

    fn fail(&mut self, at: usize, code: RDKafkaErrorCode) {
        let flight = self.in_flight.remove(at);
        let _ = flight.reply.send(Err(Refused::new(code, "scripted")));
        self.failed.send_modify(|n| *n += 1);
        // Gapless: nothing after a failed batch lands; the producer fails as a whole.
        self.dead = true;
        self.disruptions += 1;
    }

    /// Every in-flight record is purged; with `land_on_purge`, the oldest of each partition
    /// lands first (a purged request the broker had already taken).
    fn resolve_all(&mut self) {
        if std::mem::take(&mut self.land_on_purge) && !self.dead {
            for partition in 0..CHATS {
                if let Some(first) = self.in_flight.iter().find(|f| f.partition == partition)
                    && !first.poison
                {
                    let id = first.id;
                    self.partitions.entry(partition).or_default().push(id);
                }
            }
        }
        for flight in self.in_flight.drain(..) {
            let _ = flight
                .reply
                .send(Err(Refused::new(RDKafkaErrorCode::PurgeInflight, "purged")));
        }
    }

    fn deliver(&mut self, partition: u64, count: u8) {
        for _ in 0..count {
            if self.dead {
                return;
            }
            let Some(at) = self.oldest(partition) else {
                return;
            };
            if self.in_flight[at].poison {
                self.fail(at, RDKafkaErrorCode::PolicyViolation);
                return;
            }
            let flight = self.in_flight.remove(at);
            self.partitions
                .entry(partition)
                .or_default()
                .push(flight.id);
            self.acked.insert(flight.id);
            let _ = flight.reply.send(Ok(Acked {
                partition: partition as i32,
                offset: 0,
            }));
        }
    }
}

fn record(id: u64, poison: bool) -> Record {
    let mut headers = vec![(Header::Borrowed("ce_id"), Header::Owned(id.to_string()))];
    if poison {
        headers.push((Header::Borrowed("poison"), Header::Borrowed("1")));
    }
    Record {
        topic: Arc::from("events"),
        key: format!("chat-{}", id % CHATS),
        headers,
        value: format!("{{\"id\":{id}}}").into_bytes(),
    }
}

/// The real spool files and forwarder around the scripted producer.
struct Harness {
    dir: PathBuf,
    sink: Arc<FakeSink>,
    writer: SegmentWriter,
    lock: Option<std::fs::File>,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    appended: Vec<u64>,
    poison: Vec<u64>,
}

impl Harness {
    fn open(dir: PathBuf, sink: Arc<FakeSink>, appended: Vec<u64>, poison: Vec<u64>) -> Self {
        let recovered = segments::recover(&dir, OnDamage::Refuse).expect("recover");
        let writer = SegmentWriter::new(&dir, recovered.next_segment, 4 << 10);
        let shared = Arc::new(Shared::new(
            u64::MAX,
            0,
            &recovered,
            writer.end(),
            Arc::default(),
        ));
        let (stop, stopped) = oneshot::channel();
        let forwarder = Forwarder::new(
            &dir,
            recovered.start,
            shared.clone(),
            sink.clone(),
            Arc::new(crate::spool::quarantine::Quarantine::new(
                &dir,
                shared.clone(),
            )),
            Arc::from(DEADLETTER),
            1 << 20,
        );
        let task = tokio::spawn(forwarder.run(stopped));
        Self {
            dir,
            sink,
            writer,
            lock: Some(recovered.lock),
            shared,
            stop: Some(stop),
            task: Some(task),
            appended,
            poison,
        }
    }

    fn append(&mut self, count: u8, poison_every: u64) {
        for _ in 0..count {
            let id = self.appended.len() as u64;
            let poison = poison_every > 0 && id % poison_every == poison_every - 1;
            let (end, _) = self
                .writer
                .append(&segments::encode(&record(id, poison), id))
                .expect("append");
            self.shared
                .records
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            self.shared.committed.send_replace(end);
            self.appended.push(id);
            if poison {
                self.poison.push(id);
            }
        }
    }

    async fn restart(mut self) -> Self {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // A dying process: whatever its producer held resolves one way or the other.
        {
            let mut kafka = self.sink.0.lock().expect("sink");
            let generation = kafka.generation;
            drop(kafka);
            self.sink.replace(generation, "restart");
            kafka = self.sink.0.lock().expect("sink");
            kafka.disruptions += 1;
            // What was acknowledged since the last checkpoint is sent again after a restart.
            kafka.acked.clear();
        }
        if let Some(task) = self.task.take() {
            task.await.expect("forwarder ends");
        }
        drop(self.lock.take());
        let (dir, sink) = (self.dir.clone(), self.sink.clone());
        let (appended, poison) = (
            std::mem::take(&mut self.appended),
            std::mem::take(&mut self.poison),
        );
        Harness::open(dir, sink, appended, poison)
    }
}

async fn run_case(ops: Vec<Op>, poison_every: u64, case: usize) {
    let dir = std::env::temp_dir().join(format!(
        "omnichat-bridge-model-{}-{case}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let sink = Arc::new(FakeSink::default());
    let mut harness = Harness::open(dir.clone(), sink.clone(), Vec::new(), Vec::new());
    for op in ops {
        match op {
            Op::Append(count) => harness.append(count, poison_every),
            Op::Deliver { partition, count } => {
                sink.0.lock().expect("sink").deliver(partition, count)
            }
            Op::Transient { partition } => {
                let mut kafka = sink.0.lock().expect("sink");
                if let Some(at) = kafka.oldest(partition).filter(|_| !kafka.dead) {
                    kafka.fail(at, RDKafkaErrorCode::NotEnoughReplicas);
                }
            }
            Op::BatchRefused { partition } => {
                let mut kafka = sink.0.lock().expect("sink");
                let generation = kafka.generation;
                let in_flight = kafka
                    .in_flight
                    .iter()
                    .filter(|f| f.generation == generation)
                    .count();
                // A batch, not a record alone: a lone record refused is poison by definition.
                if in_flight >= 2
                    && let Some(at) = kafka.oldest(partition).filter(|_| !kafka.dead)
                {
                    kafka.fail(at, RDKafkaErrorCode::MessageSizeTooLarge);
                }
            }
            Op::LandOnPurge => sink.0.lock().expect("sink").land_on_purge = true,
            Op::Replace => {
                let generation = sink.0.lock().expect("sink").generation;
                sink.replace(generation, "stuck");
                sink.0.lock().expect("sink").disruptions += 1;
            }
            Op::Restart => harness = harness.restart().await,
            Op::Wait(ms) => tokio::time::sleep(Duration::from_millis(u64::from(ms))).await,
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    // Kafka heals: everything in flight is delivered until the spool is empty.
    for _ in 0..5_000 {
        if harness
            .shared
            .records
            .load(std::sync::atomic::Ordering::Acquire)
            == 0
        {
            break;
        }
        for partition in 0..CHATS {
            sink.0.lock().expect("sink").deliver(partition, u8::MAX);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let appended = harness.appended.clone();
    let poison = harness.poison.clone();
    let harness = harness.restart().await;
    drop(harness);
    let kafka = sink.0.lock().expect("sink");

    for id in &appended {
        let landed = kafka
            .partitions
            .get(&(id % CHATS))
            .is_some_and(|p| p.contains(id));
        let set_aside = kafka.dead_letters.contains(id);
        assert!(landed || set_aside, "record {id} was lost");
        if poison.contains(id) {
            assert!(!landed, "poison record {id} landed");
        } else {
            assert!(
                !set_aside,
                "record {id} was set aside though Kafka takes it alone"
            );
        }
    }
    assert!(
        kafka.resent_after_ack.is_empty(),
        "records sent again after Kafka acknowledged them: {:?}",
        kafka.resent_after_ack
    );
    for partition in 0..CHATS {
        let landed = kafka
            .partitions
            .get(&partition)
            .cloned()
            .unwrap_or_default();
        let mut first = Vec::new();
        for id in &landed {
            if !first.contains(id) {
                first.push(*id);
            }
        }
        let expected: Vec<u64> = appended
            .iter()
            .copied()
            .filter(|id| id % CHATS == partition && !poison.contains(id))
            .collect();
        assert_eq!(
            first, expected,
            "partition {partition} out of order: {landed:?}"
        );
        for id in &expected {
            let copies = landed.iter().filter(|l| *l == id).count();
            assert!(
                copies <= 1 + kafka.disruptions,
                "record {id} landed {copies} times after {} disruptions",
                kafka.disruptions
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

mod stuck;

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_forwarder_never_loses_reorders_or_floods_whatever_kafka_does(
        ops in proptest::collection::vec(op(), 1..60),
        poison_every in prop_oneof![Just(0u64), 3u64..9],
    ) {
        static CASE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let case = CASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        runtime.block_on(run_case(ops, poison_every, case));
    }
}
