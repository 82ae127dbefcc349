//! `omnichat-bridge redrive`'s options.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub const USAGE: &str = "usage: omnichat-bridge redrive [--all] [--since TIME] [--until TIME]
                               [--offsets FROM..TO] [--group NAME] [--dry-run]
       omnichat-bridge redrive --quarantine [--dry-run]

Re-drives dead letters through today's normalization to their event topics, configured by the
bridge's own environment variables (see the README).
  (no option)      the dead letters earlier runs have not seen (the group's committed position)
  --all            every dead letter the topic still holds
  --since TIME     dead letters written at or after TIME (RFC 3339), by record timestamp
  --until TIME     dead letters written before TIME (RFC 3339)
  --offsets A..B   offsets A (inclusive) to B (exclusive) of every partition; either may be empty
  --group NAME     consumer group that keeps the position (default omnichat-bridge-redrive)
  --dry-run        publish and commit nothing; print what would happen to each dead letter
  --quarantine     ask the bridge running on this host (BRIDGE_ADMIN_ADDR) to re-drive its
                   spool's quarantine";

pub const DEFAULT_GROUP: &str = "omnichat-bridge-redrive";

/// Which dead letters a run looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub source: Source,
    pub dry_run: bool,
    pub group: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The dead-letter topic, from where the group stopped, or over a range.
    Topic(Range),
    /// The spool's quarantine, through the running bridge's admin port.
    Quarantine,
}

/// Where to start and what to keep. An empty range (the default) starts at the group's
/// committed position; `--all` at the beginning; both commit where they end, only forward. Any
/// other bound reads from the beginning, skips what is outside it, and commits nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Range {
    pub all: bool,
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
    pub from_offset: Option<i64>,
    pub to_offset: Option<i64>,
}

impl Range {
    /// Whether the run starts from the group's committed position.
    pub fn follows_group(&self) -> bool {
        *self == Range::default()
    }

    /// Whether the run commits where it ended: plain and `--all` runs; a bounded range would
    /// hide the dead letters it skipped from the next plain run.
    pub fn keeps_position(&self) -> bool {
        self.follows_group()
            || *self
                == Range {
                    all: true,
                    ..Range::default()
                }
    }

    /// Whether a record at `offset` written at `timestamp_ms` is in the range.
    pub fn holds(&self, offset: i64, timestamp_ms: Option<i64>) -> bool {
        let at = timestamp_ms.map(|ms| i128::from(ms) * 1_000_000);
        let after_since = match (self.since, at) {
            (Some(since), Some(at)) => at >= since.unix_timestamp_nanos(),
            (Some(_), None) => false,
            (None, _) => true,
        };
        let before_until = match (self.until, at) {
            (Some(until), Some(at)) => at < until.unix_timestamp_nanos(),
            (Some(_), None) => false,
            (None, _) => true,
        };
        after_since
            && before_until
            && self.from_offset.is_none_or(|from| offset >= from)
            && self.to_offset.is_none_or(|to| offset < to)
    }
}

impl Options {
    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Self, String> {
        let mut range = Range::default();
        let mut dry_run = false;
        let mut quarantine = false;
        let mut group = DEFAULT_GROUP.to_owned();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
            match arg.as_str() {
                "--all" => range.all = true,
                "--dry-run" => dry_run = true,
                "--quarantine" => quarantine = true,
                "--since" => range.since = Some(time_value("--since", &value("--since")?)?),
                "--until" => range.until = Some(time_value("--until", &value("--until")?)?),
                "--offsets" => {
                    let text = value("--offsets")?;
                    let (from, to) = text
                        .split_once("..")
                        .ok_or_else(|| format!("--offsets must be FROM..TO, got `{text}`"))?;
                    range.from_offset = offset_value(from)?;
                    range.to_offset = offset_value(to)?;
                }
                "--group" => {
                    group = value("--group")?;
                    if group.trim().is_empty() {
                        return Err("--group must not be empty".to_owned());
                    }
                }
                other => return Err(format!("unknown option `{other}`")),
            }
        }
        if let (Some(from), Some(to)) = (range.from_offset, range.to_offset)
            && from >= to
        {
            return Err(format!(
                "--offsets {from}..{to} holds no offset (FROM is inclusive, TO exclusive)"
            ));
        }
        if let (Some(since), Some(until)) = (range.since, range.until)
            && since >= until
        {
            return Err("--since must be before --until, or no dead letter is in the range".into());
        }
        let source = if quarantine {
            if range != Range::default() {
                return Err(
                    "--quarantine takes no range: it re-drives the whole quarantine".into(),
                );
            }
            Source::Quarantine
        } else {
            Source::Topic(range)
        };
        Ok(Self {
            source,
            dry_run,
            group,
        })
    }
}

