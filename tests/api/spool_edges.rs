//! Spool mode at its edges: records at Kafka's size limit, a full volume, a damaged segment.

use std::time::{Duration, Instant};

use omnichat_bridge::publish::{Header, Record};
use omnichat_bridge::spool::segments::{SegmentWriter, encode};
use serde_json::Value;

use crate::faults::{MockSetup, mock_setup};
use crate::helpers::*;

/// Bodies around the limit, as dead letters (not JSON) and as events: each is either stored
/// (400 dead-lettered, or 202) or refused 413 before it is stored, never let in and then
/// refused by Kafka, which in spool mode would hold up everything behind it.
async fn posts_at_the_size_limit_are_stored_or_413(spool: bool) {
    let dir = spool_dir();
    let mut overrides = vec![
        ("KAFKA_MESSAGE_MAX_BYTES".to_owned(), "10000".to_owned()),
        ("BRIDGE_MAX_BODY_BYTES".to_owned(), "65536".to_owned()),
    ];
    if spool {
        overrides.extend(spool_vars(&dir));
    }
    let overrides: Vec<(&str, &str)> = overrides
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let app = spawn_app_with(&overrides).await;
    let mut dead_lettered = Vec::new();
    let mut too_large = 0;
    for size in (9_500..9_800).step_by(5) {
        let body = "x".repeat(size);
        let response = app.post(body.clone()).await;
        match response.status().as_u16() {
            400 => dead_lettered.push(body),
            413 => too_large += 1,
            other => panic!("{size} bytes: {other}"),
        }
    }
    let chat = "chat-edge";
    let mut accepted = 0;
    for pad in (8_300..8_900).step_by(10) {
        let body = message(chat, accepted).replace(
            &format!("\"text\":\"{accepted}\""),
            &format!("\"text\":\"{accepted}\",\"pad\":\"{}\"", "p".repeat(pad)),
        );
        let response = app.post(body).await;
        match response.status().as_u16() {
            202 => accepted += 1,
            413 => too_large += 1,
            other => panic!("padding {pad}: {other}"),
        }
    }
    assert!(
        !dead_lettered.is_empty() && accepted > 0,
        "the walk starts below the limit"
    );
    assert!(too_large > 0, "the walk crosses the limit");
    for n in accepted..accepted + 5 {
        app.post_accepted(message(chat, n)).await;
    }
    if spool {
        app.wait_spool_drained(Duration::from_secs(30)).await;
        let (_, body) = app.readiness().await;
        assert_eq!(body["spool"]["forwardError"], Value::Null, "{body}");
    }
    let events = read_all_records(&app.bootstrap, &app.topics.messages, accepted + 5).await;
    assert_eq!(
        texts_of(&events, chat),
        (0..accepted + 5).collect::<Vec<_>>(),
        "every 202 once, in order"
    );
    let letters =
        read_all_records(&app.bootstrap, &app.topics.deadletter, dead_lettered.len()).await;
    // Keyed by their bytes, dead letters spread over partitions: compared as sets.
    let mut bodies: Vec<&[u8]> = letters.iter().map(|l| l.value.as_slice()).collect();
    let mut expected: Vec<&[u8]> = dead_lettered.iter().map(|b| b.as_bytes()).collect();
    bodies.sort_unstable();
    expected.sort_unstable();
    assert!(
        bodies == expected,
        "every 400 dead-lettered, byte for byte, once: {} stored of {} answered 400",
        bodies.len(),
        expected.len()
    );
}

#[tokio::test]
#[ignore = "needs the broker: scripts/test.sh starts it and runs these"]
async fn in_kafka_mode_posts_at_the_size_limit_are_stored_or_413() {
    posts_at_the_size_limit_are_stored_or_413(false).await;
}

#[tokio::test]
#[ignore = "needs the broker: scripts/test.sh starts it and runs these"]
async fn in_spool_mode_posts_at_the_size_limit_are_stored_or_413_and_nothing_wedges() {
    posts_at_the_size_limit_are_stored_or_413(true).await;
}

