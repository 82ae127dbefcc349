//! The forwarder's window: records handed to one producer generation, oldest first, and what
//! their deliveries say.

use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};

use crate::publish::kafka::{Delivery, Outcome};
use crate::publish::refusal::{Refused, Verdict};
use crate::spool::segments::Position;
use rdkafka::error::RDKafkaErrorCode;

pub(super) struct Pending {
    pub(super) after: Position,
    pub(super) accepted_ms: u64,
    pub(super) bytes: usize,
    pub(super) delivery: Delivery,
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
    pub(super) fn push(&mut self, pending: Pending) {
        self.bytes += pending.bytes;
        self.sent += 1;
        self.end = pending.after;
        self.pending.push_back(pending);
    }

    pub(super) fn clear(&mut self) {
        self.pending.clear();
        self.bytes = 0;
        self.sent = 0;
        self.refused = None;
    }

    /// Takes `outcome` for the front (if given) and every outcome already there behind it,
    /// as long as they are acknowledgements (they come in bursts); stops at the first
    /// refusal, kept in `refused`. Returns how many were acknowledged.
    pub(super) fn take_acknowledged(
        &mut self,
        mut outcome: Option<Outcome>,
        acknowledged: &mut Position,
    ) -> u64 {
        let mut done = 0;
        while self.refused.is_none() {
            let next =
                match outcome.take() {
                    Some(given) => given,
                    None => {
                        let mut context = Context::from_waker(Waker::noop());
                        match self.pending.front_mut().map(|pending| {
                            std::pin::Pin::new(&mut pending.delivery).poll(&mut context)
                        }) {
                            Some(Poll::Ready(Ok(next))) => next,
                            Some(Poll::Ready(Err(_))) => Err(Refused::new(
                                RDKafkaErrorCode::Fail,
                                "the producer closed before reporting",
                            )),
                            _ => return done,
                        }
                    }
                };
            // Its outcome is taken: a delivery is never polled again after it completed.
            let front = self.pending.pop_front();
            if let Some(pending) = &front {
                self.bytes -= pending.bytes;
            }
            match next {
                Ok(_) => {
                    if let Some(pending) = front {
                        *acknowledged = pending.after;
                    }
                    done += 1;
                }
                Err(refused) => self.refused = Some(refused),
            }
        }
        done
    }

    /// After the generation was replaced (every outcome is there): the refusal that matters
    /// most, a record's own refusal for good over an operator's error over anything else.
    pub(super) fn worst_refusal(&mut self) -> Option<Refused> {
        let mut worst = self.refused.take();
        let rank = |r: &Refused| match r.verdict() {
            Verdict::Poison => 2,
            Verdict::Operator => 1,
            Verdict::Retry => 0,
        };
        let mut context = Context::from_waker(Waker::noop());
        for pending in &mut self.pending {
            if let Poll::Ready(Ok(Err(refused))) =
                std::pin::Pin::new(&mut pending.delivery).poll(&mut context)
                && worst.as_ref().is_none_or(|w| rank(&refused) > rank(w))
            {
                worst = Some(refused);
            }
        }
        worst
    }
}
