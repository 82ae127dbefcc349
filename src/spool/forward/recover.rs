//! After a failure: the generation replaced, what to send again decided, the backoff held;
//! and the checkpoint that deletes forwarded segments.

use super::*;

impl<S: Sink> Forwarding<S> {
    /// After a failure: the generation replaced, the window resolved, and what to send again
    /// decided; then a backoff unless sending again at once is what finds a refused record.
    pub(super) async fn recover(&mut self, failure: Failure) -> Step {
        let (reason, refused) = match failure {
            Failure::SetAside(error) => {
                let reason = error.to_string();
                return self.hold_up(Some(Condition::SetAsideFailing), reason).await;
            }
            Failure::Unreadable(error) => {
                // Never skipped: a restart's recovery refuses or sets the segment aside.
                let reason = format!("the spool cannot be read: {error}");
                self.to.shared.fail_forwarding(error);
                (Some(reason), None)
            }
            Failure::Send { reason, refused } => (Some(reason), refused),
            Failure::Window(reason) => (reason, None),
        };
        let alone = self.window.sent == 1;
        let refused = refused.or_else(|| self.replace_generation(reason.as_deref()));
        if let Some(refused) = &refused {
            self.to.shared.count_forward_failure(refused);
            if refused.verdict() == Verdict::Poison && self.poison_head.is_none() {
                if self.careful_until.is_some() && alone {
                    // Refused on its own: the record itself is the cause.
                    self.poison_head = Some(refused.clone());
                } else {
                    self.careful_until = Some(self.window.end.max(self.acknowledged));
                }
                return Ok(());
            }
        }
        if self.poison_head.is_some() {
            return Ok(());
        }
        let operator = refused
            .as_ref()
            .is_some_and(|r| r.verdict() == Verdict::Operator);
        let reason = match (reason, refused) {
            (Some(reason), _) => reason,
            (None, Some(refused)) => format!("Kafka refused a spooled record: {refused}"),
            (None, None) => return Ok(()),
        };
        if operator || reason.starts_with(SEND_FAILURE) {
            self.hold_up(Some(Condition::ForwardingHeld), reason).await
        } else {
            // A producer that was purged, fenced or failed: a new one goes on by itself, so
            // readiness names nothing (what keeps Kafka away has its own condition) and the
            // pause stays short, or the healthy partitions would wait with the stuck one.
            self.backoff = self.backoff.min(RETRY_MAX_BACKOFF);
            self.hold_up(None, reason).await
        }
    }

    /// Replaces the window's generation once every record it holds is resolved, keeps what
    /// Kafka acknowledged, and goes back to the oldest unacknowledged record. Returns the
    /// refusal that matters most among the window's outcomes.
    pub(super) fn replace_generation(&mut self, reason: Option<&str>) -> Option<Refused> {
        if let Some(generation) = self.window.generation {
            let why = reason.unwrap_or("a spooled record was not delivered");
            self.to.sink.replace(generation, why);
        }
        self.settle();
        let acknowledged: Vec<Position> = self.window.acknowledged_behind_front().collect();
        self.acknowledged_ahead.extend(acknowledged);
        let refused = self.window.worst_refusal();
        self.window.clear();
        self.reader.seek(self.acknowledged);
        self.failures.mark_unchanged();
        refused
    }

    /// A failure to hand a record over, with nothing of the window outstanding.
    pub(super) fn send_failure(&mut self, error: SendError) -> Failure {
        let reason = format!("{SEND_FAILURE}: {error}");
        let refused = match error {
            // The door keeps such records out; one written by an older version is set aside.
            SendError::Publish(PublishError::TooLarge { .. }) => {
                let refused = Refused::new(RDKafkaErrorCode::MessageSizeTooLarge, reason.clone());
                self.poison_head = Some(refused.clone());
                Some(refused)
            }
            _ => None,
        };
        Failure::Send { reason, refused }
    }

    /// Reports why forwarding is held up and waits out the backoff, which doubles for the next
    /// time; readiness finding Kafka usable again cuts it short. What was forwarded is
    /// checkpointed first, so its segments are deleted even while the head is stuck.
    pub(super) async fn hold_up(&mut self, condition: Option<Condition>, reason: String) -> Step {
        self.checkpoint();
        tracing::warn!(
            retry_in_ms = self.backoff.as_millis() as u64,
            reason = %reason,
            "Spool forwarding held up, sending again from the oldest unacknowledged record"
        );
        self.to.shared.hold_forwarding(condition, reason);
        self.held = true;
        let waited = tokio::select! {
            _ = &mut self.stop => Err(Stopped),
            () = tokio::time::sleep(self.backoff) => Ok(()),
            () = self.to.shared.kick.notified() => Ok(()),
        };
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        waited
    }

    /// Records the acknowledged position, then deletes the segments wholly before it. Those
    /// were all acknowledged, so they go even when the checkpoint cannot be written (a full
    /// volume): a stale checkpoint only sends records again.
    pub(super) fn checkpoint(&mut self) {
        let acknowledged = self.acknowledged;
        if acknowledged == self.checkpointed && self.undeleted.is_none() {
            return;
        }
        if acknowledged != self.checkpointed
            && let Err(error) = segments::write_checkpoint(&self.to.dir, acknowledged)
        {
            tracing::warn!(error = %error, "Spool checkpoint not written (records may be sent again)");
        }
        let from = self
            .checkpointed
            .segment
            .min(self.undeleted.unwrap_or(u64::MAX));
        self.checkpointed = acknowledged;
        for segment in from..acknowledged.segment {
            if let Err(error) = self.delete_segment(segment) {
                // Tried again at the next checkpoint (its bytes still count), logged once.
                if self.undeleted != Some(segment) {
                    tracing::warn!(segment, error = %error, "Forwarded spool segment not deleted");
                }
                self.undeleted = Some(segment);
                return;
            }
        }
        self.undeleted = None;
    }

    /// Deletes a forwarded segment and releases its bytes; one already gone is fine.
    pub(super) fn delete_segment(&self, segment: u64) -> std::io::Result<()> {
        let path = segments::segment_path(&self.to.dir, segment);
        let metadata = match std::fs::metadata(&path) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(error),
        };
        std::fs::remove_file(&path)?;
        self.to.shared.release(metadata.len());
        self.to.shared.volume_has_room();
        Ok(())
    }
}
