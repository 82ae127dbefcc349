//! Slow and trickling senders cannot hold resources: headers and bodies each have
//! `BRIDGE_REQUEST_TIMEOUT_MS`, after which the connection is answered or closed and its
//! in-flight slot freed.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::app::*;

/// Reads until the server closes the connection or `limit` passes; returns what arrived.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    let read_all = async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    };
    tokio::time::timeout(limit, read_all).await.ok()?;
    Some(String::from_utf8_lossy(&received).into_owned())
}

#[tokio::test]
async fn connections_that_trickle_their_headers_are_closed_at_the_request_timeout() {
    let app = spawn(&[("BRIDGE_REQUEST_TIMEOUT_MS", "1000")]).await;
    app.wait_readiness(200).await;
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut stream = TcpStream::connect(app.host_port()).await.expect("connect");
        stream
            .write_all(b"POST /webhooks/omnichat HTTP/1.1\r\nHost: bridge\r\n")
            .await
            .expect("write");
        slow.push(stream);
    }
    let started = Instant::now();
    for stream in &mut slow {
        let answer = read_until_closed(stream, Duration::from_secs(5)).await;
        assert!(
            answer.is_some(),
            "a connection with unfinished headers stayed open"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    app.post_accepted(SEED).await;
}

#[tokio::test]
async fn a_trickled_body_gets_408_and_frees_its_in_flight_slot() {
    let app = spawn(&[
        ("BRIDGE_REQUEST_TIMEOUT_MS", "1000"),
        ("BRIDGE_MAX_IN_FLIGHT", "1"),
    ])
    .await;
    app.wait_readiness(200).await;
    let mut stream = TcpStream::connect(app.host_port()).await.expect("connect");
    let head = format!(
        "POST /webhooks/omnichat HTTP/1.1\r\nHost: bridge\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 500\r\n\r\n{{\"objectId\""
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let started = Instant::now();
    let mut first = [0u8; 16];
    let n = stream.read(&mut first).await.expect("an answer");
    let answered_after = started.elapsed();
    let rest = read_until_closed(&mut stream, Duration::from_secs(5))
        .await
        .expect("the server closed after answering");
    let answer = format!("{}{rest}", String::from_utf8_lossy(&first[..n]));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(
        answered_after < Duration::from_secs(2),
        "answered after {answered_after:?}"
    );
    app.post_accepted(SEED).await;
}

/// A request only a signature could authenticate, with a stale timestamp or no `webhook-id`:
/// refused from its headers, before a byte of its body is read.
#[tokio::test]
async fn a_signed_request_with_stale_or_missing_headers_is_refused_before_its_body() {
    let app = spawn(&[(
        "BRIDGE_WEBHOOK_SECRETS",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    )])
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    for headers in [
        format!("webhook-id: msg_1\r\nwebhook-timestamp: {}\r\n", now - 3600),
        format!("webhook-timestamp: {now}\r\n"),
    ] {
        let mut stream = TcpStream::connect(app.host_port()).await.expect("connect");
        let head = format!(
            "POST /webhooks/omnichat HTTP/1.1\r\nHost: bridge\r\n{headers}webhook-signature: v1,AAAA\r\nContent-Length: 1000000\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.expect("write");
        // No body is sent: an answer can only come from the headers.
        let answer = read_until_closed(&mut stream, Duration::from_secs(3))
            .await
            .expect("answered and closed without the body");
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    }
}

/// actix-web's header deadline covers only a connection's first request; a kept-alive
/// connection's next request must get its headers in within the same timeout.
#[tokio::test]
async fn a_kept_alive_connections_next_request_must_bring_its_headers_in_time() {
    let app = spawn(&[("BRIDGE_REQUEST_TIMEOUT_MS", "1000")]).await;
    app.wait_readiness(200).await;
    let mut stream = TcpStream::connect(app.host_port()).await.expect("connect");
    let first = format!(
        "POST /webhooks/omnichat HTTP/1.1\r\nHost: bridge\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        SEED.len(),
        SEED
    );
    stream.write_all(first.as_bytes()).await.expect("write");
    let mut answer = vec![0u8; 4096];
    let n = stream.read(&mut answer).await.expect("first answer");
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 202"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );

    // The next request line, one byte every 300 ms: the connection must go within about the
    // timeout, not stay open for as long as the trickle goes on.
    let started = Instant::now();
    let trickle = b"POST /webhooks/omnichat HTTP/1.1\r\nHost: bridge\r\n";
    let mut closed = false;
    for byte in trickle {
        if stream.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        let mut probe = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(300), stream.read(&mut probe)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) if probe[..n].starts_with(b"HTTP/1.1 408") => {
                closed = true;
                break;
            }
            _ => {}
        }
        if started.elapsed() > Duration::from_secs(6) {
            break;
        }
    }
    assert!(
        closed,
        "still open after {:?} of trickled headers",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "closed only after {:?}",
        started.elapsed()
    );
}

/// A sender that waits for `100 Continue` before its body (as curl does) gets its answer even
/// when storing takes longer than the request timeout: the interim answer is no response, so
/// the body is timed as a body, not as the next request's headers.
#[tokio::test]
async fn a_body_sent_after_100_continue_is_answered_however_long_storing_takes() {
    let app = spawn(&[("BRIDGE_REQUEST_TIMEOUT_MS", "1000")]).await;
    app.wait_readiness(200).await;
    app.recorder
        .script([Answer::After(Duration::from_millis(1_600))]);
    let mut stream = TcpStream::connect(app.host_port()).await.expect("connect");
    let head = format!(
        "POST /webhooks/omnichat HTTP/1.1\r\nHost: bridge\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        SEED.len()
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    let mut interim = [0u8; 25];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut interim))
        .await
        .expect("100 Continue in time")
        .expect("read");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(SEED.as_bytes()).await.expect("body");
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    let deadline = Instant::now() + Duration::from_secs(4);
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") && Instant::now() < deadline {
        match tokio::time::timeout_at(deadline.into(), stream.read(&mut buffer)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buffer[..n]),
            _ => break,
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 202"),
        "a stored record got no answer: {answer:?}"
    );
    assert_eq!(app.recorder.stored().len(), 1);
}
