use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use omnichat_bridge::config::Settings;
use omnichat_bridge::startup::Application;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use tokio::sync::oneshot;

pub const TOKEN: &str = "integration-test-token-0123456789";
pub const PARTITIONS: i32 = 4;

pub const SEED: &str = include_str!("../fixtures/seed-message.json");

/// The broker the test script started.
pub fn bootstrap() -> String {
    std::env::var("OMNICHAT_TEST_BOOTSTRAP").expect(
        "OMNICHAT_TEST_BOOTSTRAP is not set: run the tests with scripts/test.sh, which starts the broker",
    )
}

/// A message webhook for a chat, numbered so order can be checked.
pub fn message(chat: &str, n: usize) -> String {
    format!(
        r#"{{"objectId":"msg-{chat}-{n}","resource":"Message","event":"CREATE","timestamp":{ts},"payload":{{"chat":{{"className":"Chat","objectId":"{chat}"}},"platform":"WAB-OMNICHAT","status":"INCOMING_RECEIVED","system":false,"type":"TEXT","text":"{n}","createdAt":"2023-04-18T13:47:35.255Z","updatedAt":"2023-04-18T13:47:35.255Z","objectId":"msg-{chat}-{n}"}}}}"#,
        ts = 1_681_825_655_283u64 + n as u64
    )
}

/// Topic names of one test, so tests never see each other's records.
#[derive(Debug, Clone)]
pub struct TestTopics {
    pub messages: String,
    pub interactions: String,
    pub orders: String,
    pub other: String,
    pub deadletter: String,
}

impl TestTopics {
    pub fn new() -> Self {
        let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
        Self {
            messages: format!("{prefix}.messages"),
            interactions: format!("{prefix}.interactions"),
            orders: format!("{prefix}.orders"),
            other: format!("{prefix}.other"),
            deadletter: format!("{prefix}.deadletter"),
        }
    }

    pub fn all(&self) -> [&str; 5] {
        [
            &self.messages,
            &self.interactions,
            &self.orders,
            &self.other,
            &self.deadletter,
        ]
    }

    pub fn vars(&self) -> Vec<(String, String)> {
        [
            ("BRIDGE_TOPIC_MESSAGES", &self.messages),
            ("BRIDGE_TOPIC_INTERACTIONS", &self.interactions),
            ("BRIDGE_TOPIC_ORDERS", &self.orders),
            ("BRIDGE_TOPIC_OTHER", &self.other),
            ("BRIDGE_TOPIC_DEADLETTER", &self.deadletter),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.clone()))
        .collect()
    }

    pub async fn create(&self, bootstrap: &str) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .create()
            .expect("admin client");
        let topics: Vec<NewTopic<'_>> = self
            .all()
            .iter()
            .map(|name| NewTopic::new(name, PARTITIONS, TopicReplication::Fixed(1)))
            .collect();
        let results = admin
            .create_topics(
                &topics,
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .expect("create topics");
        for result in results {
            result.expect("topic created");
        }
    }
}

/// A running bridge.
pub struct TestApp {
    pub address: String,
    pub admin_address: String,
    pub topics: TestTopics,
    pub bootstrap: String,
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    pub stopped: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

pub fn base_vars(bootstrap: &str, topics: &TestTopics) -> Vec<(String, String)> {
    let mut vars = vec![
        ("KAFKA_BOOTSTRAP_SERVERS".to_owned(), bootstrap.to_owned()),
        ("BRIDGE_LISTEN_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
        ("BRIDGE_ADMIN_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
        ("BRIDGE_AUTH_TOKENS".to_owned(), TOKEN.to_owned()),
        ("BRIDGE_SHUTDOWN_DELAY_MS".to_owned(), "0".to_owned()),
        ("BRIDGE_SHUTDOWN_TIMEOUT_MS".to_owned(), "10000".to_owned()),
    ];
    vars.extend(topics.vars());
    vars
}

/// Creates fresh topics and boots the bridge against the test broker.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

pub async fn spawn_app_with(overrides: &[(&str, &str)]) -> TestApp {
    let bootstrap = bootstrap();
    let topics = TestTopics::new();
    topics.create(&bootstrap).await;
    spawn_app_on(&bootstrap, topics, overrides).await
}

pub async fn spawn_app_on(
    bootstrap: &str,
    topics: TestTopics,
    overrides: &[(&str, &str)],
) -> TestApp {
    init_logs();
    let mut vars = base_vars(bootstrap, &topics);
    vars.extend(
        overrides
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let settings = Settings::from_vars(vars).expect("test settings are valid");
    let app = Application::build(settings).expect("app builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let admin_address = format!("http://127.0.0.1:{}", app.admin_port());
    let (tx, rx) = oneshot::channel();
    let stopped = tokio::spawn(app.run_until_stopped(async {
        let _ = rx.await;
    }));
    TestApp {
        address,
        admin_address,
        topics,
        bootstrap: bootstrap.to_owned(),
        client: reqwest::Client::new(),
        shutdown: Some(tx),
        stopped: Some(stopped),
    }
}

fn init_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if std::env::var("TEST_LOG").is_ok() {
            omnichat_bridge::telemetry::init(omnichat_bridge::config::LogFormat::Text);
        }
    });
}

impl TestApp {
    pub fn webhook_url(&self) -> String {
        format!("{}/webhooks/omnichat", self.address)
    }

    pub async fn post(&self, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client
            .post(self.webhook_url())
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request sent")
    }

    /// Posts and expects a 202, returning the answer's body.
    pub async fn post_accepted(&self, body: impl Into<reqwest::Body>) -> Value {
        let response = self.post(body).await;
        let status = response.status().as_u16();
        let answer: Value = response.json().await.expect("JSON answer");
        assert_eq!(status, 202, "{answer}");
        answer
    }

    pub async fn get_admin(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.admin_address))
            .send()
            .await
            .expect("admin request")
    }

