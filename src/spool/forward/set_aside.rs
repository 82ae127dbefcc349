//! Setting aside a record Kafka refuses for good: to the dead-letter topic in the dead-letter
//! format when that topic takes it, else to the quarantine under `BRIDGE_SPOOL_DIR`.
//!
//! The quarantine is described in [`quarantine`].

use std::time::Duration;

use tokio::sync::oneshot;

use super::{Forwarder, Sink, accepted_at};
use crate::event::headers;
use crate::event::set_aside::set_aside;
use crate::publish::Record;
use crate::publish::kafka::SendError;
use crate::publish::refusal::{Refused, Verdict};
use crate::spool::quarantine::QuarantineError;
use crate::spool::segments::Entry;

/// How long a dead letter may take to be acknowledged before the attempt counts as failed.
const DEAD_LETTER_WAIT: Duration = Duration::from_secs(30);

/// Where a refused record went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SetAsideTo {
    DeadLetterTopic,
    Quarantine,
}

/// Why a record could not be set aside yet; it stays at the head.
pub(super) enum NotSetAside {
    Stopping,
    Failed(SetAsideError),
}

/// A set-aside that failed, for readiness and the log.
#[derive(Debug, thiserror::Error)]
#[error("event {id}, refused by Kafka for good, could not be set aside: {why}")]
pub(super) struct SetAsideError {
    pub(super) id: String,
    pub(super) why: SetAsideFailure,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum SetAsideFailure {
    #[error("its dead letter could not be handed over: {0}")]
    HandOver(SendError),
    #[error("the producer closed before it reported on the dead letter")]
    ProducerClosed,
    #[error("the dead-letter topic did not acknowledge it within {0:?}")]
    NotAcknowledged(Duration),
    #[error("the dead-letter topic did not take it ({code}): {0}", code = .0.code_name())]
    RefusedByTopic(Refused),
    /// The dead-letter topic refused it for good and the quarantine could not take it: the
    /// next attempt goes straight to the quarantine, with no letter sent again.
    #[error("the dead-letter topic refused it too ({code}), and {error}", code = .by_topic.code_name())]
    Quarantine {
        by_topic: Refused,
        error: QuarantineError,
    },
}

impl<S: Sink> Forwarder<S> {
    /// Moves `entry`, which Kafka refused as `refused`, out of the way. Counted, logged once
    /// and named in readiness. `by_topic` is the dead-letter topic's own refusal for good, when
    /// an earlier attempt met it.
    pub(super) async fn set_aside(
        &self,
        entry: Entry,
        refused: &Refused,
        by_topic: Option<Refused>,
        generation: u64,
        stop: &mut oneshot::Receiver<()>,
    ) -> Result<(), NotSetAside> {
        let letter = set_aside(
            &entry.record,
            &self.deadletter,
            refused,
            accepted_at(&entry),
        );
        let id = letter.header(headers::ID).unwrap_or_default().to_owned();
        let to_topic = match by_topic {
            Some(known) => Some(known),
            None if letter.size() > self.max_record_bytes => Some(Refused::new(
                rdkafka::error::RDKafkaErrorCode::MessageSizeTooLarge,
                "larger than message.max.bytes",
            )),
            None => {
                let sent = self.send_alone(&letter, generation, stop).await?;
                if sent
                    .as_ref()
                    .is_some_and(|why| why.verdict() == Verdict::Poison)
                {
                    // The gapless producer failed as a whole on that refusal.
                    self.sink
                        .replace(generation, "the dead-letter topic refused a record");
                }
                sent
            }
        };
        let to = match to_topic {
            None => SetAsideTo::DeadLetterTopic,
            Some(why) if why.verdict() == Verdict::Poison => {
                if let Err(error) = self.quarantine.append(&[(&letter, entry.accepted_ms)]) {
                    let why = SetAsideFailure::Quarantine {
                        by_topic: why,
                        error,
                    };
                    return Err(NotSetAside::Failed(SetAsideError { id, why }));
                }
                SetAsideTo::Quarantine
            }
            Some(why) => {
                let why = SetAsideFailure::RefusedByTopic(why);
                return Err(NotSetAside::Failed(SetAsideError { id, why }));
            }
        };
        let reason = format!(
            "event {id} from {} refused by Kafka for good ({}): {refused}",
            entry.record.topic,
            refused.code_name()
        );
        tracing::error!(event_id = %id, to = ?to, reason = %reason, "Spooled record set aside");
        self.shared.count_set_aside(to, reason);
        Ok(())
    }

    /// Sends `letter` on its own and waits for Kafka's answer: `None` when it was taken. A
    /// letter still unanswered at the deadline is purged with its producer, so attempts that
    /// fail this way do not pile letters up in it.
    async fn send_alone(
        &self,
        letter: &Record,
        generation: u64,
        stop: &mut oneshot::Receiver<()>,
    ) -> Result<Option<Refused>, NotSetAside> {
        let id = letter.header(headers::ID).unwrap_or_default();
        let failed = |why| {
            NotSetAside::Failed(SetAsideError {
                id: id.to_owned(),
                why,
            })
        };
        let delivery = self
            .sink
            .send(letter, generation)
            .map_err(|error| failed(SetAsideFailure::HandOver(error)))?;
        tokio::select! {
            // An outcome that is there wins over a stop: a dead letter taken is not set aside
            // again after the restart.
            biased;
            outcome = tokio::time::timeout(DEAD_LETTER_WAIT, delivery) => match outcome {
                Ok(Ok(Ok(_))) => Ok(None),
                Ok(Ok(Err(refused))) => Ok(Some(refused)),
                Ok(Err(_)) => Err(failed(SetAsideFailure::ProducerClosed)),
                Err(_) => {
                    self.sink.replace(generation, "a dead letter was not acknowledged in time");
                    Err(failed(SetAsideFailure::NotAcknowledged(DEAD_LETTER_WAIT)))
                }
            },
            _ = stop => Err(NotSetAside::Stopping),
        }
    }
}
