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
}

impl Default for Reports {
    fn default() -> Self {
        Self {
            acknowledged: AtomicU64::new(0),
            failed: tokio::sync::watch::channel(0).0,
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

impl ClientContext for BridgeContext {
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
