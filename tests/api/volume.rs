//! Spool mode on a volume that misbehaves (the project's FUSE filesystem, `helpers::faultfs`):
//! it loses what no fsync covered, fills up for a moment, stalls its fsyncs. Kafka is
//! librdkafka's mock cluster, so these need no broker.

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use omnichat_bridge::config::OnDamage;
use omnichat_bridge::publish::{Header, Record};
use omnichat_bridge::spool::segments::{AppendError, SegmentWriter, encode, recover, segment_path};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use serde_json::Value;

use crate::faults::{MockSetup, mock_setup};
use crate::helpers::faultfs::{FaultFs, PowerLoss};
use crate::helpers::*;

const MODES: [PowerLoss; 3] = [
    PowerLoss::DropUnsynced,
    PowerLoss::TornPrefix,
    PowerLoss::ZerosForUnsynced,
];

fn spooled(n: u64) -> Record {
    Record {
        topic: "t".into(),
        key: "chat".into(),
        headers: vec![(Header::Borrowed("ce_id"), Header::Owned(n.to_string()))],
        value: format!("{{\"n\":{n}}}").into_bytes(),
    }
}

fn records_after_recovery(dir: &Path) -> u64 {
    let recovered = recover(dir, OnDamage::Refuse).expect("the spool recovers");
    recovered.records
}

#[test]
fn a_spool_directory_the_bridge_creates_keeps_its_records_through_a_power_loss() {
    for mode in MODES {
        let volume = FaultFs::mount();
        let dir = volume.path().join("omnichat").join("spool");
        let recovered = recover(&dir, OnDamage::Refuse).expect("created");
        let mut writer = SegmentWriter::new(&dir, recovered.next_segment, 1 << 20);
        writer.append(&encode(&spooled(0), 0)).expect("fsynced");
        drop((writer, recovered));
        let volume = FaultFs::mount_image(volume.power_loss(mode, 7));
        assert_eq!(
            records_after_recovery(&dir),
            1,
            "{mode:?}: an fsynced record went with a directory entry nothing synced"
        );
        drop(volume);
    }
}

/// A crash between a write and its fsync leaves frames on disk that no fsync covered. The
/// next start counts them and seals the segment (new records go to a new one); a power loss
/// after that must not leave the sealed segment torn, or every later start is refused.
#[test]
fn recovery_makes_the_tail_it_keeps_durable_before_sealing_it() {
    for (mode, seed) in MODES.into_iter().flat_map(|m| (1..5).map(move |s| (m, s))) {
        let volume = FaultFs::mount();
        let dir = volume.path().join("spool");
        drop(recover(&dir, OnDamage::Refuse).expect("created"));
        let mut writer = SegmentWriter::new(&dir, 0, 1 << 20);
        writer.append(&encode(&spooled(0), 0)).expect("fsynced");
        drop(writer);
        // The crashed process's last writes, one frame each, never fsynced.
        let mut tail = std::fs::OpenOptions::new()
            .append(true)
            .open(segment_path(&dir, 0))
            .expect("segment");
        for n in 1..6 {
            tail.write_all(&encode(&spooled(n), n)).expect("written");
        }
        drop(tail);
        let recovered = recover(&dir, OnDamage::Refuse).expect("recovers");
        assert_eq!(recovered.records, 6);
        let mut writer = SegmentWriter::new(&dir, recovered.next_segment, 1 << 20);
        drop(recovered);
        writer.append(&encode(&spooled(6), 6)).expect("fsynced");
        drop(writer);

        let volume = FaultFs::mount_image(volume.power_loss(mode, seed));
        let recovered = recover(&dir, OnDamage::Refuse)
            .unwrap_or_else(|error| panic!("{mode:?} seed {seed}: start refused: {error}"));
        assert_eq!(recovered.records, 7, "{mode:?} seed {seed}");
        drop((recovered, volume));
    }
}

