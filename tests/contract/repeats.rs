//! Repeated deliveries answered once: a repeat of an event this process stored within
//! `BRIDGE_DEDUP_WINDOW_S` gets the first answer with `"duplicate": true` and nothing is
//! published again; one of an event answered 503 is published.

use std::time::Duration;

use omnichat_bridge::publish::PublishError;
use serde_json::Value;

use crate::app::*;

fn order(n: usize) -> String {
    format!(
        r#"{{"objectId":"order-{n}","resource":"Order","event":"CREATE","timestamp":1681825655283}}"#
    )
}

/// The value of a metric's sample, 0 when it has none.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A repeat's answer is the first's, plus `duplicate`.
fn assert_repeat_of(first: &Value, repeat: &Value) {
    let mut expected = first.clone();
    expected["duplicate"] = Value::Bool(true);
    assert_eq!(repeat, &expected);
}

#[tokio::test]
async fn a_repeat_after_the_first_is_stored_gets_its_answer_and_nothing_is_published_again() {
    let app = spawn(&[]).await;
    let first = app.post_accepted(SEED).await;
    assert_eq!(first.get("duplicate"), None, "{first}");
    let repeat = app.post_accepted(SEED).await;
    assert_repeat_of(&first, &repeat);
    assert_eq!(app.recorder.begun(), 1);
    let metrics = app.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            r#"omnichat_bridge_duplicates_total{first="stored"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &metrics,
            r#"omnichat_bridge_events_total{topic="omnichat.messages",resource="Message",event="CREATE"}"#
        ),
        1.0,
        "counted once as an event"
    );
}

#[tokio::test]
async fn a_repeat_while_the_first_is_being_stored_waits_for_it_instead_of_publishing() {
    let app = spawn(&[]).await;
    app.recorder
        .script([Answer::After(Duration::from_millis(400))]);
    let first = tokio::spawn({
        let (client, url) = (app.client.clone(), app.webhook_url());
        async move {
            let response = client.post(url).bearer_auth(TOKEN).body(SEED).send().await;
            response.expect("sent").json::<Value>().await.expect("JSON")
        }
    });
    app.recorder.wait_begun(1).await;
    let repeat = app.post_accepted(SEED).await;
    let first = first.await.expect("first answered");
    assert_repeat_of(&first, &repeat);
    assert_eq!((app.recorder.begun(), app.recorder.stored().len()), (1, 1));
    let metrics = app.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            r#"omnichat_bridge_duplicates_total{first="storing"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn a_repeat_of_an_event_answered_503_is_published() {
    let app = spawn(&[]).await;
    app.recorder
        .script([Answer::Fail(PublishError::Timeout(Duration::from_secs(5)))]);
    let (status, _) = error_of(app.post(SEED).await).await;
    assert_eq!(status, 503);
    let retry = app.post_accepted(SEED).await;
    assert_eq!(retry.get("duplicate"), None, "{retry}");
    assert_eq!(app.recorder.stored().len(), 1);
    assert_repeat_of(&retry, &app.post_accepted(SEED).await);
}

#[tokio::test]
async fn a_repeat_waiting_for_a_first_that_gets_503_publishes_the_event_itself() {
    let app = spawn(&[]).await;
    app.recorder.script([Answer::FailAfter(
        Duration::from_millis(300),
        PublishError::Timeout(Duration::from_secs(5)),
    )]);
    let first = tokio::spawn({
        let (client, url) = (app.client.clone(), app.webhook_url());
        async move {
            let response = client.post(url).bearer_auth(TOKEN).body(SEED).send().await;
            response.expect("sent").status().as_u16()
        }
    });
    app.recorder.wait_begun(1).await;
    let repeat = app.post_accepted(SEED).await;
    assert_eq!(first.await.expect("first answered"), 503);
    assert_eq!(repeat.get("duplicate"), None, "{repeat}");
    assert_eq!((app.recorder.begun(), app.recorder.stored().len()), (2, 1));
}

