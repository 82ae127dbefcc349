//! `omnichat-bridge drain`: forwards a spool no bridge runs on (the volume a scaled-down
//! replica left behind) to Kafka, and exits once it is empty.
//!
//! The spool is opened as a bridge's start opens it ([`Spool::open`]: its lock, recovery, the
//! quarantine, and the forwarder with its own producer), and nothing is appended. So the
//! forwarder carries the log to Kafka under its usual rules (log order, gapless, set-aside,
//! backoff) and checkpoints as it goes, and a run stopped in any way leaves the records Kafka
//! did not acknowledge for the next run, or a bridge, to go on with. This module only watches:
//! it waits until Kafka has every record, reports progress, probes Kafka so that a run which
//! cannot go on ends naming why, and stops the forwarder on a signal.

pub mod options;

use crate::spool::SpoolFatal;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::conditions::Active;
use crate::config::{AckMode, ConfigError, Settings, SpoolSettings};
use crate::publish::kafka::{KafkaPublisher, KafkaUnusable};
use crate::spool::segments::SpoolDirError;
use crate::spool::{Backlog, Spool, SpoolStatus};
pub use options::{Options, OptionsError, USAGE};

const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// How often a run asks Kafka for metadata, as readiness does in the bridge.
const PROBE_EVERY: Duration = Duration::from_secs(2);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a run looks at the spool's counters.
const CHECK_EVERY: Duration = Duration::from_millis(250);
/// How long the forwarder may go on once told to stop; it checkpoints on the way out.
const STOP_WITHIN: Duration = Duration::from_secs(1);

/// Why a run did nothing (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "drain reads the spool's settings: set BRIDGE_ACK_MODE=spool and BRIDGE_SPOOL_DIR as \
         the bridge that wrote the spool had them"
    )]
    NotSpoolMode,
    /// Recovery would create it: an empty spool where a volume was meant to be mounted.
    #[error("BRIDGE_SPOOL_DIR: {}: no such directory (is the volume mounted there?)", .0.display())]
    NoSpoolDir(PathBuf),
    #[error("BRIDGE_SPOOL_DIR: {0}")]
    Spool(#[from] SpoolDirError),
}

/// Why a run stopped with records left (exit 1). Running it again goes on from there.
#[derive(Debug, thiserror::Error)]
pub enum StoppedEarly {
    #[error("Kafka took no record for {} s (--give-up-after): {why}", .after.as_secs())]
    GaveUp { after: Duration, why: Stalled },
    #[error("stopped by a signal")]
    Interrupted,
    /// The spool cannot go on without a restart's recovery (damage found while reading).
    #[error(transparent)]
    Failed(SpoolFatal),
}

/// What held the records up, as far as a run can tell.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Stalled {
    /// The last probe's verdict.
    #[error(transparent)]
    Kafka(KafkaUnusable),
    /// The forwarder's reason for holding the head record (a refusal an operator must fix).
    #[error("forwarding held up: {0}")]
    Held(String),
    /// A condition the forwarder raised, such as a partition away: its code and reason.
    #[error("{0}: {1}")]
    Condition(&'static str, String),
    #[error("Kafka answers but acknowledged nothing")]
    Silent,
}

/// How a run ended.
#[derive(Debug)]
pub enum Report {
    /// `--dry-run`: what the spool holds.
    Counted(Backlog),
    /// What it did, and why it stopped early if it did.
    Ran {
        summary: Summary,
        stopped: Option<StoppedEarly>,
    },
}

/// What a run did, printed at its end.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Records Kafka acknowledged in this run.
    pub forwarded: u64,
    /// Records Kafka refused for good, set aside to the dead-letter topic or the quarantine.
    pub to_deadletter: u64,
    pub to_quarantine: u64,
    /// Records still in the spool.
    pub left: u64,
    /// The quarantine's bytes on the volume, which a drain leaves where they are.
    pub quarantine_bytes: u64,
}

impl From<&SpoolStatus> for Summary {
    fn from(status: &SpoolStatus) -> Self {
        Self {
            forwarded: status.forwarded,
            to_deadletter: status.set_aside_to_deadletter,
            to_quarantine: status.set_aside_to_quarantine,
            left: status.records,
            quarantine_bytes: status.quarantine_bytes,
        }
    }
}

