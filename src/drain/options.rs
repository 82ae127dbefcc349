//! `omnichat-bridge drain`'s options.

use std::time::Duration;

pub const USAGE: &str = "usage: omnichat-bridge drain [--give-up-after SECONDS] [--dry-run]

Forwards every record of the spool in BRIDGE_SPOOL_DIR to Kafka in log order, with the
bridge's own forwarder and its rules (records Kafka refuses for good set aside to the
dead-letter topic or the quarantine), then exits. For a spool no bridge runs on, such as the
volume a scaled-down replica left behind. Configured by the bridge's environment variables
(BRIDGE_ACK_MODE=spool, BRIDGE_SPOOL_DIR, BRIDGE_TOPIC_*, KAFKA_*; see the README).
  --give-up-after SECONDS  stop (exit 1) once no record has been forwarded or set aside for
                           this long while records are left: Kafka unreachable, a topic
                           missing, a refusal an operator must fix, a partition away
                           (default 30)
  --dry-run                recover the spool as a start would and print what it holds;
                           connects to nothing and forwards nothing

Progress goes to stderr every 5 s; the summary to stdout: forwarded, set aside (to the
dead-letter topic, to the quarantine), left, and the quarantine's bytes. A record leaves the
spool only once Kafka acknowledged it (or it was set aside): stopped in any way (SIGTERM,
SIGINT, kill -9), a run leaves the rest, and the next run, or a bridge, goes on from there.

Exit codes:
  0  the spool is empty (with --dry-run: counted)
  1  stopped with records left: Kafka took nothing for --give-up-after seconds, a signal, or
     the spool became unreadable; one line on stderr says why. Run it again to go on
  2  nothing done: a bad option or setting, BRIDGE_ACK_MODE not spool, BRIDGE_SPOOL_DIR
     missing (never created), a spool recovery refuses (damaged, another format version), or
     a running bridge holds the spool's lock";

/// How long a run waits for Kafka to take a record before it gives up, by default: longer
/// than a broker restart or a leader election usually takes, and as long as the forwarder's
/// longest backoff, so a drain Job pointed at the wrong cluster fails within a minute and its
/// retries (Kubernetes' Job backoff) take over.
pub const DEFAULT_GIVE_UP_AFTER: Duration = Duration::from_secs(30);

/// What a run does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Count the spool's records; forward nothing.
    pub dry_run: bool,
    /// Stop once no record has left the spool for this long.
    pub give_up_after: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            dry_run: false,
            give_up_after: DEFAULT_GIVE_UP_AFTER,
        }
    }
}

/// An option that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    #[error("unknown option `{0}`")]
    Unknown(String),
    #[error("--give-up-after takes a number of seconds")]
    MissingValue,
    #[error("--give-up-after takes a whole number of seconds, at least 1, not `{0}`")]
    NotSeconds(String),
}

impl Options {
    /// Reads the arguments after `drain`; `--give-up-after` takes `SECONDS` or `=SECONDS`.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, OptionsError> {
        let mut options = Options::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((name, value)) => (name, Some(value.to_owned())),
                None => (arg.as_str(), None),
            };
            match (name, inline) {
                ("--dry-run", None) => options.dry_run = true,
                ("--give-up-after", value) => {
                    let value = value
                        .or_else(|| args.next())
                        .ok_or(OptionsError::MissingValue)?;
                    options.give_up_after = seconds(&value)?;
                }
                _ => return Err(OptionsError::Unknown(arg)),
            }
        }
        Ok(options)
    }
}

fn seconds(value: &str) -> Result<Duration, OptionsError> {
    match value.parse::<u64>() {
        Ok(seconds) if seconds >= 1 => Ok(Duration::from_secs(seconds)),
        _ => Err(OptionsError::NotSeconds(value.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, OptionsError> {
        Options::parse(args.iter().map(|a| (*a).to_owned()))
    }

    #[test]
    fn with_no_option_it_drains_and_gives_up_after_30_s() {
        assert_eq!(parse(&[]), Ok(Options::default()));
        assert_eq!(Options::default().give_up_after, Duration::from_secs(30));
        assert!(!Options::default().dry_run);
    }

    #[test]
    fn reads_each_option_in_either_spelling() {
        let expected = Options {
            dry_run: true,
            give_up_after: Duration::from_secs(5),
        };
        assert_eq!(
            parse(&["--dry-run", "--give-up-after", "5"]),
            Ok(expected.clone())
        );
        assert_eq!(parse(&["--give-up-after=5", "--dry-run"]), Ok(expected));
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        let cases: [(&[&str], OptionsError); 6] = [
            (&["--give-up-after"], OptionsError::MissingValue),
            (
                &["--give-up-after", "0"],
                OptionsError::NotSeconds("0".into()),
            ),
            (
                &["--give-up-after=1.5"],
                OptionsError::NotSeconds("1.5".into()),
            ),
            (
                &["--give-up-after", "-3"],
                OptionsError::NotSeconds("-3".into()),
            ),
            (
                &["--dry-run=yes"],
                OptionsError::Unknown("--dry-run=yes".into()),
            ),
            (&["--all"], OptionsError::Unknown("--all".into())),
        ];
        for (args, error) in cases {
            assert_eq!(parse(args), Err(error), "{args:?}");
        }
    }
}
