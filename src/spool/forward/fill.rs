//! Filling the window: records handed to the producer in log order, the head set aside when
//! Kafka refused it for good.

use std::sync::atomic::Ordering;

use super::*;

impl<S: Sink> Forwarding<S> {
    /// Hands records to the producer, in log order, until the window is full or the log read.
    pub(super) async fn fill(&mut self) -> Result<Option<Failure>, Stopped> {
        let end = *self.committed.borrow_and_update();
        if self
            .careful_until
            .is_some_and(|until| self.acknowledged >= until)
        {
            self.careful_until = None;
        }
        if self.window.pending.is_empty() {
            self.window.generation = self.to.sink.generation();
            self.failures.mark_unchanged();
        }
        while let Some(generation) = self.window.generation {
            if self.window.is_full(self.careful_until.is_some()) {
                break;
            }
            let before = self.reader.position();
            let (entry, after) = match self.reader.next(end) {
                Ok(Some(next)) => next,
                Ok(None) => break,
                Err(error) => return Ok(Some(Failure::Unreadable(StorageError::from(&error)))),
            };
            if let Some(refused) = self.poison_head.take() {
                match self
                    .set_aside_head(entry, after, refused, generation)
                    .await?
                {
                    None => continue,
                    Some(failure) => {
                        self.reader.seek(before);
                        return Ok(Some(failure));
                    }
                }
            }
            if self.acknowledged_ahead.remove(&after) {
                let pending = Pending::acknowledged_before(after, entry.accepted_ms, &entry.record);
                self.window.push(pending, false);
                continue;
            }
            match self.to.sink.send(&entry.record, generation) {
                Ok(delivery) => {
                    let pending = Pending::sent(after, entry.accepted_ms, &entry.record, delivery);
                    self.window.push(pending, true);
                }
                Err(error) => {
                    self.reader.seek(before);
                    // With records outstanding, the window resolves first and shows the failure.
                    if !self.window.pending.is_empty() {
                        break;
                    }
                    // Someone else replaced the producer (the probe, a dead-letter refusal):
                    // nothing of the window is in the old one, so go on with the new one.
                    if matches!(error, SendError::Replaced) {
                        let current = self.to.sink.generation();
                        if current.is_some() && current != Some(generation) {
                            self.window.generation = current;
                            self.failures.mark_unchanged();
                            continue;
                        }
                    }
                    return Ok(Some(self.send_failure(error)));
                }
            }
        }
        self.note_oldest();
        Ok(None)
    }

    /// Sets the head record aside; the failure to report when it could not be.
    pub(super) async fn set_aside_head(
        &mut self,
        entry: Entry,
        after: Position,
        refused: Refused,
        generation: u64,
    ) -> Result<Option<Failure>, Stopped> {
        let by_topic = self.letter_refused.take();
        match self
            .to
            .set_aside(entry, &refused, by_topic, generation, &mut self.stop)
            .await
        {
            Ok(()) => {
                self.acknowledged = after;
                self.to.shared.records.fetch_sub(1, Ordering::AcqRel);
                self.to.shared.acknowledged.send_replace(after);
                self.moved();
                // A refusal by the dead-letter topic replaced the producer; the window is
                // empty, so the records behind go to the new one.
                self.window.generation = self.to.sink.generation();
                self.failures.mark_unchanged();
                Ok(None)
            }
            Err(NotSetAside::Stopping) => Err(Stopped),
            Err(NotSetAside::Failed(error)) => {
                self.poison_head = Some(refused);
                if let SetAsideFailure::Quarantine { by_topic, .. } = &error.why {
                    self.letter_refused = Some(by_topic.clone());
                }
                Ok(Some(Failure::SetAside(error)))
            }
        }
    }

    /// What readiness shows of the oldest record; an empty window with everything read is
    /// progress too (the reader may have passed empty segments).
    pub(super) fn note_oldest(&mut self) {
        let shared = &self.to.shared;
        match self.window.pending.front() {
            Some(oldest) => shared
                .oldest_ms
                .store(oldest.accepted_ms, Ordering::Release),
            None => {
                shared.oldest_ms.store(0, Ordering::Release);
                if self.reader.position() > self.acknowledged {
                    self.acknowledged = self.reader.position();
                    shared.acknowledged.send_replace(self.acknowledged);
                }
            }
        }
    }
}