/// A batch that runs out of space part way: the segment is cut back to its last whole frame and
/// sealed, and the next append starts a new one. A power loss after that must not bring the
/// cut-off tail back in a segment that is no longer the newest, or every later start is refused.
#[test]
fn a_segment_sealed_on_a_full_volume_stays_whole_through_a_power_loss() {
    for seed in 1..9 {
        let volume = FaultFs::mount();
        let dir = volume.path().join("spool");
        drop(recover(&dir, OnDamage::Refuse).expect("created"));
        let mut writer = SegmentWriter::new(&dir, 0, 16 << 20);
        writer.append(&encode(&spooled(0), 0)).expect("fsynced");
        // A batch of 4 MiB reaches the filesystem in several writes (at most 1 MiB each); the
        // volume takes one.
        let mut batch = Vec::new();
        let mut n = 1;
        while batch.len() < 4 << 20 {
            let mut record = spooled(n);
            record.value = vec![b'x'; 4000];
            batch.extend_from_slice(&encode(&record, n));
            n += 1;
        }
        volume.set_capacity(Some(volume.used() + (3 << 19)));
        let full = writer.append(&batch);
        assert!(
            matches!(full, Err(AppendError::NoSpace(_))),
            "seed {seed}: {full:?}"
        );
        volume.set_capacity(None);
        writer.append(&encode(&spooled(n), n)).expect("fsynced");
        drop(writer);
        assert!(
            segment_path(&dir, 1).exists(),
            "seed {seed}: the full segment was not sealed"
        );

        let volume = FaultFs::mount_image(volume.power_loss(PowerLoss::TornPrefix, seed));
        let recovered = recover(&dir, OnDamage::Refuse)
            .unwrap_or_else(|error| panic!("seed {seed}: start refused: {error}"));
        assert_eq!(recovered.records, 2, "seed {seed}");
        drop((recovered, volume));
    }
}

/// Spool mode on `dir` with a short shutdown, since Kafka is often away here.
fn spool_on(dir: &Path, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut vars = spool_vars(dir);
    vars.push(("BRIDGE_SHUTDOWN_TIMEOUT_MS".into(), "2000".into()));
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    vars
}

fn padded(chat: &str, n: usize, pad: usize) -> String {
    message(chat, n).replace(
        "\"system\"",
        &format!("\"pad\":\"{}\",\"system\"", "z".repeat(pad)),
    )
}

#[tokio::test]
async fn the_quarantine_the_bridge_creates_keeps_its_records_through_a_power_loss() {
    let volume = FaultFs::mount();
    let dir = volume.path().join("spool");
    let vars = spool_on(&dir, &[]);
    let MockSetup { cluster, mut app } = mock_setup(1, &overrides(&vars)).await;
    let too_large = RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE;
    cluster.request_errors(RDKafkaApiKey::Produce, &[too_large; 3]);
    let body = message("chat-quarantined", 0);
    app.post_accepted(body.clone()).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.readiness().await.1["spool"]["setAside"]["toQuarantine"] != 1 {
        assert!(Instant::now() < deadline, "never quarantined");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
    let image = volume.power_loss(PowerLoss::DropUnsynced, 3);
    let kept: Vec<_> = image
        .paths()
        .into_iter()
        .filter(|p| p.starts_with("spool/quarantine") && p.extension().is_some())
        .collect();
    let letters: Vec<Vec<u8>> = kept.iter().filter_map(|p| image.read(p)).collect();
    assert!(
        letters
            .iter()
            .any(|bytes| bytes.windows(body.len()).any(|w| w == body.as_bytes())),
        "the quarantined record did not survive the power loss: {kept:?}"
    );
}

#[tokio::test]
async fn a_volume_full_for_a_moment_turns_readiness_back_without_traffic() {
    let volume = FaultFs::mount();
    let vars = spool_on(&volume.path().join("spool"), &[]);
    let MockSetup { cluster, mut app } = mock_setup(1, &overrides(&vars)).await;
    // An empty spool and Kafka away: no forwarded segment can free space, only the volume
    // getting room back does.
    cluster.broker_down(1).expect("down");
    volume.fill();
    let response = app.post(message("chat-full", 1)).await;
    assert_eq!(response.status(), 503);
    let answer: Value = response.json().await.expect("body");
    assert_eq!(answer["error"]["code"], "spool_full", "{answer}");
    let (status, body) = app.readiness().await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("volume_full")),
        "{body}"
    );
    assert!(
        body["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["code"] == "volume_full")),
        "{body}"
    );

    volume.unfill();
    let deadline = Instant::now() + Duration::from_secs(5);
    let body = loop {
        let (status, body) = app.readiness().await;
        if status == 200 {
            break body;
        }
        assert!(Instant::now() < deadline, "still unready with room: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        !body["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["code"] == "volume_full")),
        "{body}"
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("omnichat_bridge_conditions_total{condition=\"volume_full\"} 1"),
        "{metrics}"
    );
    app.post_accepted(message("chat-full", 1)).await;
    app.stop().await;
}

