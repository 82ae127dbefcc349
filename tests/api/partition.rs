//! One partition away while the others take traffic (librdkafka's mock cluster, three
//! brokers, the partition's leader down for a minute): records the healthy partitions
//! acknowledged are never sent again by the producer replacements the stall brings.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::helpers::*;

/// Chats whose records go to `partition` of a topic with `PARTITIONS` partitions.
fn chats_on(partition: i32, count: usize) -> Vec<String> {
    (0..)
        .map(|n| format!("chat-p{partition}-{n}"))
        .filter(|chat| java_partition(chat, PARTITIONS) == partition)
        .take(count)
        .collect()
}

#[tokio::test]
async fn a_partition_away_for_a_minute_does_not_multiply_the_healthy_partitions_records() {
    let cluster = rdkafka::mocking::MockCluster::new(3).expect("mock cluster");
    let topics = TestTopics::new();
    for topic in topics.all() {
        cluster.create_topic(topic, PARTITIONS, 1).expect("topic");
        for partition in 0..PARTITIONS {
            let leader = if partition == 0 { 3 } else { 1 + partition % 2 };
            cluster
                .partition_leader(topic, partition, Some(leader))
                .expect("leader");
        }
    }
    let dir = spool_dir();
    let mut vars = spool_vars(&dir);
    vars.push(("BRIDGE_PUBLISH_TIMEOUT_MS".into(), "1000".into()));
    let app = spawn_app_on(&cluster.bootstrap_servers(), topics, &overrides(&vars)).await;
    app.wait_ready().await;
    let away = chats_on(0, 2);
    let healthy: Vec<String> = (1..PARTITIONS).flat_map(|p| chats_on(p, 2)).collect();
    let mut sent: HashMap<String, usize> = HashMap::new();
    let mut post = async |chat: &String| {
        let n = sent.entry(chat.clone()).or_default();
        app.post_accepted(message(chat, *n)).await;
        *n += 1;
    };

    cluster.broker_down(3).expect("leader down");
    let stalled = Instant::now();
    // Bursts with quiet between them: in the quiet, nothing is acknowledged, so the producer
    // counts as stuck (after 10 s) and is replaced, with the healthy records in its window.
    while stalled.elapsed() < Duration::from_secs(60) {
        for _ in 0..20 {
            for chat in away.iter().chain(&healthy) {
                post(chat).await;
            }
        }
        tokio::time::sleep(Duration::from_secs(14)).await;
    }
    let (_, body) = app.readiness().await;
    let conditions = body["conditions"].as_array().cloned().unwrap_or_default();
    assert!(
        conditions
            .iter()
            .any(|c| c["code"] == "partition_unavailable"),
        "readiness does not name the partition away: {body}"
    );
    cluster.broker_up(3).expect("leader back");
    app.wait_spool_drained(Duration::from_secs(60)).await;

    let total: usize = sent.values().sum();
    let records = read_all_records(&app.bootstrap, &app.topics.messages, total).await;
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for record in records.iter().filter(|r| r.partition != 0) {
        *copies
            .entry(record.header("ce_id").expect("ce_id"))
            .or_default() += 1;
    }
    let healthy_sent: usize = healthy.iter().map(|c| sent[c]).sum();
    assert_eq!(copies.len(), healthy_sent, "every healthy record landed");
    let again: usize = copies.values().map(|n| n - 1).sum();
    assert!(
        again * 20 <= healthy_sent,
        "{again} copies again of {healthy_sent} records the healthy partitions had acknowledged"
    );
    for chat in away.iter().chain(&healthy) {
        assert_eq!(
            first_occurrences(&texts_of(&records, chat)),
            (0..sent[chat]).collect::<Vec<_>>(),
            "{chat}"
        );
    }
}
