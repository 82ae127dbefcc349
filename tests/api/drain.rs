//! `omnichat-bridge drain`, the real binary, on a spool a bridge filled while Kafka was away:
//! forwarded complete and in order per chat, refused while a bridge holds the spool, stopped
//! within its bound when Kafka cannot be reached, and resumed after SIGTERM and kill -9 with
//! nothing left for a bridge on the same directory.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

use crate::helpers::*;
use crate::outage::{ProxiedBroker, proxied_broker};

const BINARY: &str = env!("CARGO_BIN_EXE_omnichat-bridge");

/// Where nothing listens: Kafka away.
fn nowhere() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// A spool in `dir` holding `per_chat` messages for each of `chats` chats, interleaved, left
/// by a bridge that never reached Kafka; the event ids it answered 202 for, in order.
async fn backlog(dir: &Path, topics: &TestTopics, chats: usize, per_chat: usize) -> Vec<String> {
    let mut vars = spool_vars(dir);
    // Kafka is away: the stop gives the forwarder no time to wait for it.
    vars.push(("BRIDGE_SHUTDOWN_TIMEOUT_MS".into(), "200".into()));
    let mut app = spawn_app_on(&nowhere(), topics.clone(), &overrides(&vars)).await;
    app.wait_ready().await;
    let mut ids = Vec::new();
    for n in 0..per_chat {
        for c in 0..chats {
            let answer = app.post_accepted(message(&format!("chat-{c}"), n)).await;
            assert_eq!(answer["spooled"], true, "{answer}");
            ids.push(answer["id"].as_str().expect("an id").to_owned());
        }
    }
    app.stop().await;
    ids
}

/// The bridge's variables for a drain of `dir` through `bootstrap`.
fn drain_vars(bootstrap: &str, topics: &TestTopics, dir: &Path) -> Vec<(String, String)> {
    let mut vars = base_vars(bootstrap, topics);
    vars.extend(spool_vars(dir));
    vars
}

