//! The seam between normalization and storage: a [`Publisher`] takes a [`Record`] and resolves
//! once the record is durably stored, or fails within a bounded time. Kafka is one
//! implementation; tests plug in fakes.

pub mod kafka;
pub mod refusal;

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// A header name or value: constants borrow, per-event values (and records read back from
/// disk) own.
pub type Header = Cow<'static, str>;

/// One Kafka record, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: Arc<str>,
    pub key: String,
    pub headers: Vec<(Header, Header)>,
    pub value: Vec<u8>,
}

impl Record {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_ref())
    }

    /// The size librdkafka counts against `message.max.bytes` when the record is produced
    /// (`rd_kafka_msg_max_wire_size`): the most a v2 record's own framing can take, the key and
    /// the value, and each header's name and value with their zigzag-varint length prefixes.
    /// A record over the limit is refused at `produce`, so the door must count the same way.
    pub fn size(&self) -> usize {
        /// Length, attributes, timestamp delta, offset delta, key length, value length and
        /// header count, each at its widest varint (librdkafka's
        /// `RD_KAFKAP_MESSAGE_V2_MAX_OVERHEAD`).
        const RECORD_MAX_OVERHEAD: usize = 5 + 1 + 10 + 5 + 5 + 5 + 5;
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.len() + v.len() + varint_len(n.len()) + varint_len(v.len()))
            .sum();
        RECORD_MAX_OVERHEAD + self.key.len() + self.value.len() + headers
    }
}

/// Bytes of a length as a zigzag varint, as Kafka's record headers encode it.
fn varint_len(length: usize) -> usize {
    let mut zigzag = (length as u64) << 1;
    let mut bytes = 1;
    while zigzag >= 0x80 {
        zigzag >>= 7;
        bytes += 1;
    }
    bytes
}

/// Where a stored record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Acknowledged by the broker at this partition and offset.
    Kafka { partition: i32, offset: i64 },
    /// Fsynced to local disk, to be forwarded to Kafka later.
    OnDisk,
}

/// Why a record was not stored. Every variant but `TooLarge` and `Poison` means the sender
/// should retry later.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("the producer queue is full")]
    QueueFull,
    #[error("the record is {size} bytes; Kafka takes at most {limit} (message.max.bytes)")]
    TooLarge { size: usize, limit: usize },
    /// Local disk holds its limit until Kafka takes the backlog.
    #[error("local storage holds its limit of {limit} bytes until Kafka takes the backlog")]
    DiskFull { limit: u64 },
    #[error("Kafka did not acknowledge the record within {0:?}")]
    Timeout(Duration),
    /// Local disk did not make the record durable within the deadline (a stalled volume).
    #[error("the record was not fsynced to local storage within {0:?}")]
    NotDurable(Duration),
    /// Local disk is so slow that records waiting for it hold their limit in memory.
    #[error("local storage is not keeping up: {queued} bytes of records wait for its fsync")]
    VolumeStalled { queued: u64 },
    /// Kafka did not take the record, for a reason that may pass or an operator can mend.
    #[error("Kafka did not take the record ({code}): {0}", code = .0.code_name())]
    Refused(refusal::Refused),
    /// The producer is being replaced; the next one takes records.
    #[error("the Kafka producer is being replaced")]
    Replacing,
    #[error("the producer closed before the broker acknowledged")]
    ProducerClosed,
    /// Local storage cannot take records now.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Kafka refuses this record for good (see [`refusal`]); retrying cannot help.
    #[error("Kafka refuses this record for good ({code}): {0}", code = .0.code_name())]
    Poison(refusal::Refused),
}

/// Why local storage (the spool) cannot take a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    #[error("the spool is closed")]
    Closed,
    #[error("the spool writer stopped")]
    WriterStopped,
    /// A write or fsync failed: what is on disk is unknown until a restart recovers it.
    #[error("the spool cannot write ({kind}): {message}")]
    Io {
        kind: std::io::ErrorKind,
        message: String,
    },
}

impl From<&std::io::Error> for StorageError {
    fn from(error: &std::io::Error) -> Self {
        StorageError::Io {
            kind: error.kind(),
            message: error.to_string(),
        }
    }
}

pub type PublishFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Stored, PublishError>> + Send + 'a>>;

/// Stores records. `publish` resolves only when the record is durable (or certainly not), and
/// within a bounded time: it never hangs. Lifecycle and health belong to the concrete
/// backend that startup owns, not to this seam.
pub trait Publisher: Send + Sync + 'static {
    fn publish(&self, record: Record) -> PublishFuture<'_>;
}

/// Records taken but not yet stored, and how many may wait at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    pub waiting: usize,
    pub limit: usize,
}
