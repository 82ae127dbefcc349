//! Re-driving the dead-letter topic: read it partition by partition, normalize each body again
//! and publish what normalizes, in the topic's order within each partition.
//!
//! The position is a consumer group's committed offsets. A run with no range starts where the
//! group stopped; `--all` starts at the beginning; both commit, only forward, the offset after
//! the last dead letter whose fate is settled (published and acknowledged, or still failing).
//! A run over a time or offset range commits nothing, so it never hides dead letters it
//! skipped from the next plain run. A run reads each partition up to the end it finds (the
//! fetch's end, not ListOffsets) and stops.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::Write;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use time::OffsetDateTime;

use super::RedriveError;
use super::options::{Options, Range};
use super::{Summary, refusal_code, renormalize};
use crate::config::Settings;
use crate::event::headers;
use crate::event::{DEAD_LETTER_TYPE, Normalizer};
use crate::publish::kafka::KafkaPublisher;
use crate::publish::{Header, PublishFuture, Publisher, Record};

/// How long Kafka may stay silent (no record, no end of partition) before a run gives up.
const SILENCE: Duration = Duration::from_secs(30);
/// Publishes awaiting their acknowledgement at once.
const MAX_PENDING: usize = 1_000;
/// How often a long run says how far it got.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// One dead letter on its way: settled once its event is acknowledged (or it needs nothing).
struct Pending<'a> {
    partition: i32,
    offset: i64,
    publish: Option<PublishFuture<'a>>,
}

/// Runs over the dead-letter topic as `options` say. Returns what was done, and an error if
/// the run stopped early (Kafka unreachable, an event not acknowledged); what was settled
/// before the error is committed.
pub async fn run(
    settings: &Settings,
    options: &Options,
    range: &Range,
    out: &mut (impl Write + Send),
) -> (Summary, Result<(), RedriveError>) {
    let mut summary = Summary::default();
    let result = match Run::new(settings, options, range) {
        Ok(mut run) => {
            let result = run.go(&mut summary, out).await;
            let committed = run.commit();
            result.and(committed)
        }
        Err(error) => Err(error),
    };
    (summary, result)
}

struct Run<'s> {
    topic: String,
    consumer: StreamConsumer,
    publisher: KafkaPublisher,
    normalizer: Normalizer,
    range: &'s Range,
    dry_run: bool,
    partitions: Vec<i32>,
    /// The group's committed offsets at start: a commit never moves below them.
    committed: HashMap<i32, i64>,
    /// The offset after the last settled dead letter, per partition.
    settled: HashMap<i32, i64>,
}

