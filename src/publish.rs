//! The seam between normalization and storage: a [`Publisher`] takes a [`Record`] and resolves
//! once the record is durably stored, or fails within a bounded time. Kafka is one
//! implementation; tests use a recording fake, and the durable spool plugs in here.

pub mod kafka;

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// A header value: constants borrow, per-event values own.
pub type Header = Cow<'static, str>;

/// One Kafka record, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: Arc<str>,
    pub key: String,
    pub headers: Vec<(&'static str, Header)>,
    pub value: Vec<u8>,
}

impl Record {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_ref())
    }
}

/// Where a stored record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub partition: i32,
    pub offset: i64,
}

/// Why a record was not stored. Every variant means the sender should retry later.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("the producer queue is full")]
    QueueFull,
    #[error("Kafka did not acknowledge the record within {0:?}")]
    Timeout(Duration),
    #[error("Kafka did not take the record: {0}")]
    Failed(String),
}

pub type PublishFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Stored, PublishError>> + Send + 'a>>;

/// Stores records. `publish` resolves only when the record is durable (or certainly not), and
/// within a bounded time: it never hangs.
pub trait Publisher: Send + Sync + 'static {
    fn publish(&self, record: Record) -> PublishFuture<'_>;

    /// Sends everything still queued, waiting at most `timeout`; used on shutdown.
    fn flush(&self, timeout: Duration) -> Result<(), PublishError>;

    /// Whether the destination can take records for these topics now. Blocks for at most
    /// `timeout`; readiness calls it from a background task.
    fn probe(&self, _topics: &[&str], _timeout: Duration) -> Result<(), String> {
        Ok(())
    }

    /// An error the publisher could not recover from by itself. Called by the readiness probe,
    /// so an implementation may repair itself here. Liveness fails on it so the orchestrator
    /// restarts the process instead of leaving it answering 503 forever.
    fn fatal_error(&self) -> Option<String> {
        None
    }

    /// Records taken but not yet stored, and how many may wait at once.
    fn queue(&self) -> QueueDepth {
        QueueDepth::default()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    pub waiting: usize,
    pub limit: usize,
}
