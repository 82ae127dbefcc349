//! The forwarder's window: records handed to one producer generation, oldest first, and what
//! Kafka reported for each.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::oneshot::error::TryRecvError;

use crate::publish::Record;
use crate::publish::kafka::{Acked, Delivery, Outcome};
use crate::publish::refusal::{Refused, Verdict};
use crate::spool::segments::Position;
use rdkafka::error::RDKafkaErrorCode;

/// One record of the window.
pub(super) struct Pending {
    /// The position after the record in the log.
    pub(super) after: Position,
    pub(super) accepted_ms: u64,
    pub(super) bytes: usize,
    /// Where it goes, for readiness to name a partition that takes nothing.
    pub(super) topic: Arc<str>,
    pub(super) key: String,
    report: Report,
}

/// What Kafka reported for a record, as far as it has.
enum Report {
    Waiting(Delivery),
    /// Each delivery is polled until it completes and never after: its outcome is kept here.
    Came(Outcome),
}

fn closed() -> Outcome {
    Err(Refused::new(
        RDKafkaErrorCode::Fail,
        "the producer closed before reporting",
    ))
}

impl Pending {
    /// A record handed to the producer, with the delivery that reports on it.
    pub(super) fn sent(
        after: Position,
        accepted_ms: u64,
        record: &Record,
        delivery: Delivery,
    ) -> Self {
        Self::new(after, accepted_ms, record, Report::Waiting(delivery))
    }

    /// A record Kafka acknowledged before its producer was replaced: not sent again.
    pub(super) fn acknowledged_before(after: Position, accepted_ms: u64, record: &Record) -> Self {
        let acked = Acked {
            partition: -1,
            offset: -1,
        };
        Self::new(after, accepted_ms, record, Report::Came(Ok(acked)))
    }

    fn new(after: Position, accepted_ms: u64, record: &Record, report: Report) -> Self {
        Self {
            after,
            accepted_ms,
            bytes: record.size(),
            topic: record.topic.clone(),
            key: record.key.clone(),
            report,
        }
    }

    /// Its outcome, if it came, without waiting. Asked with `try_recv`, not a poll: a poll
    /// counts against the task's cooperative budget, and past 128 of them in one turn tokio
    /// answers "not yet" for outcomes that are there.
    fn outcome_now(&mut self) -> Option<&Outcome> {
        if let Report::Waiting(delivery) = &mut self.report {
            match delivery.try_recv() {
                Ok(outcome) => self.report = Report::Came(outcome),
                Err(TryRecvError::Closed) => self.report = Report::Came(closed()),
                Err(TryRecvError::Empty) => return None,
            }
        }
        match &self.report {
            Report::Came(outcome) => Some(outcome),
            Report::Waiting(_) => None,
        }
    }

    /// Waits for its outcome. Cancel-safe: an outcome that came is kept.
    pub(super) async fn outcome(&mut self) {
        if let Report::Waiting(delivery) = &mut self.report {
            let outcome = delivery.await.unwrap_or_else(|_| closed());
            self.report = Report::Came(outcome);
        }
    }
}

/// The records handed to one producer generation and not yet acknowledged, oldest first.
#[derive(Default)]
pub(super) struct Window {
    pub(super) generation: Option<u64>,
    pub(super) pending: VecDeque<Pending>,
    pub(super) bytes: usize,
    /// Records handed over since the window was last empty, and the position after the last.
    pub(super) sent: usize,
    pub(super) end: Position,
    /// The first refusal met at the front: the window stops there.
    pub(super) refused: Option<Refused>,
}

impl Window {
    /// Adds a record; `handed_over` when it went to the producer now.
    pub(super) fn push(&mut self, pending: Pending, handed_over: bool) {
        self.bytes += pending.bytes;
        if handed_over {
            self.sent += 1;
        }
        self.end = pending.after;
        self.pending.push_back(pending);
    }

    pub(super) fn clear(&mut self) {
        self.pending.clear();
        self.bytes = 0;
        self.sent = 0;
        self.refused = None;
    }

    pub(super) fn is_full(&self, careful: bool) -> bool {
        match careful {
            // After a refusal for good: one at a time, so that the one refused is known.
            true => !self.pending.is_empty(),
            false => {
                self.pending.len() >= super::WINDOW_RECORDS || self.bytes >= super::WINDOW_BYTES
            }
        }
    }

    /// Takes every outcome already at the front, as long as they are acknowledgements (they
    /// come in bursts); stops at the first refusal, kept in `refused`. Moves `acknowledged`
    /// past what was acknowledged and returns how many were.
    pub(super) fn take_acknowledged(&mut self, acknowledged: &mut Position) -> u64 {
        let mut done = 0;
        while self.refused.is_none() {
            let Some(outcome) = self
                .pending
                .front_mut()
                .and_then(|p| p.outcome_now().cloned())
            else {
                return done;
            };
            let Some(front) = self.pending.pop_front() else {
                return done;
            };
            self.bytes -= front.bytes;
            match outcome {
                Ok(_) => {
                    *acknowledged = front.after;
                    done += 1;
                }
                Err(refused) => self.refused = Some(refused),
            }
        }
        done
    }

    /// Whether nothing is outstanding; then a record handed over next is the only one.
    pub(super) fn settled(&mut self) {
        if self.pending.is_empty() && self.refused.is_none() {
            self.sent = 0;
        }
    }

    /// After the generation was replaced (every outcome is there): the refusal that matters
    /// most, a record's own refusal for good over an operator's error over anything else.
    pub(super) fn worst_refusal(&mut self) -> Option<Refused> {
        let rank = |r: &Refused| match r.verdict() {
            Verdict::Poison => 2,
            Verdict::Operator => 1,
            Verdict::Retry => 0,
        };
        let mut worst = self.refused.take();
        for pending in &mut self.pending {
            if let Some(Err(refused)) = pending.outcome_now()
                && worst.as_ref().is_none_or(|w| rank(refused) > rank(w))
            {
                worst = Some(refused.clone());
            }
        }
        worst
    }

    /// The records Kafka acknowledged behind the front (after a replacement, every outcome is
    /// there): a new producer must not send them again.
    pub(super) fn acknowledged_behind_front(&mut self) -> impl Iterator<Item = Position> + '_ {
        self.pending.iter_mut().filter_map(|pending| {
            matches!(pending.outcome_now(), Some(Ok(_))).then_some(pending.after)
        })
    }

    /// Whether Kafka acknowledged a record behind the front while the front waits: the front's
    /// partition takes nothing while others take records.
    pub(super) fn front_waits_while_others_land(&mut self) -> bool {
        let mut iter = self.pending.iter_mut();
        let front_waits = iter
            .next()
            .is_some_and(|front| front.outcome_now().is_none());
        front_waits && iter.any(|pending| matches!(pending.outcome_now(), Some(Ok(_))))
    }
}
