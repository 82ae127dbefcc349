//! Every request's headers within `BRIDGE_REQUEST_TIMEOUT_MS`, not only a connection's first.
//!
//! actix-http times the headers of a connection's first request only, and once a kept-alive
//! connection reads a byte its keep-alive timer stops too, so a client could trickle its next
//! request's headers forever and hold a connection slot without any credential. This wraps the
//! connection: from the first byte read after a response (or on a new connection) until the end
//! of the request's headers, at most the timeout may pass; past it the read fails and the
//! connection closes. Bodies have their own deadline (see `read_body`), and an idle kept-alive
//! connection stays under actix's keep-alive timeout.
//!
//! Only a final answer ends a request: an interim `100 Continue` (sent to a sender that waits
//! for it before its body) is followed by the body, which must not be timed as a head, or a
//! slow publish would see its connection cut before its answer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A connection whose request heads are timed.
#[derive(Debug)]
pub struct HeadDeadline<T> {
    io: T,
    timeout: Duration,
    /// Set while a request head is being read: when it must be complete.
    deadline: Pin<Box<Sleep>>,
    in_head: bool,
    armed: bool,
    /// Line feeds seen in a row (carriage returns aside): two end the head.
    line_feeds: u8,
    /// Where the answer to the request whose head was read stands.
    answer: Answer,
}

/// The bytes written since a request's head was read, as far as the deadline cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// An answer's status line is being written; `seen` bytes of `HTTP/1.1 ` so far.
    Status { seen: usize },
    /// An interim (1xx) answer's head, up to its blank line; the final answer follows.
    Interim { line_feeds: u8 },
    /// The final answer is out (or none is due): the next head is timed from its first byte.
    Final,
}

/// The status code's first digit follows `HTTP/1.1 `.
const STATUS_DIGIT: usize = 9;

impl<T> HeadDeadline<T> {
    pub fn new(io: T, timeout: Duration) -> Self {
        Self {
            io,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            in_head: true,
            armed: false,
            line_feeds: 0,
            answer: Answer::Final,
        }
    }

    /// Follows the bytes of a request head; the first byte starts its clock.
    fn observe(&mut self, bytes: &[u8]) {
        if !self.in_head || bytes.is_empty() {
            return;
        }
        if !self.armed {
            self.armed = true;
            self.deadline.as_mut().reset(Instant::now() + self.timeout);
        }
        for &byte in bytes {
            match byte {
                b'\n' => {
                    self.line_feeds += 1;
                    if self.line_feeds == 2 {
                        // The head is complete; what follows is its body (or the next request,
                        // pipelined, which the next response re-arms for).
                        self.in_head = false;
                        self.armed = false;
                        self.answer = Answer::Status { seen: 0 };
                        return;
                    }
                }
                b'\r' => {}
                _ => self.line_feeds = 0,
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for HeadDeadline<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.armed && this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the request's headers did not arrive within BRIDGE_REQUEST_TIMEOUT_MS",
            )));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.observe(&buf.filled()[before..]);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HeadDeadline<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            this.answered(&buf[..n]);
        }
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(mut n)) = written {
            for buf in bufs {
                let take = n.min(buf.len());
                this.answered(&buf[..take]);
                n -= take;
            }
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl<T> HeadDeadline<T> {
    /// Follows the bytes of the answer going out. Once the final answer starts, the request it
    /// answers is over, and the next one's head is timed from its first byte.
    fn answered(&mut self, mut written: &[u8]) {
        while !written.is_empty() {
            match &mut self.answer {
                Answer::Final => {
                    self.in_head = true;
                    self.armed = false;
                    self.line_feeds = 0;
                    return;
                }
                Answer::Status { seen } => {
                    let take = (STATUS_DIGIT + 1 - *seen).min(written.len());
                    *seen += take;
                    if *seen > STATUS_DIGIT {
                        self.answer = match written[take - 1] {
                            b'1' => Answer::Interim { line_feeds: 0 },
                            _ => Answer::Final,
                        };
                    }
                    written = &written[take..];
                }
                Answer::Interim { line_feeds } => {
                    let mut taken = 0;
                    for &byte in written {
                        taken += 1;
                        match byte {
                            b'\n' => *line_feeds += 1,
                            b'\r' => {}
                            _ => *line_feeds = 0,
                        }
                        if *line_feeds == 2 {
                            self.answer = Answer::Status { seen: 0 };
                            break;
                        }
                    }
                    written = &written[taken..];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(bytes: &[&[u8]]) -> HeadDeadline<()> {
        let mut head = HeadDeadline::new((), Duration::from_secs(1));
        for chunk in bytes {
            head.observe(chunk);
        }
        head
    }

    #[tokio::test]
    async fn a_head_is_timed_from_its_first_byte_to_its_blank_line() {
        assert!(!reading(&[]).armed, "an idle connection is not timed here");
        let partial = reading(&[b"POST / HTTP/1.1\r\nHost: a\r\n"]);
        assert!(partial.armed && partial.in_head);
        for split in [
            &[&b"POST / HTTP/1.1\r\nHost: a\r\n\r\n{}"[..]][..],
            &[b"POST / HTTP/1.1\r\nHost: a\r", b"\n", b"\r", b"\n{}"],
            &[b"GET / HTTP/1.1\nHost: a\n\n"],
        ] {
            let head = reading(split);
            assert!(!head.armed && !head.in_head, "{split:?}");
        }
        // A body is not a head, even with blank lines in it.
        let mut body = reading(&[b"POST / HTTP/1.1\r\n\r\n"]);
        body.observe(b"x");
        assert!(!body.armed);
    }

    /// The connection's server side, and the sender's side.
    fn connection() -> (
        HeadDeadline<tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
    ) {
        let (sender, server) = tokio::io::duplex(4096);
        (HeadDeadline::new(server, Duration::from_secs(1)), sender)
    }

    #[tokio::test(start_paused = true)]
    async fn an_interim_100_continue_is_not_the_answer_that_times_the_next_head() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut server, mut sender) = connection();
        let mut buffer = [0u8; 512];
        sender
            .write_all(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
            .await
            .expect("head");
        assert!(server.read(&mut buffer).await.expect("head read") > 0);
        server
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .expect("interim");
        sender.write_all(b"{").await.expect("body");
        assert!(server.read(&mut buffer).await.expect("body read") > 0);
        // Storing the body takes longer than the timeout; the rest of it is still a body.
        tokio::time::sleep(Duration::from_secs(3)).await;
        sender.write_all(b"}").await.expect("body");
        let read = server.read(&mut buffer).await;
        assert!(read.expect("the body is not a head: no deadline") > 0);

        // The final answer does start the next head's clock.
        server
            .write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
            .await
            .expect("answer");
        sender.write_all(b"POST / HT").await.expect("next head");
        assert!(server.read(&mut buffer).await.expect("next head read") > 0);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let late = server.read(&mut buffer).await;
        assert_eq!(
            late.map_err(|e| e.kind()).err(),
            Some(io::ErrorKind::TimedOut)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_interim_answer_written_with_the_final_one_still_times_the_next_head() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut server, mut sender) = connection();
        let mut buffer = [0u8; 512];
        sender
            .write_all(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n")
            .await
            .expect("head");
        assert!(server.read(&mut buffer).await.expect("head read") > 0);
        server
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\n\r\n")
            .await
            .expect("both answers");
        sender.write_all(b"POST").await.expect("next head");
        assert!(server.read(&mut buffer).await.expect("next head read") > 0);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(server.read(&mut buffer).await.is_err(), "no deadline");
    }
}
