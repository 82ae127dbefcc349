//! Every request's headers within `BRIDGE_REQUEST_TIMEOUT_MS`, not only a connection's first.
//!
//! actix-http times the headers of a connection's first request only, and once a kept-alive
//! connection reads a byte its keep-alive timer stops too, so a client could trickle its next
//! request's headers forever and hold a connection slot without any credential. This wraps the
//! connection: from the first byte read after a response (or on a new connection) until the end
//! of the request's headers, at most the timeout may pass; past it the read fails and the
//! connection closes. Bodies have their own deadline (see `read_body`), and an idle kept-alive
//! connection stays under actix's keep-alive timeout.

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
}

impl<T> HeadDeadline<T> {
    pub fn new(io: T, timeout: Duration) -> Self {
        Self {
            io,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            in_head: true,
            armed: false,
            line_feeds: 0,
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
        this.answered(&written);
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.answered(&written);
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
    /// A response is going out: the request it answers is over, and the next one's head is
    /// timed from its first byte.
    fn answered(&mut self, written: &Poll<io::Result<usize>>) {
        if matches!(written, Poll::Ready(Ok(n)) if *n > 0) {
            self.in_head = true;
            self.armed = false;
            self.line_feeds = 0;
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
}
