//! `omnichat-bridge redrive --quarantine`: asks the bridge running beside it to re-drive its
//! spool's quarantine (the bridge holds the spool's lock, so it does the work; see
//! [`crate::spool::quarantine`]). Plain HTTP/1.0 to the admin port: the runtime image has no
//! curl, and `kubectl exec` reaches the pod's loopback.

use std::io::{Read, Write};
use std::time::Duration;

use super::Summary;

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

/// Asks the bridge whose admin address is `admin` (its `BRIDGE_ADMIN_ADDR`; the port is what
/// counts, the request goes to 127.0.0.1).
pub fn ask(admin: &str, dry_run: bool) -> (Summary, Result<(), String>) {
    let port = admin.rsplit(':').next().unwrap_or("9090");
    let path = match dry_run {
        true => "/quarantine/redrive?dryRun=true",
        false => "/quarantine/redrive",
    };
    let answer = (|| -> std::io::Result<String> {
        let address = format!("127.0.0.1:{port}")
            .parse()
            .map_err(|_| std::io::Error::other(format!("bad admin port `{port}`")))?;
        let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(ANSWER_WITHIN))?;
        write!(stream, "POST {path} HTTP/1.0\r\nContent-Length: 0\r\n\r\n")?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    })();
    let answer = match answer {
        Ok(answer) => answer,
        Err(error) => {
            return (
                Summary::default(),
                Err(format!("no bridge answers on 127.0.0.1:{port}: {error}")),
            );
        }
    };
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    match serde_json::from_str::<Answer>(body) {
        Ok(Answer {
            summary,
            error: None,
        }) => (summary, Ok(())),
        Ok(Answer {
            summary,
            error: Some(error),
        }) => (summary, Err(error)),
        Err(_) => (
            Summary::default(),
            Err(format!(
                "the bridge answered: {}",
                answer.lines().next().unwrap_or_default()
            )),
        ),
    }
}