fn drain_command(vars: &[(String, String)], args: &[&str]) -> Command {
    let mut command = Command::new(BINARY);
    command
        .env_clear()
        .envs(vars.iter().cloned())
        .env("BRIDGE_LOG_FORMAT", "text")
        .arg("drain")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Runs `drain` to its end, which must come within `within`.
async fn run_drain(vars: &[(String, String)], args: &[&str], within: Duration) -> Output {
    let child = drain_command(vars, args).spawn().expect("drain starts");
    let pid = child.id();
    let output = tokio::task::spawn_blocking(move || child.wait_with_output());
    match tokio::time::timeout(within, output).await {
        Ok(output) => output.expect("waiter").expect("output"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("drain {args:?} did not end within {within:?}");
        }
    }
}

/// The `name: number` lines of a summary.
fn summary_of(output: &Output) -> HashMap<String, u64> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let (name, value) = line.trim().split_once(": ")?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// What `drain --dry-run` counts in the spool.
async fn records_in(vars: &[(String, String)]) -> u64 {
    let counted = run_drain(vars, &["--dry-run"], Duration::from_secs(20)).await;
    assert_eq!(counted.status.code(), Some(0), "{}", describe(&counted));
    summary_of(&counted)["records"]
}

/// Asserts that a bridge started on `dir` afterwards finds nothing to forward: its spool
/// empty, and nothing forwarded since its start.
async fn assert_a_bridge_finds_nothing(bootstrap: &str, topics: &TestTopics, dir: &Path) {
    let mut app = spawn_app_on(bootstrap, topics.clone(), &overrides(&spool_vars(dir))).await;
    app.wait_ready().await;
    let (_, body) = app.readiness().await;
    app.stop().await;
    assert_eq!(body["spool"]["records"], 0, "{body}");
    assert_eq!(body["spool"]["forwarded"], 0, "{body}");
}

#[tokio::test]
#[ignore = "needs the broker: scripts/test.sh starts it and runs these"]
async fn a_backlog_made_while_kafka_was_away_is_drained_complete_and_in_order_per_chat() {
    let bootstrap = bootstrap();
    let topics = TestTopics::new();
    topics.create(&bootstrap).await;
    let dir = spool_dir();
    let (chats, per_chat) = (4, 50);
    let ids = backlog(&dir, &topics, chats, per_chat).await;
    let vars = drain_vars(&bootstrap, &topics, &dir);
    assert_eq!(
        records_in(&vars).await,
        200,
        "a dry run counts, sends nothing"
    );

    let drained = run_drain(&vars, &[], Duration::from_secs(60)).await;
    assert_eq!(drained.status.code(), Some(0), "{}", describe(&drained));
    let summary = summary_of(&drained);
    for (name, expected) in [
        ("forwarded", 200),
        ("set aside", 0),
        ("to the dead-letter topic", 0),
        ("to the quarantine", 0),
        ("left", 0),
    ] {
        assert_eq!(summary.get(name), Some(&expected), "{}", describe(&drained));
    }
    let records = read_all_records(&bootstrap, &topics.messages, ids.len()).await;
    assert_each_chat_in_order(&records, chats, per_chat);
    let stored: Vec<&str> = records.iter().filter_map(|r| r.header("ce_id")).collect();
    assert!(ids.iter().all(|id| stored.contains(&id.as_str())));

    // An empty spool, checkpointed: a second run has nothing to do, and neither has a bridge.
    assert_eq!(records_in(&vars).await, 0);
    let again = run_drain(&vars, &[], Duration::from_secs(20)).await;
    assert_eq!(again.status.code(), Some(0), "{}", describe(&again));
    assert_eq!(summary_of(&again)["forwarded"], 0);
    assert_a_bridge_finds_nothing(&bootstrap, &topics, &dir).await;
}

const NONE: &[&str] = &[];
const DRY_RUN: &[&str] = &["--dry-run"];

#[tokio::test]
async fn a_drain_that_cannot_start_exits_2_with_one_line_naming_why() {
    let topics = TestTopics::new();
    let dir = spool_dir();
    let mut bridge = spawn_app_on(&nowhere(), topics.clone(), &overrides(&spool_vars(&dir))).await;
    bridge.wait_ready().await;
    let vars = drain_vars(&nowhere(), &topics, &dir);
    let missing = spool_dir();
    let kafka_mode = base_vars(&nowhere(), &topics);
    let cases = [
        (
            "locked",
            vars.clone(),
            NONE,
            "in use by another bridge process",
        ),
        ("locked, dry run", vars.clone(), DRY_RUN, "in use"),
        (
            "no such directory",
            drain_vars(&nowhere(), &topics, &missing),
            NONE,
            "no such directory",
        ),
        ("kafka mode", kafka_mode, NONE, "BRIDGE_ACK_MODE=spool"),
        ("bad option", vars, &["--give-up-after", "soon"], "soon"),
    ];
    for (case, vars, args, reason) in cases {
        let started = Instant::now();
        let output = run_drain(&vars, args, Duration::from_secs(20)).await;
        assert_eq!(
            output.status.code(),
            Some(2),
            "{case}: {}",
            describe(&output)
        );
        assert!(started.elapsed() < Duration::from_secs(5), "{case}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr.lines().next().unwrap_or_default();
        assert!(first.contains(reason), "{case}: {stderr}");
        if case != "bad option" {
            // The bad option's line is followed by the usage.
            assert_eq!(stderr.lines().count(), 1, "{case}: {stderr}");
        }
        if case.starts_with("locked") {
            assert!(first.contains(&*dir.to_string_lossy()), "{case}: {stderr}");
        }
        assert!(output.stdout.is_empty(), "{case}: {}", describe(&output));
    }
    assert!(!missing.exists(), "a missing spool directory was created");
    bridge.stop().await;
}

#[tokio::test]
async fn a_damaged_spool_is_refused_as_a_start_refuses_it_and_nothing_is_forwarded() {
    let topics = TestTopics::new();
    let dir = spool_dir();
    backlog(&dir, &topics, 1, 5).await;
    let segment = std::fs::read_dir(&dir)
        .expect("spool dir")
        .map(|entry| entry.expect("entry").path())
        .find(|path| path.extension().is_some_and(|e| e == "seg"))
        .expect("a segment");
    let mut bytes = std::fs::read(&segment).expect("segment");
    // Inside the first record's payload, past the 16-byte header and its 8-byte frame head.
    bytes[16 + 8 + 4] ^= 0xff;
    std::fs::write(&segment, bytes).expect("damaged");
    let vars = drain_vars(&nowhere(), &topics, &dir);
    for args in [NONE, DRY_RUN] {
        let output = run_drain(&vars, args, Duration::from_secs(20)).await;
        assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(&*segment.to_string_lossy()) && stderr.contains("damaged at byte 16"),
            "{stderr}"
        );
    }
}

#[tokio::test]
async fn with_kafka_unreachable_a_drain_exits_1_within_its_bound_and_keeps_every_record() {
    let topics = TestTopics::new();
    let dir = spool_dir();
    backlog(&dir, &topics, 3, 10).await;
    let vars = drain_vars(&nowhere(), &topics, &dir);

    let started = Instant::now();
    let output = run_drain(&vars, &["--give-up-after", "6"], Duration::from_secs(30)).await;
    let took = started.elapsed();
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    // The bound, then at most a check, the forwarder's stop and the process's exit.
    assert!(
        took >= Duration::from_secs(6) && took < Duration::from_secs(11),
        "took {took:?}"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.lines().any(|line| line
            .starts_with("drain: 0 forwarded, 0 set aside, 30 left; Kafka is not reachable")),
        "no progress line: {stderr}"
    );
    let last = stderr.lines().last().unwrap_or_default();
    for part in [
        "Kafka took no record for 6 s",
        "Kafka is not reachable",
        "30 records left",
    ] {
        assert!(last.contains(part), "{part} missing: {}", describe(&output));
    }
    let summary = summary_of(&output);
    assert_eq!(summary["forwarded"], 0, "{}", describe(&output));
    assert_eq!(summary["left"], 30, "{}", describe(&output));
    assert_eq!(records_in(&vars).await, 30, "every record stays spooled");
}

#[tokio::test]
async fn a_record_kafka_refuses_for_good_is_set_aside_by_the_drain_and_counted() {
    let cluster: MockCluster<'static, DefaultProducerContext> =
        MockCluster::new(1).expect("mock cluster");
    let topics = TestTopics::new();
    for topic in topics.all() {
        cluster
            .create_topic(topic, PARTITIONS, 1)
            .expect("mock topic");
    }
    let dir = spool_dir();
    backlog(&dir, &topics, 1, 10).await;
    // The first request (perhaps a batch) is refused, then the head record on its own: it is
    // the record itself. Its dead letter, the third request, is taken.
    let too_large = RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE;
    cluster.request_errors(RDKafkaApiKey::Produce, &[too_large, too_large]);
    let bootstrap = cluster.bootstrap_servers();
    let vars = drain_vars(&bootstrap, &topics, &dir);

    let output = run_drain(&vars, &[], Duration::from_secs(60)).await;
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let summary = summary_of(&output);
    for (name, expected) in [
        ("forwarded", 9),
        ("set aside", 1),
        ("to the dead-letter topic", 1),
        ("to the quarantine", 0),
        ("left", 0),
    ] {
        assert_eq!(summary.get(name), Some(&expected), "{}", describe(&output));
    }
    let records = read_all_records(&bootstrap, &topics.messages, 9).await;
    assert_eq!(
        first_occurrences(&texts_of(&records, "chat-0")),
        (1..10).collect::<Vec<_>>()
    );
    let letters = read_all_records(&bootstrap, &topics.deadletter, 1).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].value, message("chat-0", 0).as_bytes());
}

