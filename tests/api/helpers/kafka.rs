//! Reading the broker back, and what consumers would check of what they read.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

/// A record as a consumer sees it.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub headers: HashMap<String, String>,
    pub value: Vec<u8>,
}

impl ReadRecord {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.value).expect("record value is JSON")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

fn consumer(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("test-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .expect("consumer")
}

pub fn partition_count(bootstrap: &str, topic: &str) -> i32 {
    let consumer = consumer(bootstrap);
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    metadata.topics()[0].partitions().len() as i32
}

/// The number of records in a topic (sum of high watermarks; topics start empty).
pub async fn record_count(bootstrap: &str, topic: &str) -> i64 {
    let bootstrap = bootstrap.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer = consumer(&bootstrap);
        (0..partition_count(&bootstrap, &topic))
            .map(|p| {
                let (low, high) = consumer
                    .fetch_watermarks(&topic, p, Duration::from_secs(10))
                    .expect("watermarks");
                high - low
            })
            .sum()
    })
    .await
    .expect("watermark task")
}

/// Reads every partition of `topic` from the start until `count` records arrived (or the
/// timeout passed, then returns what it has), in partition-then-offset order.
pub async fn read_records(
    bootstrap: &str,
    topic: &str,
    count: usize,
    timeout: Duration,
) -> Vec<ReadRecord> {
    read_records_then_idle(bootstrap, topic, count, timeout, Duration::ZERO).await
}

/// Like [`read_records`], but once `count` records arrived goes on reading until nothing more
/// arrives for `idle`.
async fn read_records_then_idle(
    bootstrap: &str,
    topic: &str,
    count: usize,
    timeout: Duration,
    idle: Duration,
) -> Vec<ReadRecord> {
    let bootstrap = bootstrap.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer = consumer(&bootstrap);
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partition_count(&bootstrap, &topic) {
            assignment
                .add_partition_offset(&topic, partition, Offset::Beginning)
                .expect("assignment");
        }
        consumer.assign(&assignment).expect("assign");
        let deadline = Instant::now() + timeout;
        let mut records = Vec::new();
        let mut last_arrival = Instant::now();
        while Instant::now() < deadline && (records.len() < count || last_arrival.elapsed() < idle)
        {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(message)) => {
                    last_arrival = Instant::now();
                    let headers = message
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| {
                                    (
                                        h.key.to_owned(),
                                        String::from_utf8_lossy(h.value.unwrap_or_default())
                                            .into_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    records.push(ReadRecord {
                        partition: message.partition(),
                        offset: message.offset(),
                        key: message
                            .key()
                            .map(|k| String::from_utf8_lossy(k).into_owned()),
                        headers,
                        value: message.payload().unwrap_or_default().to_vec(),
                    });
                }
                Some(Err(error)) => panic!("consumer error: {error}"),
                None => {}
            }
        }
        records.sort_by_key(|r| (r.partition, r.offset));
        records
    })
    .await
    .expect("consumer task")
}

/// Kafka's Java default partitioner's hash (`Utils.murmur2`), written from its source
/// independently of librdkafka, to check where keys land.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Where Kafka's Java producer puts a key.
pub fn java_partition(key: &str, partitions: i32) -> i32 {
    (murmur2(key.as_bytes()) & 0x7fff_ffff) % partitions
}

/// The event JSON Schema from the repo, compiled once.
pub fn schema() -> &'static jsonschema::Validator {
    static SCHEMA: OnceLock<jsonschema::Validator> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema/event-v1.json"))
                .expect("schema file");
        let schema: Value = serde_json::from_str(&text).expect("schema is JSON");
        jsonschema::validator_for(&schema).expect("schema compiles")
    })
}

pub fn assert_valid_event(value: &Value) {
    let errors: Vec<String> = schema().iter_errors(value).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "record does not match schema/event-v1.json: {errors:?}\n{value}"
    );
}

#[test]
fn murmur2_matches_kafkas_published_test_vectors() {
    // From Kafka's UtilsTest.testMurmur2.
    for (input, expected) in [
        ("21", -973_932_308),
        ("foobar", -790_332_482),
        ("a-little-bit-long-string", -985_981_536),
        ("a-little-bit-longer-string", -1_486_304_829),
        (
            "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
            -58_897_971,
        ),
        ("abc", 479_470_107),
    ] {
        assert_eq!(murmur2(input.as_bytes()), expected, "{input}");
    }
}

/// Reads `topic` from the start until at least `at_least` records arrived and then nothing
/// more for a second: for topics where at-least-once delivery may have added duplicates.
pub async fn read_all_records(bootstrap: &str, topic: &str, at_least: usize) -> Vec<ReadRecord> {
    read_records_then_idle(
        bootstrap,
        topic,
        at_least,
        Duration::from_secs(60),
        Duration::from_secs(1),
    )
    .await
}

/// Each number once, where it first appears: what a consumer that drops repeated event ids
/// sees.
pub fn first_occurrences(numbers: &[usize]) -> Vec<usize> {
    let mut seen = std::collections::HashSet::new();
    numbers
        .iter()
        .copied()
        .filter(|n| seen.insert(*n))
        .collect()
}

/// The `text` numbers of one chat's message records, in the order read.
pub fn texts_of(records: &[ReadRecord], chat: &str) -> Vec<usize> {
    records
        .iter()
        .filter(|r| r.key.as_deref() == Some(chat))
        .map(|r| {
            r.json()["message"]["text"]
                .as_str()
                .expect("text")
                .parse()
                .expect("a number")
        })
        .collect()
}

/// Asserts that `chat-0` to `chat-{chats-1}` each hold messages 0 to `per_chat - 1`, in order
/// and once, and nothing else is there.
pub fn assert_each_chat_in_order(records: &[ReadRecord], chats: usize, per_chat: usize) {
    assert_eq!(records.len(), chats * per_chat);
    for c in 0..chats {
        let chat = format!("chat-{c}");
        assert_eq!(
            texts_of(records, &chat),
            (0..per_chat).collect::<Vec<_>>(),
            "{chat}"
        );
    }
}

/// The event ids of 202 answers.
pub fn ids_of(answers: &[Value]) -> Vec<String> {
    answers
        .iter()
        .map(|answer| answer["id"].as_str().expect("an id").to_owned())
        .collect()
}

/// Asserts that every id is on a record of the topic.
/// Reads until the topic stays quiet, not until as many records as ids arrived: duplicates
/// (a 503'd attempt that landed, then its retry) would end the read before the last ids.
pub async fn assert_all_stored(bootstrap: &str, topic: &str, accepted: &[String]) {
    let records = read_records_then_idle(
        bootstrap,
        topic,
        accepted.len(),
        Duration::from_secs(30),
        Duration::from_secs(1),
    )
    .await;
    let stored: std::collections::HashSet<&str> =
        records.iter().filter_map(|r| r.header("ce_id")).collect();
    let lost = accepted
        .iter()
        .filter(|id| !stored.contains(id.as_str()))
        .count();
    assert_eq!(
        lost,
        0,
        "{lost} of {} events answered 202 are not in Kafka ({} records read, {} distinct ids)",
        accepted.len(),
        records.len(),
        stored.len()
    );
}
