//! Waiting for what moves forwarding, and taking in what Kafka reported: acknowledgements
//! at the front, the checkpoint every 200 ms, a partition that takes nothing.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::*;

impl<S: Sink> Forwarding<S> {
    /// Waits for the next thing that moves forwarding, and takes it in.
    pub(super) async fn wait(&mut self) -> Result<Option<Failure>, Stopped> {
        // By the clock, not only the tick: a forwarder that always has an outcome or a commit
        // to take is rarely left to see its timer fire, and would keep every drained segment.
        if self.last_tick.elapsed() >= CHECKPOINT_EVERY {
            self.on_tick();
        }
        let waiting = !self.window.pending.is_empty();
        let wake_up = tokio::select! {
            biased;
            _ = &mut self.stop => WakeUp::Stop,
            _ = self.tick.tick() => WakeUp::Tick,
            () = async {
                match self.window.pending.front_mut() {
                    Some(front) => front.outcome().await,
                    None => std::future::pending().await,
                }
            }, if waiting => WakeUp::FrontReported,
            _ = self.failures.changed(), if waiting => WakeUp::NotDelivered,
            changed = self.committed.changed(), if self.writer_open => {
                // The writer is gone on shutdown; nothing more will be committed.
                self.writer_open = changed.is_ok();
                WakeUp::Committed
            }
        };
        match wake_up {
            WakeUp::Stop => return Err(Stopped),
            WakeUp::Committed => {}
            WakeUp::Tick => self.on_tick(),
            WakeUp::NotDelivered => return Ok(Some(Failure::Window(None))),
            WakeUp::FrontReported => {
                self.settle();
                if self.window.refused.is_some() {
                    return Ok(Some(Failure::Window(None)));
                }
            }
        }
        Ok(None)
    }

    /// Every 200 ms: progress made durable, forwarded segments deleted, the front watched.
    pub(super) fn on_tick(&mut self) {
        self.last_tick = Instant::now();
        self.checkpoint();
        self.watch_front();
    }

    /// Takes in what Kafka acknowledged at the front of the window.
    pub(super) fn settle(&mut self) {
        let done = self.window.take_acknowledged(&mut self.acknowledged);
        self.window.settled();
        if done == 0 {
            return;
        }
        let shared = &self.to.shared;
        // Counted as forwarded before no longer waiting, so whoever sees the spool empty also
        // sees every record forwarded.
        shared.forwarded.fetch_add(done, Ordering::AcqRel);
        shared.records.fetch_sub(done, Ordering::AcqRel);
        shared.acknowledged.send_replace(self.acknowledged);
        if !self.acknowledged_ahead.is_empty() {
            let acknowledged = self.acknowledged;
            self.acknowledged_ahead
                .retain(|after| *after > acknowledged);
        }
        self.moved();
    }

    /// Forwarding moved: whatever held it up is over.
    pub(super) fn moved(&mut self) {
        if self.held {
            self.held = false;
            self.backoff = FIRST_BACKOFF;
            self.to.shared.forwarding_moves();
        }
    }

    /// Names a partition that takes nothing while others take records (readiness), and clears
    /// it once the oldest record moves.
    pub(super) fn watch_front(&mut self) {
        let conditions = &self.to.shared.conditions;
        let Some(front) = self.window.pending.front() else {
            self.front_since = None;
            conditions.clear(Condition::PartitionUnavailable);
            return;
        };
        let (topic, key, after) = (front.topic.clone(), front.key.clone(), front.after);
        match self.front_since {
            Some((position, since)) if position == after => {
                if since.elapsed() < PARTITION_AWAY_AFTER {
                    return;
                }
                if !self.window.front_waits_while_others_land() {
                    conditions.clear(Condition::PartitionUnavailable);
                } else {
                    conditions.raise(
                        Condition::PartitionUnavailable,
                        format!(
                            "the partition of {topic} that key {key} goes to has taken nothing for {} s while others take records (a leader down, or too few in-sync replicas)",
                            since.elapsed().as_secs()
                        ),
                    );
                }
            }
            _ => {
                self.front_since = Some((after, Instant::now()));
                conditions.clear(Condition::PartitionUnavailable);
            }
        }
    }
}
