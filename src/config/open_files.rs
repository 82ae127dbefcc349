//! The process's open-files limit against the connections it may accept: each connection is a
//! file descriptor, and the spool's segments, librdkafka's sockets and the listeners need some
//! too. Past the limit, accepting fails with EMFILE and so does opening a spool segment.

use super::ConfigError;
use super::variables::MAX_CONNECTIONS;

/// Descriptors the bridge needs besides its client connections: listeners, admin connections,
/// librdkafka's sockets and wake-up pipes per broker, the spool's files, the runtime's own.
pub const BESIDES_CONNECTIONS: u64 = 256;

/// Refuses `max_connections` when the process may open fewer files than they and the rest need.
pub fn check(max_connections: usize) -> Result<(), ConfigError> {
    match soft_limit() {
        Some(limit) => fits(max_connections as u64, limit),
        None => Ok(()),
    }
}

fn fits(max_connections: u64, limit: u64) -> Result<(), ConfigError> {
    let needed = max_connections + BESIDES_CONNECTIONS;
    if needed <= limit {
        return Ok(());
    }
    Err(ConfigError::new(
        MAX_CONNECTIONS.name,
        format!(
            "{max_connections} connections need about {needed} open files, but this process may \
             open {limit} (`ulimit -n`); raise the limit or set at most {}",
            limit.saturating_sub(BESIDES_CONNECTIONS)
        ),
    ))
}

/// The soft `Max open files` limit from /proc/self/limits (Linux); `None` where unknown or
/// unlimited.
fn soft_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_soft_limit(&limits)
}

fn parse_soft_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_soft_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max open files            1024                 524288               files
";
        assert_eq!(parse_soft_limit(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_soft_limit(unlimited), None);
        assert!(
            soft_limit().is_some(),
            "this machine's own limit is readable"
        );
    }

    #[test]
    fn connections_and_the_rest_must_fit_under_the_limit() {
        assert!(fits(512, 1024).is_ok());
        assert!(fits(768, 1024).is_ok());
        let error = fits(769, 1024).expect_err("one over");
        assert_eq!(error.variable, "BRIDGE_MAX_CONNECTIONS");
        assert!(error.to_string().contains("set at most 768"), "{error}");
    }
}