/// A new segment whose first write the volume refuses holds only its header; once the spool
/// is forwarded and its segments deleted, what the spool counts must still be what is on disk.
#[tokio::test]
async fn the_spools_byte_count_stays_what_is_on_disk_after_a_refused_first_write() {
    let volume = FaultFs::mount();
    let dir = volume.path().join("spool");
    let vars = spool_on(
        &dir,
        &[
            ("BRIDGE_SPOOL_MAX_BYTES", "1048576"),
            ("BRIDGE_MAX_BODY_BYTES", "65536"),
        ],
    );
    let MockSetup { cluster, mut app } = mock_setup(1, &overrides(&vars)).await;
    // Room for a segment's header, not for a record.
    volume.set_capacity(Some(volume.used() + 100));
    let chat = "chat-count";
    assert_eq!(app.post(padded(chat, 0, 4000)).await.status(), 503);
    volume.set_capacity(None);
    for n in 0..60 {
        app.post_accepted(padded(chat, n, 4000)).await;
    }
    app.wait_spool_drained(Duration::from_secs(30)).await;
    // Forwarded segments go at the next checkpoint.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let on_disk: u64 = std::fs::read_dir(&dir)
        .expect("spool dir")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    let (status, body) = app.readiness().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["spool"]["bytes"].as_u64(), Some(on_disk), "{body}");
    app.stop().await;
    drop(cluster);
}

/// The real binary with its log on a pipe, killed when dropped.
struct LoggedBridge {
    process: Running,
    url: String,
    admin: String,
    client: reqwest::Client,
    log: Arc<Mutex<Vec<String>>>,
}

fn spawn_logged(mut vars: Vec<(String, String)>) -> LoggedBridge {
    let (port, admin_port) = (free_port(), free_port());
    vars.push(("BRIDGE_LISTEN_ADDR".into(), format!("127.0.0.1:{port}")));
    vars.push((
        "BRIDGE_ADMIN_ADDR".into(),
        format!("127.0.0.1:{admin_port}"),
    ));
    vars.push(("BRIDGE_LOG_FORMAT".into(), "text".into()));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_omnichat-bridge"))
        .env_clear()
        .envs(vars)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the bridge starts");
    let log = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().expect("stderr");
    let lines = log.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            lines.lock().expect("log").push(line);
        }
    });
    LoggedBridge {
        process: Running(child),
        url: format!("http://127.0.0.1:{port}/webhooks/omnichat"),
        admin: format!("http://127.0.0.1:{admin_port}"),
        client: reqwest::Client::new(),
        log,
    }
}

impl LoggedBridge {
    async fn readiness(&self) -> Option<(u16, Value)> {
        let response = self
            .client
            .get(format!("{}/readyz", self.admin))
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        Some((status, response.json().await.ok()?))
    }