#[tokio::test]
async fn after_its_window_a_repeat_is_published_again() {
    let app = spawn(&[("BRIDGE_DEDUP_WINDOW_S", "1")]).await;
    app.post_accepted(SEED).await;
    assert_eq!(app.post_accepted(SEED).await["duplicate"], true);
    // Sleeps past the window: what is tested is its passing.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let later = app.post_accepted(SEED).await;
    assert_eq!(later.get("duplicate"), None, "{later}");
    assert_eq!(app.recorder.stored().len(), 2);
}

#[tokio::test]
async fn with_a_window_of_0_every_repeat_is_published() {
    let app = spawn(&[("BRIDGE_DEDUP_WINDOW_S", "0")]).await;
    for _ in 0..3 {
        let answer = app.post_accepted(SEED).await;
        assert_eq!(answer.get("duplicate"), None, "{answer}");
    }
    assert_eq!(app.recorder.stored().len(), 3);
}

#[tokio::test]
async fn dead_letters_are_not_remembered_each_delivery_is_dead_lettered() {
    let app = spawn(&[]).await;
    for _ in 0..2 {
        let (status, body) = error_of(app.post("{not json").await).await;
        assert_eq!((status, &body["deadLettered"]), (400, &Value::Bool(true)));
    }
    assert_eq!(app.recorder.stored_to("omnichat.deadletter").len(), 2);
}

#[tokio::test]
async fn past_the_most_ids_the_oldest_are_forgotten_counted_and_published_again() {
    let app = spawn(&[("BRIDGE_DEDUP_MAX_IDS", "16")]).await;
    for n in 0..400 {
        app.post_accepted(order(n)).await;
    }
    let forgotten = sample(
        &app.metrics().await,
        "omnichat_bridge_dedup_forgotten_ids_total",
    );
    assert!(
        forgotten >= 384.0,
        "{forgotten} ids forgotten of 400, 16 kept"
    );
    let again = app.post_accepted(order(0)).await;
    assert_eq!(again.get("duplicate"), None, "{again}");
    assert_eq!(app.recorder.stored().len(), 401);
}

#[tokio::test]
async fn in_spool_mode_repeats_get_the_spooled_answer_and_are_spooled_once() {
    let dir = std::env::temp_dir().join(format!("contract-repeats-{}", uuid::Uuid::new_v4()));
    let dir_text = dir.display().to_string();
    let app = spawn_real(&[
        ("BRIDGE_ACK_MODE", "spool"),
        ("BRIDGE_SPOOL_DIR", &dir_text),
    ])
    .await;
    let first = app.post_accepted(SEED).await;
    assert_eq!(first["spooled"], true);
    assert_repeat_of(&first, &app.post_accepted(SEED).await);
    // Copies sent at once: one is spooled, each other waits for it or comes after it.
    let copies = futures_util::future::join_all((0..8).map(|_| app.post_accepted(order(1)))).await;
    let firsts: Vec<&Value> = copies
        .iter()
        .filter(|a| a.get("duplicate").is_none())
        .collect();
    assert_eq!(firsts.len(), 1, "{copies:?}");
    for copy in &copies {
        if copy.get("duplicate").is_some() {
            assert_repeat_of(firsts[0], copy);
        }
    }
    let body = app.wait_readiness(200).await;
    assert_eq!(body["spool"]["records"], 2, "{body}");
    let metrics = app.metrics().await;
    let waited = sample(
        &metrics,
        r#"omnichat_bridge_duplicates_total{first="storing"}"#,
    );
    let after = sample(
        &metrics,
        r#"omnichat_bridge_duplicates_total{first="stored"}"#,
    );
    eprintln!("spool mode: {waited} repeats waited for the first's fsync, {after} came after it");
    assert_eq!(waited + after, 8.0);
    let _ = std::fs::remove_dir_all(dir);
}