/// A small tmpfs mounted on the spool directory, unmounted when dropped. CI runs as root, so
/// a mount that fails is a failure of the test, not a reason to skip it.
struct SmallVolume(std::path::PathBuf);

impl SmallVolume {
    fn mount(size: &str) -> Self {
        let dir = spool_dir();
        std::fs::create_dir_all(&dir).expect("mount point");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("mount runs");
        assert!(status.success(), "mounting a tmpfs needs root: {status}");
        Self(dir)
    }

    /// Fills what is left of the volume. Bounded, so that a volume that is not mounted (or was
    /// unmounted under the test) can never fill the real disk.
    fn fill(&self) {
        use std::io::Write;
        let mut filler = std::fs::File::create(self.0.join("filler")).expect("filler");
        let block = vec![0xAA; 4096];
        let mut written = 0;
        while written < 4 << 20 && filler.write_all(&block).is_ok() {
            written += block.len();
        }
        let _ = filler.sync_all();
        assert!(
            written < 4 << 20,
            "{} is not a small volume",
            self.0.display()
        );
    }
}

impl Drop for SmallVolume {
    fn drop(&mut self) {
        // Lazily: the bridge may still hold the directory as the test ends.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Spool mode on `volume`, with a spool limit far above the volume: the volume fills first.
fn small_volume_vars(volume: &SmallVolume) -> Vec<(String, String)> {
    let mut vars = spool_vars(&volume.0);
    vars.push(("BRIDGE_SPOOL_MAX_BYTES".into(), (64u64 << 20).to_string()));
    vars
}

fn padded(chat: &str, n: usize) -> String {
    message(chat, n).replace(
        "\"system\"",
        &format!("\"pad\":\"{}\",\"system\"", "z".repeat(2000)),
    )
}

#[tokio::test]
async fn a_full_volume_answers_spool_full_then_starts_drains_and_frees_space() {
    let volume = SmallVolume::mount("1m");
    let vars = small_volume_vars(&volume);
    let overrides = overrides(&vars);
    let MockSetup { cluster, mut app } = mock_setup(1, &overrides).await;
    cluster.broker_down(1).expect("down");

    let chat = "chat-full";
    let mut accepted = 0;
    loop {
        assert!(accepted < 2_000, "the volume never filled");
        let response = app.post(padded(chat, accepted)).await;
        match response.status().as_u16() {
            202 => accepted += 1,
            503 => {
                let json: Value = response.json().await.expect("body");
                assert_eq!(json["error"]["code"], "spool_full", "{json}");
                break;
            }
            other => panic!("{other}"),
        }
    }
    assert!(
        app.get_admin("/readyz").await.status() == 503,
        "not ready while full"
    );
    assert_eq!(
        app.get_admin("/healthz").await.status(),
        200,
        "a full volume is not fatal"
    );

    // Restarted on the full volume (what remains is taken too): it starts, and says full.
    app.stop().await;
    volume.fill();
    let topics = app.topics.clone();
    let app = spawn_app_on(&cluster.bootstrap_servers(), topics, &overrides).await;
    let response = app.post(padded(chat, accepted)).await;
    assert_eq!(response.status(), 503);
    assert_eq!(app.get_admin("/healthz").await.status(), 200);

    // Kafka back: the backlog goes out, its segments are deleted, and the spool takes more.
    cluster.broker_up(1).expect("up");
    std::fs::remove_file(volume.0.join("filler")).ok();
    app.post_until_accepted(padded(chat, accepted), Duration::from_secs(60))
        .await;
    accepted += 1;
    app.wait_spool_drained(Duration::from_secs(60)).await;
    let records = read_all_records(&app.bootstrap, &app.topics.messages, accepted).await;
    assert_eq!(
        first_occurrences(&texts_of(&records, chat)),
        (0..accepted).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn the_backlog_alone_frees_a_volume_filled_by_something_else() {
    let volume = SmallVolume::mount("1m");
    let vars = small_volume_vars(&volume);
    let overrides = overrides(&vars);
    let MockSetup { cluster, mut app } = mock_setup(1, &overrides).await;
    cluster.broker_down(1).expect("down");
    let chat = "chat-filled";
    for n in 0..50 {
        app.post_accepted(padded(chat, n)).await;
    }
    app.stop().await;
    // The rest of the volume taken by something else; the bridge must still start.
    volume.fill();
    let topics = app.topics.clone();
    let app = spawn_app_on(&cluster.bootstrap_servers(), topics, &overrides).await;
    assert_eq!(app.post(padded(chat, 50)).await.status(), 503);
    cluster.broker_up(1).expect("up");
    app.wait_spool_drained(Duration::from_secs(60)).await;
    // Forwarding deleted the backlog's segment, which freed enough for a new one.
    app.post_until_accepted(padded(chat, 50), Duration::from_secs(30))
        .await;
    app.wait_spool_drained(Duration::from_secs(60)).await;
    let records = read_all_records(&app.bootstrap, &app.topics.messages, 51).await;
    assert_eq!(
        first_occurrences(&texts_of(&records, chat)),
        (0..51).collect::<Vec<_>>()
    );
}

fn spooled(n: u64) -> Record {
    Record {
        topic: "t".into(),
        key: "chat".into(),
        headers: vec![(Header::Borrowed("ce_id"), Header::Owned(n.to_string()))],
        value: format!("{{\"n\":{n}}}").into_bytes(),
    }
}

#[test]
fn a_damaged_spool_stops_the_process_with_one_line_naming_file_and_offset_unless_set_aside() {
    let dir = spool_dir();
    std::fs::create_dir_all(&dir).expect("spool dir");
    let mut writer = SegmentWriter::new(&dir, 0, 1 << 20);
    let mut ends = Vec::new();
    for n in 0..300 {
        let (end, _) = writer.append(&encode(&spooled(n), n)).expect("append");
        ends.push(end.offset);
    }
    drop(writer);
    let path = dir.join("00000000000000000000.seg");
    let mut bytes = std::fs::read(&path).expect("segment");
    bytes[ends[150] as usize - 2] ^= 0x01;
    std::fs::write(&path, &bytes).expect("damage");

    let mut vars = base_vars("127.0.0.1:9", &TestTopics::new());
    vars.extend(spool_vars(&dir));
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_omnichat-bridge"))
        .env_clear()
        .envs(vars.iter().cloned())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("runs");
    let output = exit_within(refused, Duration::from_secs(20))
        .expect("a damaged spool was accepted: the bridge is running");
    assert!(!output.status.success(), "a damaged spool was accepted");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    for part in [
        "00000000000000000000.seg".to_owned(),
        format!("byte {}", ends[149]),
        "BRIDGE_SPOOL_ON_DAMAGE".to_owned(),
    ] {
        assert!(lines[0].contains(&part), "{part} missing: {stderr}");
    }
    assert_eq!(std::fs::read(&path).expect("segment"), bytes, "nothing cut");

    // set-aside: it starts; the damaged segment is in the quarantine, as found.
    vars.push(("BRIDGE_SPOOL_ON_DAMAGE".into(), "set-aside".into()));
    vars.push(("BRIDGE_LOG_FORMAT".into(), "text".into()));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_omnichat-bridge"))
        .env_clear()
        .envs(vars)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starts");
    let quarantined = dir
        .join("quarantine")
        .join(format!("damaged-at-{}-00000000000000000000.seg", ends[149]));
    let deadline = Instant::now() + Duration::from_secs(20);
    // Copied whole and synced before the start goes on.
    while std::fs::metadata(&quarantined).map(|m| m.len()).ok() != Some(bytes.len() as u64) {
        assert!(
            child.try_wait().expect("status").is_none(),
            "the bridge exited"
        );
        assert!(Instant::now() < deadline, "nothing quarantined");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(std::fs::read(&quarantined).expect("copy"), bytes);
}
