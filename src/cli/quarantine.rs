//! `omnichat-bridge redrive --quarantine`: asks the bridge running beside it to re-drive its
//! spool's quarantine (the bridge holds the spool's lock, so it does the work; see
//! `spool::quarantine`). Plain HTTP/1.0 to the admin port: the runtime image has no
//! curl, and `kubectl exec` reaches the pod's loopback.

use std::time::Duration;

use crate::ops::client::ClientError;
use crate::redrive::Summary;

/// Why the running bridge's re-drive of its quarantine did not get to the end.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error(transparent)]
    Admin(#[from] ClientError),
    /// The bridge stopped, and said why.
    #[error("{0}")]
    Bridge(String),
    #[error("the bridge answered {status}: {body}")]
    Unexpected { status: u16, body: String },
}

/// A large quarantine takes a while: every record is fsynced into the spool.
const ANSWER_WITHIN: Duration = Duration::from_secs(600);

/// The admin port's answer to a re-drive.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    #[serde(flatten)]
    summary: Summary,
    error: Option<String>,
}

/// Asks the bridge listening on this host's admin `port`.
pub fn ask(port: &str, dry_run: bool) -> (Summary, Result<(), AskError>) {
    let path = match dry_run {
        true => "/quarantine/redrive?dryRun=true",
        false => "/quarantine/redrive",
    };
    let (status, body) = match crate::ops::client::call(port, "POST", path, ANSWER_WITHIN) {
        Ok(answer) => answer,
        Err(error) => return (Summary::default(), Err(error.into())),
    };
    match serde_json::from_str::<Answer>(&body) {
        Ok(Answer {
            summary,
            error: None,
        }) => (summary, Ok(())),
        Ok(Answer {
            summary,
            error: Some(error),
        }) => (summary, Err(AskError::Bridge(error))),
        Err(_) => (
            Summary::default(),
            Err(AskError::Unexpected { status, body }),
        ),
    }
}
