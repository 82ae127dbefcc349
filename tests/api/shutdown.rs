//! The shutdown sequence loses nothing that was answered 202.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::helpers::*;

#[tokio::test]
async fn every_202_given_under_load_is_in_kafka_after_shutdown() {
    let mut app = spawn_app().await;
    app.wait_ready().await;
    let client = app.client.clone();
    let url = app.webhook_url();
    let stop_sending = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for sender in 0..6 {
        let (client, url, stop_sending) = (client.clone(), url.clone(), stop_sending.clone());
        senders.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            for n in 0..2000 {
                if stop_sending.load(Ordering::Relaxed) {
                    break;
                }
                let sent = client
                    .post(&url)
                    .bearer_auth(TOKEN)
                    .body(message(&format!("chat-{sender}"), n))
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status() == 202 => {
                        let answer: serde_json::Value = response.json().await.expect("json");
                        accepted.push(answer["id"].as_str().expect("id").to_owned());
                    }
                    Ok(response) => {
                        assert_eq!(response.status(), 503, "only 202 or 503 while stopping")
                    }
                    Err(_) => break, // the listener closed
                }
            }
            accepted
        }));
    }
    // Let load build up, then stop while requests are in flight.
    let deadline = Instant::now() + Duration::from_secs(20);
    while record_count(&app.bootstrap, &app.topics.messages).await < 100 {
        assert!(Instant::now() < deadline, "load never built up");
    }
    app.stop().await;
    stop_sending.store(true, Ordering::Relaxed);
    let mut accepted = Vec::new();
    for sender in senders {
        accepted.extend(sender.await.expect("sender"));
    }
    assert!(accepted.len() >= 100);
    let stored = app.read(&app.topics.messages, accepted.len()).await;
    let stored_ids: std::collections::HashSet<_> = stored
        .iter()
        .filter_map(|r| r.header("ce_id").map(str::to_owned))
        .collect();
    let missing: Vec<_> = accepted
        .iter()
        .filter(|id| !stored_ids.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} accepted events are not in Kafka",
        missing.len(),
        accepted.len()
    );
}

#[tokio::test]
async fn during_the_shutdown_delay_it_is_not_ready_but_still_serves() {
    let mut app = spawn_app_with(&[("BRIDGE_SHUTDOWN_DELAY_MS", "1500")]).await;
    app.wait_ready().await;
    let stopping = Instant::now();
    let stop = {
        // Signal shutdown without waiting for it to finish.
        let stopped = app.stopped.take();
        app.stop().await;
        stopped.expect("running")
    };
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        if app.get_admin("/readyz").await.status() == 503 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readiness did not turn 503 at once"
        );
    }
    let answer = app.post_accepted(SEED).await;
    assert!(
        stopping.elapsed() < Duration::from_millis(1500),
        "answered within the delay"
    );
    stop.await.expect("task").expect("clean exit");
    assert!(stopping.elapsed() >= Duration::from_millis(1500));
    let records = app.read(&app.topics.messages, 1).await;
    assert_eq!(records[0].header("ce_id"), answer["id"].as_str());
}