impl Summary {
    pub fn set_aside(&self) -> u64 {
        self.to_deadletter + self.to_quarantine
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "forwarded: {}", self.forwarded)?;
        writeln!(f, "set aside: {}", self.set_aside())?;
        writeln!(f, "  to the dead-letter topic: {}", self.to_deadletter)?;
        writeln!(f, "  to the quarantine: {}", self.to_quarantine)?;
        writeln!(f, "left: {}", self.left)?;
        write!(f, "quarantine bytes: {}", self.quarantine_bytes)
    }
}

impl std::fmt::Display for Backlog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "records: {}", self.records)?;
        writeln!(f, "bytes: {}", self.bytes)?;
        write!(f, "quarantine bytes: {}", self.quarantine_bytes)
    }
}

/// Runs a drain of the settings' spool as `options` say, until the spool is empty, `interrupt`
/// fires, or Kafka takes nothing for `options.give_up_after`. `before_recovery` runs once the
/// producer exists, before the spool is touched (the CLI starts logging there).
pub async fn run(
    settings: &Settings,
    options: &Options,
    before_recovery: impl FnOnce(&Settings),
    interrupt: impl Future<Output = ()>,
) -> Result<Report, DrainError> {
    let spool_settings = spool_settings(settings)?;
    if options.dry_run {
        return Ok(Report::Counted(Spool::backlog(spool_settings)?));
    }
    crate::startup::check_settings(settings)?;
    let kafka = KafkaPublisher::unbounded(&settings.kafka, settings.publish_timeout)?;
    before_recovery(settings);
    let spool = Arc::new(Spool::open(
        spool_settings,
        // Nothing is appended, so no room is kept for an event.
        0,
        kafka,
        settings.topics.deadletter.clone(),
        settings.publish_timeout,
        Arc::default(),
    )?);
    let topics = settings
        .topics
        .all()
        .map(|topic| topic.to_string())
        .to_vec();
    let watcher = Watcher::new(spool.clone(), topics, options.give_up_after);
    let stopped = watcher.watch(interrupt).await;
    // What the forwarder still holds stays spooled: a later run sends it again.
    let _ = spool.flush(STOP_WITHIN).await;
    let summary = Summary::from(&spool.status());
    Ok(Report::Ran { summary, stopped })
}

/// The spool's settings; its directory must exist, since recovery would create an empty one.
fn spool_settings(settings: &Settings) -> Result<&SpoolSettings, DrainError> {
    let AckMode::Spool(spool) = &settings.ack_mode else {
        return Err(DrainError::NotSpoolMode);
    };
    if !spool.dir.is_dir() {
        return Err(DrainError::NoSpoolDir(spool.dir.clone()));
    }
    Ok(spool)
}

/// The last probe's verdict; `None` until the first one.
type Verdict = Option<Result<Vec<String>, KafkaUnusable>>;

/// Watches the forwarder at work: when it is done, when it can go no further, and its progress.
struct Watcher {
    spool: Arc<Spool>,
    kafka: watch::Receiver<Verdict>,
    stall: Stall,
    printed: Instant,
}

impl Watcher {
    fn new(spool: Arc<Spool>, topics: Vec<String>, give_up_after: Duration) -> Self {
        let (verdicts, kafka) = watch::channel(None);
        probe_kafka(spool.clone(), topics, verdicts);
        let now = Instant::now();
        Self {
            spool,
            kafka,
            stall: Stall::new(give_up_after, now),
            printed: now,
        }
    }

    /// Until every record left the spool (`None`), or why the run stops before.
    async fn watch(mut self, interrupt: impl Future<Output = ()>) -> Option<StoppedEarly> {
        let spool = self.spool.clone();
        let drained = spool.forwarded_all();
        tokio::pin!(drained, interrupt);
        let mut check = tokio::time::interval(CHECK_EVERY);
        loop {
            tokio::select! {
                biased;
                () = &mut drained => return None,
                () = &mut interrupt => return Some(StoppedEarly::Interrupted),
                _ = check.tick() => {
                    if let Some(stopped) = self.check(Instant::now()) {
                        return Some(stopped);
                    }
                }
            }
        }
    }

