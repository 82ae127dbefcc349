use std::process::ExitCode;
use std::time::Duration;

use omnichat_bridge::config::Settings;
use omnichat_bridge::startup::{
    Application, backend, check_kafka, kafka_publisher, shutdown_signal,
};
use omnichat_bridge::telemetry;

const USAGE: &str = "usage: omnichat-bridge [check-config | healthcheck | redrive [OPTIONS]]

Configured only by environment variables (see the README).
  (no argument)   run the bridge
  check-config    validate the settings, connect to Kafka, check the topics exist,
                  print the effective settings (secrets redacted); exit 0 or 1
  healthcheck     exit 0 when the running bridge's /readyz answers 200 (for container
                  health checks in images without a shell)
  redrive         re-drive dead letters through today's normalization (redrive --help)";

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let command = std::env::args().nth(1);
    match command.as_deref() {
        None => run().await,
        Some("check-config") => check_config(),
        Some("healthcheck") => healthcheck(),
        Some("redrive") => redrive().await,
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("omnichat-bridge: unknown command `{other}`\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn settings() -> Result<Settings, ExitCode> {
    Settings::from_env().map_err(|error| {
        eprintln!("omnichat-bridge: {error}");
        ExitCode::from(2)
    })
}

async fn run() -> ExitCode {
    let settings = match settings() {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    // The producer is created before anything is logged: librdkafka checks every KAFKA_*
    // property here, and a bad one must stop the process with its one error line alone.
    let kafka = match kafka_publisher(&settings) {
        Ok(kafka) => kafka,
        Err(error) => {
            eprintln!("omnichat-bridge: {error}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(settings.log_format);
    for warning in settings.warnings() {
        tracing::warn!("{warning}");
    }
    let effective: std::collections::BTreeMap<_, _> = settings.effective().into_iter().collect();

    // In spool mode this recovers the spool, which may log what it found. Nothing else is
    // logged before it, so a spool or listener that cannot be used is the one line on stderr.
    let app = match backend(&settings, kafka)
        .and_then(|backend| Application::with_backend(settings, backend))
    {
        Ok(app) => app,
        Err(error) => {
            eprintln!("omnichat-bridge: {error}");
            return ExitCode::from(2);
        }
    };
    tracing::info!(
        settings = ?effective,
        port = app.port(),
        admin_port = app.admin_port(),
        "omnichat-bridge {} listening",
        env!("CARGO_PKG_VERSION")
    );
    match app.run_until_stopped(shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("Server failed: {error}");
            ExitCode::FAILURE
        }
    }
}

fn check_config() -> ExitCode {
    let settings = match settings() {
        Ok(settings) => settings,
        Err(_) => return ExitCode::FAILURE,
    };
    for (variable, value) in settings.effective() {
        println!("{variable}={value}");
    }
    for warning in settings.warnings() {
        println!("warning: {warning}");
    }
    match check_kafka(&settings, Duration::from_secs(10)) {
        Ok(()) => {
            println!(
                "ok: Kafka reachable at {}, all topics exist",
                settings.kafka.bootstrap_servers()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("omnichat-bridge: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Re-drives dead letters (see `omnichat_bridge::redrive`): prints what it would do on a dry
/// run, then a summary; exits 0 when it got to the end, 1 when it stopped early, 2 on bad
/// options or settings.
async fn redrive() -> ExitCode {
    use omnichat_bridge::redrive::options::{Options, Source, USAGE};
    let args: Vec<String> = std::env::args().skip(2).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let options = match Options::parse(args) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("omnichat-bridge redrive: {error}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let (summary, result) = match &options.source {
        Source::Topic(range) => {
            let settings = match settings() {
                Ok(settings) => settings,
                Err(code) => return code,
            };
            let mut out = std::io::stdout();
            omnichat_bridge::redrive::topic::run(&settings, &options, range, &mut out).await
        }
        Source::Quarantine => {
            let admin =
                std::env::var("BRIDGE_ADMIN_ADDR").unwrap_or_else(|_| "0.0.0.0:9090".to_owned());
            match tokio::task::spawn_blocking(move || {
                omnichat_bridge::redrive::quarantine::ask(&admin, options.dry_run)
            })
            .await
            {
                Ok(answer) => answer,
                Err(error) => (Default::default(), Err(error.to_string())),
            }
        }
    };
    println!("{summary}");
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("omnichat-bridge redrive: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Asks the admin port's `/readyz` with a plain HTTP/1.0 request: the runtime image has no curl.
fn healthcheck() -> ExitCode {
    use std::io::{Read, Write};
    let admin = std::env::var("BRIDGE_ADMIN_ADDR").unwrap_or_else(|_| "0.0.0.0:9090".to_owned());
    let port = admin.rsplit(':').next().unwrap_or("9090");
    let answer = (|| -> std::io::Result<String> {
        let address = format!("127.0.0.1:{port}");
        let timeout = Duration::from_secs(2);
        let addr = address
            .parse()
            .map_err(|_| std::io::Error::other(format!("bad address {address}")))?;
        let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.write_all(b"GET /readyz HTTP/1.0\r\n\r\n")?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    })();
    match answer {
        Ok(answer) if answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200") => {
            ExitCode::SUCCESS
        }
        Ok(answer) => {
            eprintln!("not ready: {}", answer.lines().last().unwrap_or_default());
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("not ready: {error}");
            ExitCode::FAILURE
        }
    }
}
