//! librdkafka's callbacks: its logs into `tracing`, and each record's delivery report
//! completing that record's [`Delivery`] and counted, over every producer generation.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, ProducerContext, ThreadedProducer};
use tokio::sync::oneshot;

use crate::publish::refusal::Refused;

/// What librdkafka reported for one record: where it landed, or why not.
pub type Outcome = Result<Acked, Refused>;

/// Where Kafka stored a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    pub partition: i32,
    pub offset: i64,
}

/// Resolves with the record's [`Outcome`]; closed only if the producer vanished without one.
pub type Delivery = oneshot::Receiver<Outcome>;

/// Counts what librdkafka reports, over every producer generation.
#[derive(Debug)]
pub(super) struct Reports {
    pub(super) acknowledged: AtomicU64,
    /// Records not delivered; the forwarder watches it to learn that a generation failed
    /// anywhere in its window, not only at its oldest record.
    pub(super) failed: tokio::sync::watch::Sender<u64>,
    /// Bytes sent to the brokers, over every producer generation (librdkafka's statistics).
    pub(super) sent_bytes: AtomicU64,
    /// The last producer handles that reported, each with its count then: a new generation
    /// counts from zero again, and an old one may still report while its records resolve.
    last_sent: std::sync::Mutex<std::collections::VecDeque<(String, u64)>>,
}

impl Default for Reports {
    fn default() -> Self {
        Self {
            acknowledged: AtomicU64::new(0),
            failed: tokio::sync::watch::channel(0).0,
            sent_bytes: AtomicU64::new(0),
            last_sent: std::sync::Mutex::default(),
        }
    }
}

/// Routes librdkafka's logs into `tracing` and completes each record's [`Delivery`] from its
/// delivery callback. During an outage librdkafka reports every failed reconnect as an error;
/// readiness already logs each change of Kafka's state once, so connection churn goes to debug
/// and only warnings and fatal errors stay loud.
#[derive(Debug, Default)]
pub struct BridgeContext {
    pub(super) reports: Arc<Reports>,
}

/// The part of librdkafka's statistics the bridge reads.
#[derive(serde::Deserialize)]
struct Sent {
    name: String,
    tx_bytes: u64,
}

/// How many producer handles' counts are kept: the current one and those still resolving.
const PRODUCERS_REMEMBERED: usize = 4;

impl Reports {
    fn count_sent(&self, sent: Sent) {
        let mut last = crate::locks::lock(&self.last_sent);
        let before = match last.iter_mut().find(|(name, _)| *name == sent.name) {
            Some((_, count)) => std::mem::replace(count, sent.tx_bytes),
            None => {
                if last.len() == PRODUCERS_REMEMBERED {
                    last.pop_front();
                }
                last.push_back((sent.name, sent.tx_bytes));
                0
            }
        };
        self.sent_bytes
            .fetch_add(sent.tx_bytes.saturating_sub(before), Ordering::Relaxed);
    }
}

impl ClientContext for BridgeContext {
    /// Only the bytes sent are read (`statistics.interval.ms`, 10 s by default): what managed
    /// Kafka bills for.
    fn stats_raw(&self, statistics: &[u8]) {
        if let Ok(sent) = serde_json::from_slice::<Sent>(statistics) {
            self.reports.count_sent(sent);
        }
    }

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical => {
                tracing::error!(target: "librdkafka", facility, "{message}");
            }
            // The bridge sets it on purpose (the forwarder's order depends on it).
            RDKafkaLogLevel::Warning if message.contains("enable.gapless.guarantee") => {
                tracing::debug!(target: "librdkafka", facility, "{message}");
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
            _ => tracing::debug!(target: "librdkafka", facility, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            tracing::error!(target: "librdkafka", "Kafka producer failed fatally: {reason}");
        } else {
            tracing::debug!(target: "librdkafka", "{error}: {reason}");
        }
    }
}

impl ProducerContext for BridgeContext {
    type DeliveryOpaque = Box<oneshot::Sender<Outcome>>;

    fn delivery(&self, result: &DeliveryResult<'_>, reply: Self::DeliveryOpaque) {
        let outcome = match result {
            Ok(message) => {
                self.reports.acknowledged.fetch_add(1, Ordering::Relaxed);
                Ok(Acked {
                    partition: message.partition(),
                    offset: message.offset(),
                })
            }
            Err((error, _)) => {
                self.reports.failed.send_modify(|failed| *failed += 1);
                Err(Refused::from(error))
            }
        };
        let _ = reply.send(outcome);
    }
}

pub type KafkaProducer = ThreadedProducer<BridgeContext>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_sent_add_up_over_producer_generations() {
        let reports = Reports::default();
        let sent = |name: &str, tx_bytes| Sent {
            name: name.to_owned(),
            tx_bytes,
        };
        reports.count_sent(sent("producer-1", 100));
        reports.count_sent(sent("producer-1", 250));
        // A replacement: the new producer counts from zero.
        reports.count_sent(sent("producer-2", 40));
        reports.count_sent(sent("producer-2", 60));
        assert_eq!(reports.sent_bytes.load(Ordering::Relaxed), 310);
    }

    #[test]
    fn an_old_producer_reporting_beside_its_replacement_is_not_counted_twice() {
        let reports = Reports::default();
        let sent = |name: &str, tx_bytes| Sent {
            name: name.to_owned(),
            tx_bytes,
        };
        reports.count_sent(sent("producer-1", 100));
        // The old producer lives on while its records resolve, and both report.
        reports.count_sent(sent("producer-2", 40));
        reports.count_sent(sent("producer-1", 120));
        reports.count_sent(sent("producer-2", 60));
        assert_eq!(reports.sent_bytes.load(Ordering::Relaxed), 180);
    }
}
