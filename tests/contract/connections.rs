//! Kept-alive connections age out: past `BRIDGE_MAX_CONNECTION_AGE_S` (within 10% either way)
//! a connection's next answer says `Connection: close` and the server closes it after that
//! answer; a younger one keeps alive. Raw connections, so that which connection carries each
//! request is certain.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::app::*;

/// The ages are drawn within 10% of the setting.
const PAST_AN_AGE_OF_ONE_SECOND: Duration = Duration::from_millis(1_150);

fn webhook_request() -> String {
    format!(
        "POST /webhooks/omnichat HTTP/1.1\r\nHost: bridge\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{SEED}",
        SEED.len()
    )
}

const NOT_FOUND_REQUEST: &str = "GET /elsewhere HTTP/1.1\r\nHost: bridge\r\n\r\n";

/// Sends one request on `stream` and reads its answer: the head, lowercased, and the body.
async fn exchange(stream: &mut TcpStream, request: &str) -> (String, Vec<u8>) {
    stream.write_all(request.as_bytes()).await.expect("request");
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let read = async {
        loop {
            if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&received[..end]).to_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |n| n.trim().parse().expect("a length"));
                if received.len() >= end + 4 + length {
                    return (head, received[end + 4..end + 4 + length].to_vec());
                }
            }
            let n = stream.read(&mut buffer).await.expect("read");
            assert!(n > 0, "closed before the answer: {received:?}");
            received.extend_from_slice(&buffer[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("an answer in time")
}

/// Whether the server closes `stream` (end of file) within a second.
async fn closes(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), stream.read(&mut byte)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

fn says_close(head: &str) -> bool {
    head.lines().any(|l| l == "connection: close")
}

#[tokio::test]
async fn a_connection_past_its_age_is_told_to_close_on_its_next_answer_then_closed() {
    let app = spawn(&[("BRIDGE_MAX_CONNECTION_AGE_S", "1")]).await;
    let mut stream = TcpStream::connect(app.host_port()).await.expect("connect");
    let (head, _) = exchange(&mut stream, &webhook_request()).await;
    assert!(
        head.starts_with("http/1.1 202") && !says_close(&head),
        "{head}"
    );
    // Sleeps past the age: what is tested is the connection growing old.
    tokio::time::sleep(PAST_AN_AGE_OF_ONE_SECOND).await;
    let (head, body) = exchange(&mut stream, &webhook_request()).await;
    assert!(head.starts_with("http/1.1 202"), "{head}");
    assert!(says_close(&head), "the old connection was not told: {head}");
    let answer: serde_json::Value = serde_json::from_slice(&body).expect("a whole JSON answer");
    assert_eq!(answer["status"], "accepted");
    assert!(
        closes(&mut stream).await,
        "the server kept the old connection"
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("omnichat_bridge_connections_aged_out_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn every_answer_on_an_old_connection_says_close_a_404_too() {
    let app = spawn(&[("BRIDGE_MAX_CONNECTION_AGE_S", "1")]).await;
    let mut stream = TcpStream::connect(app.host_port()).await.expect("connect");
    let (head, _) = exchange(&mut stream, NOT_FOUND_REQUEST).await;
    assert!(
        head.starts_with("http/1.1 404") && !says_close(&head),
        "{head}"
    );
    tokio::time::sleep(PAST_AN_AGE_OF_ONE_SECOND).await;
    let (head, _) = exchange(&mut stream, NOT_FOUND_REQUEST).await;
    assert!(
        head.starts_with("http/1.1 404") && says_close(&head),
        "{head}"
    );
    assert!(closes(&mut stream).await);
}

#[tokio::test]
async fn a_young_connection_keeps_alive() {
    let app = spawn(&[("BRIDGE_MAX_CONNECTION_AGE_S", "60")]).await;
    let mut stream = TcpStream::connect(app.host_port()).await.expect("connect");
    for _ in 0..3 {
        let (head, _) = exchange(&mut stream, &webhook_request()).await;
        assert!(
            head.starts_with("http/1.1 202") && !says_close(&head),
            "{head}"
        );
    }
    assert!(!closes(&mut stream).await, "a young connection was closed");
}

#[tokio::test]
async fn with_an_age_of_0_connections_never_age_out() {
    let app = spawn(&[("BRIDGE_MAX_CONNECTION_AGE_S", "0")]).await;
    let mut stream = TcpStream::connect(app.host_port()).await.expect("connect");
    exchange(&mut stream, NOT_FOUND_REQUEST).await;
    tokio::time::sleep(PAST_AN_AGE_OF_ONE_SECOND).await;
    let (head, _) = exchange(&mut stream, NOT_FOUND_REQUEST).await;
    assert!(!says_close(&head), "{head}");
}

#[tokio::test]
async fn a_request_under_way_as_the_age_passes_is_answered_in_full_then_closed() {
    let app = spawn(&[("BRIDGE_MAX_CONNECTION_AGE_S", "1")]).await;
    app.recorder
        .script([Answer::After(PAST_AN_AGE_OF_ONE_SECOND)]);
    let mut stream = TcpStream::connect(app.host_port()).await.expect("connect");
    let (head, body) = exchange(&mut stream, &webhook_request()).await;
    assert!(
        head.starts_with("http/1.1 202") && says_close(&head),
        "{head}"
    );
    let answer: serde_json::Value = serde_json::from_slice(&body).expect("a whole JSON answer");
    assert_eq!(answer["status"], "accepted");
    assert_eq!(app.recorder.stored().len(), 1);
    assert!(closes(&mut stream).await);
}