    async fn wait_readiness(&self, within: Duration, done: impl Fn(u16, &Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            if let Some((status, body)) = self.readiness().await
                && done(status, &body)
            {
                return body;
            }
            assert!(Instant::now() < deadline, "readiness never got there");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn logged(&self, text: &str) -> bool {
        self.log
            .lock()
            .expect("log")
            .iter()
            .any(|l| l.contains(text))
    }
}

// Multi-threaded: the volume's waits block the test's thread while requests are in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_volume_gets_503_at_the_publish_deadline_and_shutdown_keeps_its_budget() {
    let volume = FaultFs::mount();
    let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    let topics = TestTopics::new();
    for topic in topics.all() {
        cluster.create_topic(topic, PARTITIONS, 1).expect("topic");
    }
    let mut vars = base_vars(&cluster.bootstrap_servers(), &topics);
    vars.extend(spool_vars(&volume.path().join("spool")));
    vars.extend(
        [
            ("BRIDGE_PUBLISH_TIMEOUT_MS", "2000"),
            ("BRIDGE_SHUTDOWN_TIMEOUT_MS", "3000"),
            ("BRIDGE_MAX_IN_FLIGHT", "2"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let bridge = spawn_logged(vars);
    bridge
        .wait_readiness(Duration::from_secs(20), |status, _| status == 200)
        .await;
    let post = |n: usize| {
        bridge
            .client
            .post(&bridge.url)
            .bearer_auth(TOKEN)
            .body(message("chat-stalled", n))
            .send()
    };
    assert_eq!(post(0).await.expect("answered").status(), 202);

    volume.stall_fsyncs_for(Duration::from_secs(6));
    // More requests than in-flight slots, one after another: each frees its slot at 503.
    for n in 1..4 {
        let started = Instant::now();
        let response = post(n).await.expect("answered");
        let took = started.elapsed();
        assert_eq!(response.status(), 503, "request {n}");
        assert!(response.headers().contains_key("retry-after"));
        assert!(
            took >= Duration::from_millis(1900) && took < Duration::from_secs(4),
            "request {n} answered after {took:?}"
        );
    }
    bridge
        .wait_readiness(Duration::from_secs(5), |status, body| {
            status == 503 && body["code"] == "volume_stalled"
        })
        .await;
    volume.release_fsyncs();
    bridge
        .wait_readiness(Duration::from_secs(10), |status, _| status == 200)
        .await;
    assert_eq!(post(10).await.expect("answered").status(), 202);

    // SIGTERM while an fsync hangs: the shutdown still ends within its budget. (The process
    // itself exits once the kernel has its fsync answered.)
    volume.hold_fsyncs();
    let stuck = tokio::spawn(post(11));
    assert!(
        volume.wait_held_fsyncs(1, Duration::from_secs(5)),
        "no fsync held: {:?}",
        bridge
            .log
            .lock()
            .expect("log")
            .iter()
            .rev()
            .take(10)
            .collect::<Vec<_>>()
    );
    let pid = bridge.process.0.id().to_string();
    let terminated = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    while !bridge.logged("Shutdown complete") {
        assert!(
            terminated.elapsed() < Duration::from_millis(4500),
            "shutdown still running {:?} after SIGTERM with a 3 s budget",
            terminated.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        bridge.logged("never answered 202"),
        "the log says nothing of what was left"
    );
    let answer = stuck.await.expect("task").expect("answered");
    assert_eq!(answer.status(), 503);
    volume.release_fsyncs();
    let mut bridge = bridge;
    let deadline = Instant::now() + Duration::from_secs(5);
    let exit = loop {
        if let Some(exit) = bridge.process.0.try_wait().expect("status") {
            break exit;
        }
        assert!(Instant::now() < deadline, "the process did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit}");
}

/// The bridge killed without warning under load from eight chats, and each time the power lost
/// too, in the three ways a power loss can leave unsynced data, with Kafka away in some rounds:
/// every event answered 202 reaches Kafka, each chat in order, and every restart recovers by
/// itself.
// Multi-threaded: the senders keep going while the test thread waits for processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_a_power_loss_under_load_lose_no_event_answered_202() {
    let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    let topics = TestTopics::new();
    for topic in topics.all() {
        cluster.create_topic(topic, PARTITIONS, 1).expect("topic");
    }
    let mut volume = FaultFs::mount();
    let dir = volume.path().join("omnichat").join("spool");
    let (port, admin_port) = (free_port(), free_port());
    let mut vars = base_vars(&cluster.bootstrap_servers(), &topics);
    vars.extend(spool_vars(&dir));
    vars.extend([
        ("BRIDGE_LISTEN_ADDR".into(), format!("127.0.0.1:{port}")),
        (
            "BRIDGE_ADMIN_ADDR".into(),
            format!("127.0.0.1:{admin_port}"),
        ),
    ]);
    let start = || {
        Running(
            std::process::Command::new(env!("CARGO_BIN_EXE_omnichat-bridge"))
                .env_clear()
                .envs(vars.clone())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("starts"),
        )
    };
    let client = reqwest::Client::new();
    let ready = async |client: &reqwest::Client| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let answer = client
                .get(format!("http://127.0.0.1:{admin_port}/readyz"))
                .send()
                .await;
            if let Ok(response) = answer
                && response.status() == 200
            {
                return response.json::<Value>().await.expect("body");
            }
            assert!(
                Instant::now() < deadline,
                "a restart did not recover by itself"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let url = format!("http://127.0.0.1:{port}/webhooks/omnichat");
    let load = start_load_paced(&url, 8, Duration::from_millis(20));
    // The pause is the kill schedule, not a wait for something to happen.
    let rounds = [
        (700u64, true),
        (300, false),
        (1200, true),
        (500, false),
        (900, false),
        (400, true),
    ];
    for (round, (lifetime_ms, kafka_away)) in rounds.into_iter().enumerate() {
        if kafka_away {
            cluster.broker_down(1).expect("down");
        }
        let mut bridge = start();
        ready(&client).await;
        tokio::time::sleep(Duration::from_millis(lifetime_ms)).await;
        bridge.0.kill().expect("SIGKILL");
        bridge.0.wait().expect("reaped");
        if kafka_away {
            cluster.broker_up(1).expect("up");
        }
        let mode = MODES[round % MODES.len()];
        volume = FaultFs::mount_image(volume.power_loss(mode, round as u64));
    }

    let mut last = start();
    ready(&client).await;
    let accepted = load.finish().await;
    assert!(
        accepted.len() > 100,
        "only {} events accepted",
        accepted.len()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready(&client).await["spool"]["records"] != 0 {
        assert!(Instant::now() < deadline, "the spool never drained");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last.0.kill().expect("stop");
    let _ = last.0.wait();

    let records = read_all_records(
        &cluster.bootstrap_servers(),
        &topics.messages,
        accepted.len(),
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
        "{lost} of {} events answered 202 are not in Kafka",
        accepted.len()
    );
    for sender in 0..8 {
        let chat = format!("chat-{sender}");
        let first = first_occurrences(&texts_of(&records, &chat));
        assert!(
            first.windows(2).all(|w| w[0] + 1 == w[1]) && first.first() == Some(&0),
            "{chat} out of order or with a gap: {first:?}"
        );
    }
    drop(volume);
}
