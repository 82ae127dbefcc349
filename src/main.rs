use std::process::ExitCode;
use std::time::Duration;

use omnichat_bridge::config::Settings;
use omnichat_bridge::startup::{Application, check_kafka, shutdown_signal};
use omnichat_bridge::telemetry;

const USAGE: &str = "usage: omnichat-bridge [check-config]

Configured only by environment variables (see the README).
  (no argument)   run the bridge
  check-config    validate the settings, connect to Kafka, check the topics exist,
                  print the effective settings (secrets redacted); exit 0 or 1";

#[tokio::main]
async fn main() -> ExitCode {
    let command = std::env::args().nth(1);
    match command.as_deref() {
        None => run().await,
        Some("check-config") => check_config(),
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
    telemetry::init(settings.log_format);
    for warning in settings.warnings() {
        tracing::warn!("{warning}");
    }
    let effective: std::collections::BTreeMap<_, _> = settings.effective().into_iter().collect();
    tracing::info!(settings = ?effective, "Starting omnichat-bridge {}", env!("CARGO_PKG_VERSION"));

    let app = match Application::build(settings) {
        Ok(app) => app,
        Err(error) => {
            eprintln!("omnichat-bridge: {error}");
            return ExitCode::from(2);
        }
    };
    tracing::info!(
        port = app.port(),
        admin_port = app.admin_port(),
        "Listening"
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
