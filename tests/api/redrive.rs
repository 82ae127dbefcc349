//! `omnichat-bridge redrive` against the real broker: dead letters whose bodies normalize today
//! reach their event topic under the ids a live delivery would have given them, once per run
//! that asks for them; what still fails stays in the dead-letter topic.

use std::process::{Command, Output};
use std::time::Duration;

use omnichat_bridge::event::id;
use omnichat_bridge::omnichat::Webhook;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::helpers::*;

const BINARY: &str = env!("CARGO_BIN_EXE_omnichat-bridge");
const RECEIVED_AT: &str = "2026-01-02T03:04:05.678Z";
const SIGNED_ID: &str = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W";
/// 2026-01-01T00:00:00Z and 2026-06-01T00:00:00Z, in ms: when the test's dead letters were
/// "written", by record timestamp.
const JANUARY: i64 = 1_767_225_600_000;
const JUNE: i64 = 1_780_272_000_000;

struct Letter {
    body: String,
    code: &'static str,
    signed: bool,
    timestamp: i64,
}

/// Writes dead letters as the bridge writes them, all to partition 0 so offsets are known.
async fn write_letters(bootstrap: &str, topic: &str, letters: &[Letter]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("producer");
    for letter in letters {
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: "error_code",
                value: Some(letter.code),
            })
            .insert(Header {
                key: "error_message",
                value: Some("refused then"),
            })
            .insert(Header {
                key: "ce_type",
                value: Some("chat.omni.deadletter"),
            })
            .insert(Header {
                key: "received_at",
                value: Some(RECEIVED_AT),
            });
        if letter.signed {
            headers = headers.insert(Header {
                key: "webhook-id",
                value: Some(SIGNED_ID),
            });
        }
        producer
            .send(
                FutureRecord::to(topic)
                    .partition(0)
                    .key("some-key")
                    .payload(&letter.body)
                    .headers(headers)
                    .timestamp(letter.timestamp),
                Duration::from_secs(10),
            )
            .await
            .expect("dead letter written");
    }
}

async fn redrive_cli(vars: &[(String, String)], args: &[&str]) -> Output {
    let vars = vars.to_vec();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(BINARY)
            .env_clear()
            .envs(vars)
            .arg("redrive")
            .args(args)
            .output()
            .expect("runs")
    })
    .await
    .expect("task")
}

/// The run's summary line `name: n`.
fn count(output: &Output, name: &str) -> u64 {
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name}: ")))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `{name}` in {stdout}"))
}

