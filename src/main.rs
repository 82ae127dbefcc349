use std::process::ExitCode;

use omnichat_bridge::config::Settings;
use omnichat_bridge::startup::{Application, shutdown_signal};
use omnichat_bridge::telemetry;

#[tokio::main]
async fn main() -> ExitCode {
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
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