    /// Looks at the spool: a failure that ends the run, a stall past the bound, and progress
    /// every [`PROGRESS_EVERY`].
    fn check(&mut self, now: Instant) -> Option<StoppedEarly> {
        if let Some(reason) = self.spool.fatal_error() {
            return Some(StoppedEarly::Failed(reason));
        }
        let status = self.spool.status();
        let summary = Summary::from(&status);
        let stuck = self
            .stall
            .stuck(summary.forwarded + summary.set_aside(), now);
        let verdict = self.kafka.borrow().clone();
        if now.duration_since(self.printed) >= PROGRESS_EVERY {
            self.printed = now;
            eprintln!("{}", progress(&summary, &verdict, self.stall.idle(now)));
        }
        stuck.then(|| StoppedEarly::GaveUp {
            after: self.stall.after,
            why: stalled(&verdict, &status, self.spool.conditions().active()),
        })
    }
}

/// A progress line, for stderr.
fn progress(summary: &Summary, verdict: &Verdict, idle: Duration) -> String {
    let kafka = match verdict {
        None => "Kafka not probed yet".to_owned(),
        Some(Ok(_)) => "Kafka reachable".to_owned(),
        Some(Err(unusable)) => unusable.to_string(),
    };
    let mut line = format!(
        "drain: {} forwarded, {} set aside, {} left; {kafka}",
        summary.forwarded,
        summary.set_aside(),
        summary.left
    );
    if idle >= PROGRESS_EVERY {
        line.push_str(&format!("; nothing taken for {} s", idle.as_secs()));
    }
    line
}

/// The best account of why nothing moves: Kafka's state first, then what the forwarder saw.
fn stalled(verdict: &Verdict, status: &SpoolStatus, active: Vec<Active>) -> Stalled {
    if let Some(Err(unusable)) = verdict {
        return Stalled::Kafka(unusable.clone());
    }
    if let Some(held) = &status.forward_error {
        return Stalled::Held(held.clone());
    }
    match active.into_iter().next() {
        Some(active) => Stalled::Condition(active.condition.code(), active.reason),
        None => Stalled::Silent,
    }
}

/// Probes Kafka every [`PROBE_EVERY`] on a thread of its own (a probe blocks for up to
/// [`PROBE_TIMEOUT`], and the runtime's blocking pool would hold the process at exit until it
/// returns), and wakes a forwarder backing off once Kafka answers again. Ends when the
/// watcher is gone.
fn probe_kafka(spool: Arc<Spool>, topics: Vec<String>, verdicts: watch::Sender<Verdict>) {
    let probe = move || {
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let mut usable = false;
        while !verdicts.is_closed() {
            let verdict = spool.probe(&names, PROBE_TIMEOUT);
            if verdict.is_ok() && !usable {
                spool.kafka_usable();
            }
            usable = verdict.is_ok();
            if verdicts.send(Some(verdict)).is_err() {
                return;
            }
            std::thread::sleep(PROBE_EVERY);
        }
    };
    if let Err(error) = std::thread::Builder::new()
        .name("drain-probe".into())
        .spawn(probe)
    {
        // The forwarder goes on without it; a stall is then reported without Kafka's state.
        tracing::warn!(error = %error, "Kafka probe not started");
    }
}

/// Whether records stopped leaving the spool: none forwarded or set aside for `after`.
#[derive(Debug)]
struct Stall {
    after: Duration,
    moved: u64,
    since: Instant,
}

impl Stall {
    fn new(after: Duration, now: Instant) -> Self {
        Self {
            after,
            moved: 0,
            since: now,
        }
    }

    /// Takes in how many records have left the spool by `now`; true once none has for `after`.
    fn stuck(&mut self, moved: u64, now: Instant) -> bool {
        if moved != self.moved {
            self.moved = moved;
            self.since = now;
        }
        self.idle(now) >= self.after
    }

    fn idle(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.since)
    }
}

#[cfg(test)]
mod tests;
