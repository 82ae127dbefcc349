//! Load from concurrent senders, and free local ports.

use std::time::Duration;

use serde_json::Value;

use super::*;

/// A local port with nothing listening on it (for a moment).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Concurrent senders posting numbered messages (one chat each) until told to stop; each
/// returns the event ids it was answered 202 for. Only 202 and 503 are acceptable answers;
/// connection errors (a listener that closed) are retried until the stop.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    senders: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

pub fn start_load(url: &str, senders: usize) -> Load {
    start_load_paced(url, senders, Duration::ZERO)
}

/// Like [`start_load`], each sender pausing `pause` after each 202 (librdkafka's mock cluster
/// keeps 5 MB a partition, so what a test reads back must stay below that).
pub fn start_load_paced(url: &str, senders: usize, pause: Duration) -> Load {
    use std::sync::atomic::Ordering;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = reqwest::Client::new();
    let senders = (0..senders)
        .map(|sender| {
            let (client, url, stop) = (client.clone(), url.to_owned(), stop.clone());
            tokio::spawn(async move {
                let mut accepted = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) && n < 20_000 {
                    let body = message(&format!("chat-{sender}"), n);
                    match client.post(&url).bearer_auth(TOKEN).body(body).send().await {
                        Ok(response) if response.status() == 202 => {
                            let answer: Value = response.json().await.expect("json");
                            accepted.push(answer["id"].as_str().expect("id").to_owned());
                            n += 1;
                            if !pause.is_zero() {
                                tokio::time::sleep(pause).await;
                            }
                        }
                        Ok(response) => {
                            assert_eq!(response.status(), 503, "only 202 or 503 while stopping")
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
                accepted
            })
        })
        .collect();
    Load { stop, senders }
}

impl Load {
    /// Stops the senders; returns every event id answered 202.
    pub async fn finish(self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut accepted = Vec::new();
        for sender in self.senders {
            accepted.extend(sender.await.expect("sender"));
        }
        accepted
    }
}