impl<'s> Run<'s> {
    fn new(settings: &Settings, options: &Options, range: &'s Range) -> Result<Self, RedriveError> {
        let topic = settings.topics.deadletter.to_string();
        let consumer = consumer(settings, &options.group)?;
        let publisher = KafkaPublisher::new(&settings.kafka, settings.publish_timeout)?;
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .map_err(RedriveError::Unreachable)?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(RedriveError::NoTopic(topic));
        }
        let mut list = TopicPartitionList::new();
        for partition in &partitions {
            list.add_partition(&topic, *partition);
        }
        let committed: HashMap<i32, i64> = consumer
            .committed_offsets(list.clone(), Duration::from_secs(10))
            .map_err(RedriveError::Position)?
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(offset) => Some((e.partition(), offset)),
                _ => None,
            })
            .collect();
        // A range reads from the beginning and skips what is before it: an offset past a
        // partition's end would never report that end.
        for partition in &partitions {
            let start = match range.follows_group() {
                true => committed
                    .get(partition)
                    .map_or(Offset::Beginning, |at| Offset::Offset(*at)),
                false => Offset::Beginning,
            };
            list.set_partition_offset(&topic, *partition, start)
                .map_err(|source| RedriveError::Read {
                    topic: topic.clone(),
                    source,
                })?;
        }
        consumer
            .assign(&list)
            .map_err(|source| RedriveError::Read {
                topic: topic.clone(),
                source,
            })?;
        Ok(Self {
            topic,
            consumer,
            publisher,
            normalizer: Normalizer::new(settings.topics.clone(), settings.event_source.clone()),
            range,
            dry_run: options.dry_run,
            partitions,
            committed,
            settled: HashMap::new(),
        })
    }

    async fn go(
        &mut self,
        summary: &mut Summary,
        out: &mut (impl Write + Send),
    ) -> Result<(), RedriveError> {
        let mut settled = HashMap::new();
        let outcome = self.read_all(summary, &mut settled, out).await;
        self.settled = settled;
        outcome
    }

    /// Reads every partition to its end (or the range's), publishing what normalizes now with a
    /// bounded number of publishes pending; each settled dead letter goes into `settled`.
    async fn read_all(
        &self,
        summary: &mut Summary,
        settled: &mut HashMap<i32, i64>,
        out: &mut (impl Write + Send),
    ) -> Result<(), RedriveError> {
        let mut open: BTreeSet<i32> = self.partitions.iter().copied().collect();
        let mut pending: VecDeque<Pending<'_>> = VecDeque::new();
        let mut progress = Instant::now();
        while let Some((partition, offset, timestamp, letter)) = self.next_letter(&mut open).await?
        {
            let publish = self.examine(&letter, partition, offset, timestamp, summary, out);
            pending.push_back(Pending {
                partition,
                offset,
                publish,
            });
            while pending.len() > MAX_PENDING {
                settle(pending.pop_front(), summary, settled).await?;
            }
            if progress.elapsed() >= PROGRESS_EVERY {
                progress = Instant::now();
                eprintln!(
                    "redrive: {} read, {} re-driven, {} still failing, {} skipped; at {}[{partition}]@{offset}",
                    summary.read,
                    summary.redriven,
                    summary.still_failing_total(),
                    summary.skipped,
                    self.topic
                );
            }
        }
        while let Some(item) = pending.pop_front() {
            settle(Some(item), summary, settled).await?;
        }
        Ok(())
    }

    /// The next record of a partition still open, with its partition, offset and timestamp;
    /// `None` once every partition reached its end.
    async fn next_letter(
        &self,
        open: &mut BTreeSet<i32>,
    ) -> Result<Option<(i32, i64, Option<i64>, Record)>, RedriveError> {
        while !open.is_empty() {
            let message = match tokio::time::timeout(SILENCE, self.consumer.recv()).await {
                Err(_) => {
                    return Err(RedriveError::Silent {
                        topic: self.topic.clone(),
                        silence: SILENCE,
                    });
                }
                Ok(Err(KafkaError::PartitionEOF(partition))) => {
                    open.remove(&partition);
                    continue;
                }
                Ok(Err(source)) => {
                    return Err(RedriveError::Read {
                        topic: self.topic.clone(),
                        source,
                    });
                }
                Ok(Ok(message)) => message,
            };
            let (partition, offset) = (message.partition(), message.offset());
            if !open.contains(&partition) {
                continue;
            }
            if self.range.to_offset.is_some_and(|to| offset >= to) {
                open.remove(&partition);
                continue;
            }
            let timestamp = message.timestamp().to_millis();
            return Ok(Some((partition, offset, timestamp, letter(&message))));
        }
        Ok(None)
    }

    /// Counts one dead letter and, when it normalizes now (and this is no dry run), starts
    /// publishing its event.
    fn examine(
        &self,
        letter: &Record,
        partition: i32,
        offset: i64,
        timestamp: Option<i64>,
        summary: &mut Summary,
        out: &mut (impl Write + Send),
    ) -> Option<PublishFuture<'_>> {
        if !self.range.holds(offset, timestamp)
            || letter.header(headers::TYPE) != Some(DEAD_LETTER_TYPE)
        {
            summary.skipped += 1;
            return None;
        }
        summary.read += 1;
        let fallback = timestamp
            .and_then(|ms| {
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
            })
            .unwrap_or_else(OffsetDateTime::now_utc);
        let at = format!("{}[{partition}]@{offset}", self.topic);
        match renormalize(&self.normalizer, letter, fallback) {
            Err(rejection) => {
                let code = rejection.code();
                if self.dry_run {
                    let _ = writeln!(out, "{at}: still fails: {code}");
                }
                summary.fail(code.to_owned());
                None
            }
            Ok(event) if self.dry_run => {
                let _ = writeln!(
                    out,
                    "{at}: would re-drive as {} {} to {}",
                    event.header(headers::TYPE).unwrap_or_default(),
                    event.header(headers::ID).unwrap_or_default(),
                    event.topic
                );
                summary.redriven += 1;
                None
            }
            Ok(event) => Some(self.publisher.publish(event)),
        }
    }

    /// Commits what is settled, forward only, when this run keeps the group's position.
    fn commit(&self) -> Result<(), RedriveError> {
        if self.dry_run || !self.range.keeps_position() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for (partition, next) in &self.settled {
            if self.committed.get(partition).is_none_or(|old| next > old) {
                list.add_partition_offset(&self.topic, *partition, Offset::Offset(*next))
                    .map_err(RedriveError::Commit)?;
            }
        }
        if list.count() == 0 {
            return Ok(());
        }
        self.consumer
            .commit(&list, CommitMode::Sync)
            .map_err(RedriveError::Commit)
    }
}