fn assert_ran(output: &Output) {
    assert!(
        output.status.success(),
        "redrive failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
#[ignore = "needs the broker: scripts/test.sh starts it and runs these"]
async fn dead_letters_that_normalize_now_are_re_driven_once_with_their_original_ids() {
    let bootstrap = bootstrap();
    let topics = TestTopics::new();
    topics.create(&bootstrap).await;
    let vars = base_vars(&bootstrap, &topics);
    let unsigned = message("chat-r", 1);
    let letters = [
        Letter {
            body: unsigned.clone(),
            code: "kafka_msg_size_too_large",
            signed: false,
            timestamp: JANUARY,
        },
        Letter {
            body: message("chat-r", 2),
            code: "kafka_policy_violation",
            signed: true,
            timestamp: JANUARY,
        },
        Letter {
            body: "{not json".to_owned(),
            code: "invalid_json",
            signed: false,
            timestamp: JANUARY,
        },
        Letter {
            body: message("chat-r", 3),
            code: "missing_chat",
            signed: false,
            timestamp: JUNE,
        },
    ];
    write_letters(&bootstrap, &topics.deadletter, &letters).await;

    let first = redrive_cli(&vars, &[]).await;
    assert_ran(&first);
    assert_eq!(count(&first, "read"), 4);
    assert_eq!(count(&first, "re-driven"), 3);
    assert_eq!(count(&first, "still failing"), 1);
    assert_eq!(count(&first, "  invalid_json"), 1);

    let events = read_all_records(&bootstrap, &topics.messages, 3).await;
    assert_eq!(events.len(), 3, "each re-driven once");
    let webhook = Webhook::parse(unsigned.as_bytes()).expect("parses");
    let expected_unsigned = id::unsigned(&webhook, unsigned.as_bytes());
    let mut ids: Vec<&str> = events.iter().filter_map(|e| e.header("ce_id")).collect();
    ids.sort_unstable();
    assert!(ids.contains(&SIGNED_ID), "{ids:?}");
    assert!(ids.contains(&expected_unsigned.as_str()), "{ids:?}");
    for event in &events {
        let value = event.json();
        assert_valid_event(&value);
        assert_eq!(
            value["receivedAt"], RECEIVED_AT,
            "the original receive time"
        );
        assert_eq!(
            event.key.as_deref(),
            Some("chat-r"),
            "keyed by the chat again"
        );
    }
    let texts = texts_of(&events, "chat-r");
    assert_eq!(texts, [1, 2, 3], "in the dead-letter partition's order");

    // The group remembers: nothing new to do.
    let second = redrive_cli(&vars, &[]).await;
    assert_ran(&second);
    assert_eq!(count(&second, "read"), 0);
    assert_eq!(count(&second, "re-driven"), 0);

    // A dry run over everything says what would happen and publishes nothing.
    let dry = redrive_cli(&vars, &["--all", "--dry-run"]).await;
    assert_ran(&dry);
    assert_eq!(count(&dry, "re-driven"), 3);
    let stdout = String::from_utf8_lossy(&dry.stdout);
    assert_eq!(
        stdout
            .matches("would re-drive as chat.omni.message.created")
            .count(),
        3,
        "{stdout}"
    );
    assert!(stdout.contains("still fails: invalid_json"), "{stdout}");

    // Ranges: by record timestamp, and by offset.
    let june = redrive_cli(&vars, &["--since", "2026-03-01T00:00:00Z", "--dry-run"]).await;
    assert_ran(&june);
    assert_eq!((count(&june, "read"), count(&june, "skipped")), (1, 3));
    let before = redrive_cli(&vars, &["--until", "2026-03-01T00:00:00Z", "--dry-run"]).await;
    assert_ran(&before);
    assert_eq!(count(&before, "read"), 3);
    let offsets = redrive_cli(&vars, &["--offsets", "1..3", "--dry-run"]).await;
    assert_ran(&offsets);
    assert_eq!(count(&offsets, "read"), 2);
    assert_eq!(count(&offsets, "  invalid_json"), 1);

    assert_eq!(
        read_all_records(&bootstrap, &topics.messages, 3)
            .await
            .len(),
        3,
        "neither the second run nor dry runs published"
    );

    // After another fix, --all goes over old dead letters again, under the same ids.
    let again = redrive_cli(&vars, &["--all"]).await;
    assert_ran(&again);
    assert_eq!(count(&again, "re-driven"), 3);
    let events = read_all_records(&bootstrap, &topics.messages, 6).await;
    assert_eq!(events.len(), 6);
    let mut again_ids: Vec<&str> = events.iter().filter_map(|e| e.header("ce_id")).collect();
    again_ids.sort_unstable();
    again_ids.dedup();
    assert_eq!(
        again_ids, ids,
        "a consumer deduplicating on ce_id sees nothing twice"
    );
    assert_eq!(
        read_all_records(&bootstrap, &topics.deadletter, 4)
            .await
            .len(),
        4,
        "dead letters stay where they are"
    );
}

#[tokio::test]
async fn redrive_without_kafka_fails_within_its_deadline_and_names_why() {
    let topics = TestTopics::new();
    let vars = base_vars(&format!("127.0.0.1:{}", free_port()), &topics);
    let started = std::time::Instant::now();
    let output = redrive_cli(&vars, &[]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(started.elapsed() < Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Kafka is not reachable"), "{stderr}");
    let bad = redrive_cli(&vars, &["--since", "yesterday"]).await;
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--since"));
}

/// A quarantine as the forwarder leaves it: dead letters in the spool's segment format.
fn write_quarantine(dir: &std::path::Path, bodies: &[&str]) -> u64 {
    use omnichat_bridge::publish::{Header as RecordHeader, Record};
    use omnichat_bridge::spool::segments::{SegmentWriter, encode};
    let quarantine = dir.join("quarantine");
    std::fs::create_dir_all(&quarantine).expect("quarantine dir");
    let mut writer = SegmentWriter::new(&quarantine, 0, u64::MAX);
    for body in bodies {
        let letter = Record {
            topic: "dl".into(),
            key: "chat-q".to_owned(),
            headers: [
                ("error_code", "kafka_message_size_too_large"),
                ("ce_type", "chat.omni.deadletter"),
                ("received_at", RECEIVED_AT),
            ]
            .into_iter()
            .map(|(n, v)| (RecordHeader::Borrowed(n), RecordHeader::Borrowed(v)))
            .collect(),
            value: body.as_bytes().to_vec(),
        };
        writer.append(&encode(&letter, 0)).expect("quarantined");
    }
    std::fs::metadata(quarantine.join(format!("{:020}.seg", 0)))
        .expect("segment")
        .len()
}

#[tokio::test]
#[ignore = "needs the broker: scripts/test.sh starts it and runs these"]
async fn the_running_bridge_re_drives_its_quarantine_into_the_spool_and_keeps_what_still_fails() {
    let dir = spool_dir();
    let quarantined = write_quarantine(&dir, &[&message("chat-q", 7), "{not json"]);
    let app = spawn_app_with(&overrides(&spool_vars(&dir))).await;

    // The quarantine counts against the spool's limit, and is shown.
    let (_, body) = app.readiness().await;
    assert_eq!(body["spool"]["quarantineBytes"], quarantined, "{body}");
    assert!(
        body["spool"]["bytes"].as_u64() >= Some(quarantined),
        "{body}"
    );
    assert!(app.metrics().await.contains(&format!(
        "omnichat_bridge_spool_quarantine_bytes {quarantined}"
    )));

    let redrive = |dry_run: bool| {
        let url = format!(
            "{}/quarantine/redrive{}",
            app.admin_address,
            if dry_run { "?dryRun=true" } else { "" }
        );
        let client = app.client.clone();
        async move {
            let response = client.post(url).send().await.expect("admin answers");
            let status = response.status().as_u16();
            (
                status,
                response.json::<serde_json::Value>().await.expect("json"),
            )
        }
    };
    let (status, dry) = redrive(true).await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(
        (dry["read"].as_u64(), dry["redriven"].as_u64()),
        (Some(2), Some(1)),
        "{dry}"
    );
    assert_eq!(
        app.readiness().await.1["spool"]["quarantineBytes"],
        quarantined,
        "a dry run changes nothing"
    );

    let (status, done) = redrive(false).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["redriven"], 1, "{done}");
    assert_eq!(done["stillFailing"]["invalid_json"], 1, "{done}");
    app.wait_spool_drained(Duration::from_secs(30)).await;
    let events = read_all_records(&app.bootstrap, &app.topics.messages, 1).await;
    assert_eq!(events.len(), 1);
    assert_eq!(texts_of(&events, "chat-q"), [7]);
    assert_eq!(events[0].json()["receivedAt"], RECEIVED_AT);

    // What still fails stays in the quarantine, and only that.
    let (_, body) = app.readiness().await;
    let left = body["spool"]["quarantineBytes"]
        .as_u64()
        .unwrap_or_default();
    assert!(left > 0 && left < quarantined, "{body}");
    // The same through the command an operator runs with `kubectl exec`.
    let admin = app.admin_address.trim_start_matches("http://").to_owned();
    let again = redrive_cli(
        &[("BRIDGE_ADMIN_ADDR".to_owned(), admin)],
        &["--quarantine"],
    )
    .await;
    assert_ran(&again);
    assert_eq!((count(&again, "read"), count(&again, "re-driven")), (1, 0));
    assert_eq!(count(&again, "  invalid_json"), 1);
    assert_eq!(
        read_all_records(&app.bootstrap, &app.topics.messages, 1)
            .await
            .len(),
        1
    );
}