/// Reads `topic` until at least `count` records are there.
async fn wait_for_records(bootstrap: &str, topic: &str, count: usize) {
    let records = read_records(bootstrap, topic, count, Duration::from_secs(30)).await;
    assert!(
        records.len() >= count,
        "only {} of {count} records arrived",
        records.len()
    );
}

#[tokio::test]
#[ignore = "needs the broker: scripts/test.sh starts it and runs these"]
async fn an_interrupted_drain_goes_on_where_it_stopped_and_leaves_nothing_for_a_bridge() {
    let ProxiedBroker {
        broker: _broker,
        proxy,
        bootstrap,
        topics,
    } = proxied_broker().await;
    let dir = spool_dir();
    let (chats, per_chat) = (3, 100);
    backlog(&dir, &topics, chats, per_chat).await;
    let total = (chats * per_chat) as u64;
    let mut vars = drain_vars(&bootstrap, &topics, &dir);
    // Requests of ten records, sent at 40 KB/s: about 40 records a second, so each run is
    // stopped with most of the backlog still spooled. Uncompressed, since the pace is counted in
    // bytes: lz4 (the default) makes the same records five times smaller, and the first run
    // drained everything before its SIGTERM.
    vars.push(("KAFKA_BATCH_NUM_MESSAGES".into(), "10".into()));
    vars.push(("KAFKA_COMPRESSION_TYPE".into(), "none".into()));
    proxy.throttle(40 << 10);

    // SIGTERM mid-drain: the run stops, says so, and counts what it did.
    let child = drain_command(&vars, &[]).spawn().expect("drain starts");
    wait_for_records(&bootstrap, &topics.messages, 20).await;
    let pid = child.id().to_string();
    let signalled = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let stopped = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("waiter")
        .expect("output");
    assert!(signalled.elapsed() < Duration::from_secs(5));
    assert_eq!(stopped.status.code(), Some(1), "{}", describe(&stopped));
    let stderr = String::from_utf8_lossy(&stopped.stderr);
    assert!(
        stderr
            .lines()
            .last()
            .is_some_and(|l| l.contains("stopped by a signal")),
        "{stderr}"
    );
    let first = summary_of(&stopped);
    let (forwarded, left) = (first["forwarded"], first["left"]);
    assert!(forwarded >= 20 && left > 0, "{}", describe(&stopped));
    assert_eq!(forwarded + left, total, "{}", describe(&stopped));
    assert_eq!(
        records_in(&vars).await,
        left,
        "the next run starts where it stopped"
    );

    // kill -9 mid-drain: nothing to say, nothing lost.
    let mut child = Running(drain_command(&vars, &[]).spawn().expect("drain starts"));
    wait_for_records(&bootstrap, &topics.messages, forwarded as usize + 20).await;
    assert!(
        child.0.try_wait().expect("status").is_none(),
        "it had ended"
    );
    child.0.kill().expect("SIGKILL");
    child.0.wait().expect("reaped");
    let after_kill = records_in(&vars).await;
    assert!(
        after_kill > 0 && after_kill < left,
        "{after_kill} of {left}"
    );

    // A last run at full speed drains the rest.
    proxy.throttle(0);
    let last = run_drain(&vars, &[], Duration::from_secs(60)).await;
    assert_eq!(last.status.code(), Some(0), "{}", describe(&last));
    assert_eq!(summary_of(&last)["left"], 0, "{}", describe(&last));
    assert_eq!(
        records_in(&vars).await,
        0,
        "the last run checkpointed everything"
    );

    let records = read_all_records(&bootstrap, &topics.messages, total as usize).await;
    for c in 0..chats {
        let chat = format!("chat-{c}");
        let texts = texts_of(&records, &chat);
        assert_eq!(
            first_occurrences(&texts),
            (0..per_chat).collect::<Vec<_>>(),
            "{chat}: every message at least once, in order: {texts:?}"
        );
    }
    assert_a_bridge_finds_nothing(&bootstrap, &topics, &dir).await;
}