/// Waits for one dead letter's event, if it has one, and records it as settled.
async fn settle(
    item: Option<Pending<'_>>,
    summary: &mut Summary,
    settled: &mut HashMap<i32, i64>,
) -> Result<(), RedriveError> {
    let Some(item) = item else { return Ok(()) };
    if let Some(publish) = item.publish {
        match publish.await {
            Ok(_) => summary.redriven += 1,
            Err(error) => match refusal_code(&error) {
                Some(code) => summary.fail(code),
                None => {
                    return Err(RedriveError::NotStored {
                        partition: item.partition,
                        offset: item.offset,
                        source: error,
                    });
                }
            },
        }
    }
    settled.insert(item.partition, item.offset + 1);
    Ok(())
}

/// The consumer of the dead-letter topic: the operator's `KAFKA_*` properties (brokers,
/// security), no automatic commits, and an end-of-partition signal so a run knows it is done.
fn consumer(settings: &Settings, group: &str) -> Result<StreamConsumer, RedriveError> {
    let mut config = ClientConfig::new();
    config.set("client.id", "omnichat-bridge-redrive");
    for property in &settings.kafka.properties {
        if is_consumer_property(&property.name) {
            config.set(&property.name, property.value.expose());
        }
    }
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest");
    config.create().map_err(RedriveError::Consumer)
}

/// Properties a consumer shares with the bridge's producer: connection, security and client
/// identity. Producer tuning (linger, compression, batching) stays with the producer.
fn is_consumer_property(name: &str) -> bool {
    [
        "bootstrap.servers",
        "metadata.broker.list",
        "security.protocol",
        "client.id",
        "client.rack",
        "broker.address.family",
        "socket.",
        "ssl.",
        "ssl_",
        "sasl.",
        "enable.ssl",
        "reconnect.backoff",
        "topic.metadata",
        "metadata.max.age.ms",
    ]
    .iter()
    .any(|prefix| name.starts_with(prefix))
}

/// A dead letter as a [`Record`]: key, headers and the body as received.
fn letter(message: &impl Message) -> Record {
    let text =
        |bytes: Option<&[u8]>| String::from_utf8_lossy(bytes.unwrap_or_default()).into_owned();
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| {
                    (
                        Header::Owned(h.key.to_owned()),
                        Header::Owned(text(h.value)),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Record {
        topic: std::sync::Arc::from(message.topic()),
        key: text(message.key()),
        headers,
        value: message.payload().unwrap_or_default().to_vec(),
    }
}
