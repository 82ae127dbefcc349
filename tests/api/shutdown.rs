//! The shutdown sequence loses nothing that was answered 202.

use std::time::{Duration, Instant};

use crate::helpers::*;

#[tokio::test]
#[ignore = "needs the broker: scripts/test.sh starts it and runs these"]
async fn every_202_given_under_load_is_in_kafka_after_shutdown() {
    let mut app = spawn_app().await;
    app.wait_ready().await;
    let load = start_load(&app.webhook_url(), 6);
    // Let load build up, then stop while requests are in flight.
    let deadline = Instant::now() + Duration::from_secs(20);
    while record_count(&app.bootstrap, &app.topics.messages).await < 100 {
        assert!(Instant::now() < deadline, "load never built up");
    }
    app.stop().await;
    let accepted = load.finish().await;
    assert!(accepted.len() >= 100);
    assert_all_stored(&app.bootstrap, &app.topics.messages, &accepted).await;
}

#[tokio::test]
#[ignore = "needs the broker: scripts/test.sh starts it and runs these"]
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
