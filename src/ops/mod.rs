//! Operations: liveness, readiness and Prometheus metrics on the admin port, never the public
//! one, and the quarantine's re-drive.

pub mod client;
mod health;
mod metrics;

pub use health::{Health, NotReady, SpoolProbe};
pub use metrics::Metrics;

use actix_web::error::{InternalError, QueryPayloadError};
use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use crate::backend::Backend;
use crate::event::Normalizer;

/// Registers the admin routes. Like the public port, an unknown path is 404 and a method a
/// path does not serve 405 naming the one it does, each with the error object.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .app_data(web::QueryConfig::default().error_handler(invalid_query))
        .service(declared("/healthz", "GET").route(web::get().to(healthz)))
        .service(declared("/readyz", "GET").route(web::get().to(readyz)))
        .service(declared("/metrics", "GET").route(web::get().to(metrics)))
        .service(declared("/quarantine/redrive", "POST").route(web::post().to(redrive_quarantine)))
        .default_service(web::to(|| async {
            failure(
                StatusCode::NOT_FOUND,
                "not_found",
                "the admin port serves GET /healthz, /readyz and /metrics, and POST /quarantine/redrive",
            )
        }));
}

/// An admin path that answers every method but `allow` with 405.
fn declared(path: &'static str, allow: &'static str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move || async move {
        let mut response = failure(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            &format!("{path} takes {allow} only"),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static(allow));
        response
    }))
}

/// The contract's error object, as the public port answers it.
fn failure(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({"error": {"code": code, "message": message}}))
}

/// actix answers a query it cannot read with plain text; the admin port answers the error
/// object, like every other failure.
fn invalid_query(error: QueryPayloadError, _: &HttpRequest) -> actix_web::Error {
    let cause = match &error {
        QueryPayloadError::Deserialize(cause) => cause.to_string(),
        other => other.to_string(),
    };
    let message =
        format!("the query string is not valid ({cause}): `dryRun` takes `true` or `false`, once");
    let response = failure(StatusCode::BAD_REQUEST, "invalid_parameter", &message);
    InternalError::from_response(error, response).into()
}

async fn healthz(health: web::Data<Health>) -> HttpResponse {
    match health.liveness() {
        Ok(()) => HttpResponse::Ok().json(json!({"status": "alive"})),
        Err(reason) => HttpResponse::ServiceUnavailable()
            .json(json!({"status": "failed", "reason": reason.to_string()})),
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
        return failure(
            StatusCode::NOT_FOUND,
            "no_quarantine",
            "there is no quarantine: the bridge runs with BRIDGE_ACK_MODE=kafka",
        );
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
        body.insert(
            "error".to_owned(),
            json!(result.err().map(|e| e.to_string())),
        );
    }
    response.json(body)
}
