//! The real binary as an operator runs it: configuration errors, `check-config`, and SIGTERM
//! under load.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::helpers::*;

const BINARY: &str = env!("CARGO_BIN_EXE_omnichat-bridge");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn bridge_command(vars: &[(String, String)]) -> Command {
    let mut command = Command::new(BINARY);
    command
        .env_clear()
        .envs(vars.iter().cloned())
        .env("RUST_LOG", "warn");
    command
}

#[test]
fn a_bad_setting_stops_the_process_with_one_line_naming_it() {
    let topics = TestTopics::new();
    let cases = [
        ("BRIDGE_PUBLISH_TIMEOUT_MS", "soon"),
        ("BRIDGE_LISTEN_ADDR", "everywhere"),
        ("KAFKA_ACKS", "1"),
        ("KAFKA_NO_SUCH_PROPERTY", "1"),
        ("KAFKA_LINGER_MS", "minus one"),
    ];
    for (variable, value) in cases {
        let mut vars = base_vars("127.0.0.1:9", &topics);
        vars.push((variable.to_owned(), value.to_owned()));
        let output = bridge_command(&vars).output().expect("runs");
        assert!(!output.status.success(), "{variable}={value} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{variable}: {stderr}");
        assert!(lines[0].contains(variable), "{variable}: {stderr}");
    }
    let output = bridge_command(&[("KAFKA_BOOTSTRAP_SERVERS".into(), "127.0.0.1:9".into())])
        .output()
        .expect("runs");
    assert!(!output.status.success(), "no credential configured");
    assert!(String::from_utf8_lossy(&output.stderr).contains("BRIDGE_AUTH_TOKENS"));
}

#[tokio::test]
async fn check_config_verifies_kafka_and_topics_without_printing_secrets() {
    let bootstrap = bootstrap();
    let topics = TestTopics::new();
    let mut vars = base_vars(&bootstrap, &topics);
    vars.push(("KAFKA_SASL_PASSWORD".into(), "kafka-secret-value".into()));
    let run = |vars: Vec<(String, String)>| async move {
        tokio::task::spawn_blocking(move || {
            bridge_command(&vars)
                .arg("check-config")
                .output()
                .expect("runs")
        })
        .await
        .expect("task")
    };
    let missing = run(vars.clone()).await;
    assert!(!missing.status.success(), "topics do not exist yet");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("topics do not exist"));

    topics.create(&bootstrap).await;
    let ok = run(vars).await;
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout.contains(&format!("BRIDGE_TOPIC_MESSAGES={}", topics.messages)));
    for secret in [TOKEN, "kafka-secret-value"] {
        assert!(!stdout.contains(secret), "a secret leaked: {stdout}");
    }
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn sigterm_under_load_exits_0_and_every_202_is_in_kafka() {
    let bootstrap = bootstrap();
    let topics = TestTopics::new();
    topics.create(&bootstrap).await;
    let (port, admin_port) = (free_port(), free_port());
    let mut vars = base_vars(&bootstrap, &topics);
    vars.extend([
        ("BRIDGE_LISTEN_ADDR".into(), format!("127.0.0.1:{port}")),
        (
            "BRIDGE_ADMIN_ADDR".into(),
            format!("127.0.0.1:{admin_port}"),
        ),
        ("BRIDGE_SHUTDOWN_DELAY_MS".into(), "500".into()),
    ]);
    let mut bridge = Running(
        bridge_command(&vars)
            .stderr(Stdio::null())
            .spawn()
            .expect("starts"),
    );
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = client
            .get(format!("http://127.0.0.1:{admin_port}/readyz"))
            .send()
            .await;
        if ready.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "the bridge never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let url = format!("http://127.0.0.1:{port}/webhooks/omnichat");
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for sender in 0..8 {
        let (client, url, stop) = (client.clone(), url.clone(), stop.clone());
        senders.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            for n in 0..5000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match client
                    .post(&url)
                    .bearer_auth(TOKEN)
                    .body(message(&format!("chat-{sender}"), n))
                    .send()
                    .await
                {
                    Ok(response) if response.status() == 202 => {
                        let answer: serde_json::Value = response.json().await.expect("json");
                        accepted.push(answer["id"].as_str().expect("id").to_owned());
                    }
                    Ok(response) => assert_eq!(response.status(), 503),
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
            accepted
        }));
    }
    while record_count(&bootstrap, &topics.messages).await < 200 {
        assert!(
            Instant::now() < deadline + Duration::from_secs(20),
            "load never built up"
        );
    }
    let pid = bridge.0.id().to_string();
    let signalled = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let exit = tokio::task::spawn_blocking(move || {
        let status = bridge.0.wait().expect("wait");
        std::mem::forget(bridge);
        status
    })
    .await
    .expect("waiter");
    let took = signalled.elapsed();
    stop.store(true, Ordering::Relaxed);
    assert!(exit.success(), "exit status {exit}");
    assert!(
        took >= Duration::from_millis(500),
        "the delay was skipped: {took:?}"
    );
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");

    let mut accepted = Vec::new();
    for sender in senders {
        accepted.extend(sender.await.expect("sender"));
    }
    let stored = read_records(
        &bootstrap,
        &topics.messages,
        accepted.len(),
        Duration::from_secs(20),
    )
    .await;
    let stored: HashSet<String> = stored
        .iter()
        .filter_map(|r| r.header("ce_id").map(str::to_owned))
        .collect();
    let lost = accepted.iter().filter(|id| !stored.contains(*id)).count();
    assert_eq!(
        lost,
        0,
        "{lost} of {} events answered 202 are not in Kafka",
        accepted.len()
    );
}

#[tokio::test]
async fn healthcheck_exits_0_only_while_the_bridge_is_ready() {
    let app = spawn_app().await;
    app.wait_ready().await;
    let admin = app.admin_address.trim_start_matches("http://").to_owned();
    let run = |addr: String| async move {
        tokio::task::spawn_blocking(move || {
            Command::new(BINARY)
                .env_clear()
                .env("BRIDGE_ADMIN_ADDR", addr)
                .arg("healthcheck")
                .output()
                .expect("runs")
                .status
        })
        .await
        .expect("task")
    };
    assert!(run(admin).await.success());
    assert!(!run(format!("127.0.0.1:{}", free_port())).await.success());
}
