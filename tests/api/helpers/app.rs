//! The bridge under test: in-process on the test broker, or as the real binary.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use omnichat_bridge::config::Settings;
use omnichat_bridge::startup::Application;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use serde_json::Value;
use tokio::sync::oneshot;

use super::*;

pub const TOKEN: &str = "integration-test-token-0123456789";
pub const PARTITIONS: i32 = 4;

pub const SEED: &str = include_str!("../../fixtures/seed-message.json");

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

/// The output of a process that should refuse to start, once it exits; `None` (and the process
/// killed) if it is still running at `within`: it started.
pub fn exit_within(
    mut child: std::process::Child,
    within: Duration,
) -> Option<std::process::Output> {
    let deadline = Instant::now() + within;
    while child.try_wait().expect("status").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(child.wait_with_output().expect("output"))
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
