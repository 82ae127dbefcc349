//! The application in-process on a stand-in backend: a publisher that records what it is given
//! and answers as a test scripts it, and a Kafka state a test sets.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use omnichat_bridge::backend::Backend;
use omnichat_bridge::config::Settings;
use omnichat_bridge::publish::{PublishError, PublishFuture, Publisher, Record, Stored};
use omnichat_bridge::startup::Application;
use rdkafka::error::KafkaError;
use serde_json::Value;
use tokio::sync::oneshot;

pub const TOKEN: &str = "contract-test-token-0123456789";

/// The OmniChat reference's sample message webhook.
pub const SEED: &str = include_str!("../fixtures/seed-message.json");

/// How the recorder answers the next publish.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Stored (the default when nothing is scripted).
    Store,
    /// Not stored, for this reason.
    Fail(PublishError),
    /// Stored, after this long: a slow broker.
    After(Duration),
    /// Not stored, for this reason, after this long.
    FailAfter(Duration, PublishError),
}

/// Records every record it stores, in order.
#[derive(Debug, Default)]
pub struct Recorder {
    stored: Mutex<Vec<Record>>,
    script: Mutex<VecDeque<Answer>>,
    /// Publishes begun, stored or not.
    begun: std::sync::atomic::AtomicUsize,
}

impl Recorder {
    /// The next publishes get these answers, in order; then `Store` again.
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.script.lock().expect("script").extend(answers);
    }

    /// How many publishes have begun, stored or not.
    pub fn begun(&self) -> usize {
        self.begun.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until `count` publishes have begun.
    pub async fn wait_begun(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.begun() < count {
            assert!(
                Instant::now() < deadline,
                "{} publishes began",
                self.begun()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn stored(&self) -> Vec<Record> {
        self.stored.lock().expect("stored").clone()
    }

    pub fn stored_to(&self, topic: &str) -> Vec<Record> {
        self.stored()
            .into_iter()
            .filter(|r| &*r.topic == topic)
            .collect()
    }
}

impl Publisher for Recorder {
    fn publish(&self, record: Record) -> PublishFuture<'_> {
        let answer = self
            .script
            .lock()
            .expect("script")
            .pop_front()
            .unwrap_or(Answer::Store);
        self.begun.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            match answer {
                Answer::Store => {
                    let mut stored = self.stored.lock().expect("stored");
                    stored.push(record);
                    Ok(Stored::Kafka {
                        partition: 0,
                        offset: stored.len() as i64 - 1,
                    })
                }
                Answer::Fail(error) => Err(error),
                Answer::FailAfter(delay, error) => {
                    tokio::time::sleep(delay).await;
                    Err(error)
                }
                Answer::After(delay) => {
                    tokio::time::sleep(delay).await;
                    let mut stored = self.stored.lock().expect("stored");
                    stored.push(record);
                    Ok(Stored::Kafka {
                        partition: 0,
                        offset: stored.len() as i64 - 1,
                    })
                }
            }
        })
    }
}

pub struct ContractApp {
    pub address: String,
    pub admin_address: String,
    pub client: reqwest::Client,
    pub recorder: Arc<Recorder>,
    /// What the Kafka probe reports.
    pub kafka: Arc<Mutex<Result<(), KafkaError>>>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Drop for ContractApp {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// The settings every contract test starts from: the topics' default names, a token, and a
/// broker address nothing listens on (nothing here talks to Kafka).
pub fn vars(overrides: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = [
        ("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9"),
        ("BRIDGE_LISTEN_ADDR", "127.0.0.1:0"),
        ("BRIDGE_ADMIN_ADDR", "127.0.0.1:0"),
        ("BRIDGE_AUTH_TOKENS", TOKEN),
        ("BRIDGE_SHUTDOWN_DELAY_MS", "0"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    vars.retain(|(k, _)| !overrides.iter().any(|(o, _)| o == k));
    vars.extend(
        overrides
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    vars
}

pub async fn spawn(overrides: &[(&str, &str)]) -> ContractApp {
    let settings = Settings::from_vars(vars(overrides)).expect("valid test settings");
    let recorder = Arc::new(Recorder::default());
    let kafka = Arc::new(Mutex::new(Ok(())));
    let probe = kafka.clone();
    let backend = Backend::Custom {
        publisher: recorder.clone(),
        kafka: Arc::new(move || probe.lock().expect("kafka").clone()),
    };
    start(
        Application::with_backend(settings, backend).expect("app builds"),
        recorder,
        kafka,
    )
}

/// The real backend the settings name (spool mode needs no broker to answer).
pub async fn spawn_real(overrides: &[(&str, &str)]) -> ContractApp {
    let settings = Settings::from_vars(vars(overrides)).expect("valid test settings");
    let app = Application::build(settings).expect("app builds");
    start(
        app,
        Arc::new(Recorder::default()),
        Arc::new(Mutex::new(Ok(()))),
    )
}

fn start(
    app: Application,
    recorder: Arc<Recorder>,
    kafka: Arc<Mutex<Result<(), KafkaError>>>,
) -> ContractApp {
    let address = format!("http://127.0.0.1:{}", app.port());
    let admin_address = format!("http://127.0.0.1:{}", app.admin_port());
    let (shutdown, stop) = oneshot::channel();
    tokio::spawn(app.run_until_stopped(async {
        let _ = stop.await;
    }));
    ContractApp {
        address,
        admin_address,
        client: reqwest::Client::new(),
        recorder,
        kafka,
        shutdown: Some(shutdown),
    }
}

impl ContractApp {
    pub fn webhook_url(&self) -> String {
        format!("{}/webhooks/omnichat", self.address)
    }

    pub fn host_port(&self) -> String {
        self.address.trim_start_matches("http://").to_owned()
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

    pub async fn admin(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.admin_address))
            .send()
            .await
            .expect("admin request")
    }

    /// `/readyz`'s status and body.
    pub async fn readiness(&self) -> (u16, Value) {
        let response = self.admin("/readyz").await;
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON readiness"))
    }

    /// Waits until readiness answers `status`.
    pub async fn wait_readiness(&self, status: u16) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (now, body) = self.readiness().await;
            if now == status {
                return body;
            }
            assert!(Instant::now() < deadline, "readiness stayed {now}: {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        self.admin("/metrics").await.text().await.expect("metrics")
    }
}

/// The error object of a non-2xx answer, checked for the contract's shape.
pub async fn error_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("JSON error body");
    assert!(body["error"]["code"].is_string(), "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    (status, body)
}

pub fn header<'r>(record: &'r Record, name: &str) -> Option<&'r str> {
    record.header(name)
}

pub fn json(record: &Record) -> Value {
    serde_json::from_slice(&record.value).expect("record value is JSON")
}
