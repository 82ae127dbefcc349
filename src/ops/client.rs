//! A client for this host's admin port, for the commands an operator runs in the pod:
//! plain HTTP/1.0 over loopback, since the runtime image has no curl.

use std::io::{Read, Write};
use std::time::Duration;

/// The port of `BRIDGE_ADMIN_ADDR` (`0.0.0.0:9090` when unset); the request goes to
/// 127.0.0.1, where the bridge listens whatever address it bound.
pub fn admin_port() -> String {
    let admin = std::env::var("BRIDGE_ADMIN_ADDR").unwrap_or_else(|_| "0.0.0.0:9090".to_owned());
    admin.rsplit(':').next().unwrap_or("9090").to_owned()
}

/// Why the admin port gave no answer to read.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("`{0}` is not a port")]
    NotAPort(String),
    #[error("no bridge answers on 127.0.0.1:{port}: {source}")]
    NoAnswer {
        port: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not an HTTP answer: {0}")]
    NotHttp(String),
}

/// Sends `method path` to 127.0.0.1:`port` and returns the status and the body.
pub fn call(
    port: &str,
    method: &str,
    path: &str,
    wait: Duration,
) -> Result<(u16, String), ClientError> {
    let address: std::net::SocketAddr = format!("127.0.0.1:{port}")
        .parse()
        .map_err(|_| ClientError::NotAPort(port.to_owned()))?;
    let exchange = || -> std::io::Result<String> {
        let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(wait))?;
        write!(
            stream,
            "{method} {path} HTTP/1.0\r\nContent-Length: 0\r\n\r\n"
        )?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    };
    let answer = exchange().map_err(|source| ClientError::NoAnswer {
        port: port.to_owned(),
        source,
    })?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| ClientError::NotHttp(head.lines().next().unwrap_or_default().to_owned()))?;
    Ok((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;

    use super::*;

    /// A one-shot server that answers `answer` to whatever it is asked, and what it was asked.
    fn answering(answer: &'static str) -> (String, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port().to_string();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut asked = [0u8; 256];
            let n = stream.read(&mut asked).expect("read");
            stream.write_all(answer.as_bytes()).expect("write");
            String::from_utf8_lossy(&asked[..n]).into_owned()
        });
        (port, server)
    }

    #[test]
    fn reads_the_status_and_body_of_the_admin_port_answer() {
        let (port, server) =
            answering("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n\r\n{}");
        let answer = call(&port, "GET", "/readyz", Duration::from_secs(2));
        assert_eq!(answer.expect("answered"), (503, "{}".to_owned()));
        assert!(
            server
                .join()
                .expect("server")
                .starts_with("GET /readyz HTTP/1.0\r\n")
        );
    }

    #[test]
    fn no_listener_and_no_http_are_errors_naming_the_port() {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port()
            .to_string();
        let error = call(&port, "GET", "/readyz", Duration::from_secs(1)).expect_err("closed");
        assert!(error.to_string().contains(&port), "{error}");
        let (port, _server) = answering("SSH-2.0-OpenSSH\r\n\r\n");
        assert!(call(&port, "GET", "/readyz", Duration::from_secs(2)).is_err());
    }
}