fn time_value(name: &str, text: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
        format!("{name} must be an RFC 3339 time such as 2026-11-26T10:00:00Z, got `{text}`")
    })
}

fn offset_value(text: &str) -> Result<Option<i64>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse::<i64>()
        .ok()
        .filter(|offset| *offset >= 0)
        .map(Some)
        .ok_or_else(|| format!("--offsets bounds must be offsets (0 or more), got `{text}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, String> {
        Options::parse(args.iter().map(|a| (*a).to_owned()))
    }

    #[test]
    fn no_option_follows_the_group() {
        let options = parse(&[]).expect("parses");
        assert_eq!(options.source, Source::Topic(Range::default()));
        assert!(matches!(options.source, Source::Topic(r) if r.follows_group()));
        assert_eq!(options.group, DEFAULT_GROUP);
        let keeps = |args: &[&str]| match parse(args).expect("parses").source {
            Source::Topic(range) => range.keeps_position(),
            Source::Quarantine => unreachable!(),
        };
        assert!(keeps(&[]) && keeps(&["--all"]) && keeps(&["--all", "--dry-run"]));
        assert!(!keeps(&["--all", "--since", "2026-11-26T10:00:00Z"]));
        assert!(!keeps(&["--offsets", "3.."]));
    }

    #[test]
    fn ranges_bound_by_time_and_offset() {
        let options = parse(&[
            "--since",
            "2026-11-26T10:00:00Z",
            "--offsets",
            "5..",
            "--dry-run",
        ]);
        let Ok(Options {
            source: Source::Topic(range),
            dry_run: true,
            ..
        }) = options
        else {
            panic!("{options:?}");
        };
        assert!(!range.follows_group());
        let ten = 1_795_687_200_000; // 2026-11-26T10:00:00Z
        assert!(range.holds(5, Some(ten)));
        assert!(!range.holds(4, Some(ten)));
        assert!(!range.holds(5, Some(ten - 1)));
        assert!(!range.holds(5, None));
        let until = parse(&["--until", "2026-11-26T10:00:00Z"]).expect("parses");
        let Source::Topic(until) = until.source else {
            panic!()
        };
        assert!(until.holds(0, Some(ten - 1)) && !until.holds(0, Some(ten)));
    }

    #[test]
    fn a_bad_option_is_named() {
        for (args, names) in [
            (&["--since", "yesterday"][..], "--since"),
            (&["--offsets", "5"][..], "--offsets"),
            (&["--offsets", "a..b"][..], "--offsets"),
            (&["--group"][..], "--group"),
            (&["--everything"][..], "--everything"),
            (&["--quarantine", "--all"][..], "--quarantine"),
            // Empty ranges: they would read the whole topic to re-drive nothing.
            (&["--offsets", "10..5"][..], "--offsets"),
            (&["--offsets", "7..7"][..], "--offsets"),
            (
                &[
                    "--since",
                    "2026-11-27T00:00:00Z",
                    "--until",
                    "2026-11-26T00:00:00Z",
                ][..],
                "--since",
            ),
        ] {
            let error = parse(args).expect_err("refused");
            assert!(error.contains(names), "{args:?}: {error}");
        }
    }
}