    pub async fn metrics(&self) -> String {
        self.get_admin("/metrics")
            .await
            .text()
            .await
            .expect("metrics")
    }

    /// Waits for readiness, so the first requests do not race the producer's first metadata.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.get_admin("/readyz").await.status() == 200 {
                return;
            }
            assert!(Instant::now() < deadline, "bridge never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for readiness to report the outage (503).
    pub async fn wait_not_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.get_admin("/readyz").await.status() != 503 {
            assert!(
                Instant::now() < deadline,
                "readiness never noticed the outage"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Posts until a 202 comes back (each attempt bounded by the publish deadline; only 503s
    /// are acceptable meanwhile), returning the answer.
    pub async fn post_until_accepted(&self, body: String, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let response = self.post(body.clone()).await;
            let status = response.status().as_u16();
            let answer: Value = response.json().await.unwrap_or_default();
            if status == 202 {
                return answer;
            }
            assert_eq!(status, 503, "{answer}");
            assert!(Instant::now() < deadline, "never accepted again: {answer}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs the shutdown sequence and waits for it to finish.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(stopped) = self.stopped.take() {
            stopped.await.expect("app task").expect("clean shutdown");
        }
    }

    pub async fn read(&self, topic: &str, count: usize) -> Vec<ReadRecord> {
        read_records(&self.bootstrap, topic, count, Duration::from_secs(20)).await
    }
}

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

/// A local port with nothing listening on it (for a moment).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
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

/// Concurrent senders posting numbered messages (one chat each) until told to stop; each
/// returns the event ids it was answered 202 for. Only 202 and 503 are acceptable answers;
/// connection errors (a listener that closed) are retried until the stop.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    senders: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

pub fn start_load(url: &str, senders: usize) -> Load {
    use std::sync::atomic::Ordering;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = reqwest::Client::new();
    let senders = (0..senders)
        .map(|sender| {
            let (client, url, stop) = (client.clone(), url.to_owned(), stop.clone());
            tokio::spawn(async move {
                let mut accepted = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) && n < 20_000 {
                    let body = message(&format!("chat-{sender}"), n);
                    match client.post(&url).bearer_auth(TOKEN).body(body).send().await {
                        Ok(response) if response.status() == 202 => {
                            let answer: Value = response.json().await.expect("json");
                            accepted.push(answer["id"].as_str().expect("id").to_owned());
                            n += 1;
                        }
                        Ok(response) => {
                            assert_eq!(response.status(), 503, "only 202 or 503 while stopping")
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
                accepted
            })
        })
        .collect();
    Load { stop, senders }
}

impl Load {
    /// Stops the senders; returns every event id answered 202.
    pub async fn finish(self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut accepted = Vec::new();
        for sender in self.senders {
            accepted.extend(sender.await.expect("sender"));
        }
        accepted
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

/// Owned variables as the `(&str, &str)` overrides `spawn_app_on` and `mock_setup` take.
pub fn overrides(vars: &[(String, String)]) -> Vec<(&str, &str)> {
    vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// A fresh directory for a spool, under the test target's temporary directory.
pub fn spool_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("spool-{}", uuid::Uuid::new_v4().simple()))
}

/// Overrides that put a bridge in spool mode on `dir`.
pub fn spool_vars(dir: &std::path::Path) -> Vec<(String, String)> {
    vec![
        ("BRIDGE_ACK_MODE".into(), "spool".into()),
        ("BRIDGE_SPOOL_DIR".into(), dir.display().to_string()),
    ]
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

impl TestApp {
    /// `/readyz`'s status and body.
    pub async fn readiness(&self) -> (u16, Value) {
        let response = self.get_admin("/readyz").await;
        let status = response.status().as_u16();
        (status, response.json().await.expect("readiness body"))
    }

    /// Waits until readiness reports an empty spool (everything acknowledged by Kafka).
    pub async fn wait_spool_drained(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let (_, body) = self.readiness().await;
            if body["spool"]["records"] == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "the spool never drained: {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The real binary as a child process, killed when dropped.
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The real binary on free ports, once its admin port answers.
pub struct BridgeProcess {
    pub process: Running,
    /// The webhook URL.
    pub url: String,
    /// The admin listener's base URL.
    pub admin: String,
    /// A client that keeps no idle connection, like many independent senders.
    pub client: reqwest::Client,
}

/// Starts the binary with `vars` and its listen and admin addresses on free ports.
pub async fn spawn_bridge(mut vars: Vec<(String, String)>) -> BridgeProcess {
    let (port, admin_port) = (free_port(), free_port());
    vars.push(("BRIDGE_LISTEN_ADDR".into(), format!("127.0.0.1:{port}")));
    vars.push((
        "BRIDGE_ADMIN_ADDR".into(),
        format!("127.0.0.1:{admin_port}"),
    ));
    let process = Running(
        std::process::Command::new(env!("CARGO_BIN_EXE_omnichat-bridge"))
            .env_clear()
            .envs(vars)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the bridge starts"),
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let admin = format!("http://127.0.0.1:{admin_port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.get(format!("{admin}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "the bridge never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    BridgeProcess {
        process,
        url: format!("http://127.0.0.1:{port}/webhooks/omnichat"),
        admin,
        client,
    }
}
