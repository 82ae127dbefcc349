//! Operations: liveness, readiness and Prometheus metrics on the admin port, never the public
//! one, and the quarantine's re-drive.

pub mod client;
mod health;
mod metrics;

pub use health::{Health, NotReady, SpoolProbe};
pub use metrics::Metrics;

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::backend::Backend;
use crate::event::Normalizer;

/// Registers the admin routes.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .route("/quarantine/redrive", web::post().to(redrive_quarantine))
        .default_service(web::to(|| async {
            HttpResponse::NotFound().json(json!({"error": {
                "code": "not_found",
                "message": "the admin port serves GET /healthz, /readyz and /metrics, and POST /quarantine/redrive"
            }}))
        }));
}

async fn healthz(health: web::Data<Health>) -> HttpResponse {
    match health.liveness() {
        Ok(()) => HttpResponse::Ok().json(json!({"status": "alive"})),
        Err(reason) => {
            HttpResponse::ServiceUnavailable().json(json!({"status": "failed", "reason": reason}))
        }
    }
}

async fn readyz(health: web::Data<Health>) -> HttpResponse {
    let (mut response, mut body) = match health.readiness() {
        Ok(()) => (HttpResponse::Ok(), json!({"status": "ready"})),
        Err(not_ready) => (
            HttpResponse::ServiceUnavailable(),
            json!({"status": "not_ready", "code": not_ready.code(), "reason": not_ready.to_string()}),
        ),
    };
    if let Some(body) = body.as_object_mut() {
        if let Some(details) = health.details()
            && let Some(details) = details.as_object()
        {
            body.extend(details.clone());
        }
        body.insert("conditions".to_owned(), health.conditions());
    }
    response.json(body)
}

async fn metrics(metrics: web::Data<Metrics>, health: web::Data<Health>) -> HttpResponse {
    if let Some(spool) = health.spool_status() {
        metrics.observe_spool(&spool);
    }
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(metrics.render())
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RedriveQuery {
    #[serde(default)]
    dry_run: bool,
}

/// Re-drives the spool's quarantine (see `crate::spool::quarantine`): 200 with the summary
/// when it got to the end, 503 with the summary and why it stopped, 404 in kafka mode.
async fn redrive_quarantine(
    backend: web::Data<Backend>,
    normalizer: web::Data<Normalizer>,
    query: web::Query<RedriveQuery>,
) -> HttpResponse {
    let Some(spool) = backend.spool() else {
        return HttpResponse::NotFound().json(json!({"error": {
            "code": "no_quarantine",
            "message": "there is no quarantine: the bridge runs with BRIDGE_ACK_MODE=kafka"
        }}));
    };
    let (summary, result) = spool.redrive_quarantine(&normalizer, query.dry_run).await;
    tracing::info!(
        read = summary.read,
        redriven = summary.redriven,
        still_failing = summary.still_failing_total(),
        dry_run = query.dry_run,
        "Quarantine re-driven"
    );
    let mut body = json!(summary);
    let mut response = match &result {
        Ok(()) => HttpResponse::Ok(),
        Err(_) => HttpResponse::ServiceUnavailable(),
    };
    if let Some(body) = body.as_object_mut() {
        body.insert("error".to_owned(), json!(result.err()));
    }
    response.json(body)
}
