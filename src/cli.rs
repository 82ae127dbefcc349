//! The command line. With no argument the process runs the bridge; `check-config`,
//! `healthcheck`, `redrive` and `drain` are the operator's tools, configured by the same
//! variables. Exit codes: 0 done, 1 failed (Kafka, a check), 2 bad settings or options (and
//! for `drain`, a spool it may not open).

mod quarantine;

use std::process::ExitCode;
use std::time::Duration;

use crate::config::Settings;
use crate::ops::client;
use crate::redrive::options::{Options, Source};
use crate::shutdown::shutdown_signal;
use crate::startup::{self, check_kafka};
use crate::telemetry;

pub const USAGE: &str =
    "usage: omnichat-bridge [check-config | healthcheck | redrive [OPTIONS] | drain [OPTIONS]]

Configured only by environment variables (see the README).
  (no argument)   run the bridge
  check-config    validate the settings, connect to Kafka, check the topics exist,
                  print the effective settings (secrets redacted); exit 0 or 1
  healthcheck     exit 0 when the running bridge's /readyz answers 200 (for container
                  health checks in images without a shell)
  redrive         re-drive dead letters through today's normalization (redrive --help)
  drain           forward a spool no bridge runs on (BRIDGE_SPOOL_DIR) to Kafka, then exit;
                  exit 1 if Kafka takes nothing for 30 s, 2 while a bridge holds the spool
                  (drain --help)";

/// Runs the command `args` names (the arguments after the program's name).
pub async fn main(args: Vec<String>) -> ExitCode {
    match args.first().map(String::as_str) {
        None => serve().await,
        Some("check-config") => check_config(),
        Some("healthcheck") => healthcheck(),
        Some("redrive") => redrive(args[1..].to_vec()).await,
        Some("drain") => drain(args[1..].to_vec()).await,
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

/// Runs the bridge until SIGTERM or SIGINT. A setting, producer property, spool or listener
/// that cannot be used is the one line on stderr: logging starts only once the producer
/// exists (librdkafka checks every `KAFKA_*` property as it is created).
async fn serve() -> ExitCode {
    let settings = match settings() {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    let app = startup::boot(settings, |settings| {
        telemetry::init(settings.log_format);
        for warning in settings.warnings() {
            tracing::warn!("{warning}");
        }
    });
    let app = match app {
        Ok(app) => app,
        Err(error) => {
            eprintln!("omnichat-bridge: {error}");
            return ExitCode::from(2);
        }
    };
    tracing::info!(
        settings = ?app.effective_settings(),
        port = app.port(),
        admin_port = app.admin_port(),
        "omnichat-bridge {} listening",
        env!("CARGO_PKG_VERSION")
    );
    match app.run_until_stopped(shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %error, "Server failed");
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
    if let Err(error) = startup::check_settings(&settings) {
        eprintln!("omnichat-bridge: {error}");
        return ExitCode::FAILURE;
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

/// Exit 0 when this host's bridge answers `/readyz` with 200.
fn healthcheck() -> ExitCode {
    match client::call(
        &client::admin_port(),
        "GET",
        "/readyz",
        Duration::from_secs(2),
    ) {
        Ok((200, _)) => ExitCode::SUCCESS,
        Ok((status, body)) => {
            eprintln!("not ready ({status}): {body}");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("not ready: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Re-drives dead letters (see [`crate::redrive`]): prints what it would do on a dry run, then
/// a summary; exits 0 when it got to the end, 1 when it stopped early, 2 on bad options or
/// settings.
async fn redrive(args: Vec<String>) -> ExitCode {
    use crate::redrive::options::USAGE;
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
    let (summary, result): (_, Result<(), Box<dyn std::error::Error>>) = match &options.source {
        Source::Topic(range) => {
            let settings = match settings() {
                Ok(settings) => settings,
                Err(code) => return code,
            };
            let mut out = std::io::stdout();
            let (summary, result) =
                crate::redrive::topic::run(&settings, &options, range, &mut out).await;
            (summary, result.map_err(Into::into))
        }
        Source::Quarantine => {
            let port = client::admin_port();
            let dry_run = options.dry_run;
            match tokio::task::spawn_blocking(move || quarantine::ask(&port, dry_run)).await {
                Ok((summary, result)) => (summary, result.map_err(Into::into)),
                Err(interrupted) => (Default::default(), Err(interrupted.into())),
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

/// Drains a spool no bridge runs on (see [`crate::drain`]): prints the summary (or, on a dry
/// run, what the spool holds); exits 0 once the spool is empty, 1 when it stopped with records
/// left, 2 when it did nothing (bad options or settings, the spool locked or refused).
async fn drain(args: Vec<String>) -> ExitCode {
    use crate::drain::{Options, Report, USAGE};
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let options = match Options::parse(args) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("omnichat-bridge drain: {error}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let settings = match settings() {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    let start_logging = |settings: &Settings| {
        telemetry::init(settings.log_format);
        for warning in settings.warnings() {
            tracing::warn!("{warning}");
        }
    };
    match crate::drain::run(&settings, &options, start_logging, shutdown_signal()).await {
        Err(error) => {
            eprintln!("omnichat-bridge drain: {error}");
            ExitCode::from(2)
        }
        Ok(Report::Counted(backlog)) => {
            println!("{backlog}");
            ExitCode::SUCCESS
        }
        Ok(Report::Ran { summary, stopped }) => {
            println!("{summary}");
            let Some(stopped) = stopped else {
                return ExitCode::SUCCESS;
            };
            eprintln!(
                "omnichat-bridge drain: {stopped}; {} records left, run drain again to go on",
                summary.left
            );
            ExitCode::FAILURE
        }
    }
}
