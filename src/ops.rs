//! Operations: liveness, readiness and Prometheus metrics on the admin port, never the public
//! one.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix_web::{HttpResponse, web};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use serde_json::json;

use crate::config::Topics;
use crate::omnichat::{Action, Resource};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    topic: String,
    resource: String,
    event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: String,
}

/// The bridge's metrics, all prefixed `omnichat_bridge_`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<StatusLabels, Counter>,
    request_duration: Histogram,
    events: Family<EventLabels, Counter>,
    /// The nine documented resource × event counters, created once so the hot path does not
    /// build label strings: `[resource][event]`, Message/Interaction/Order × CREATE/UPDATE/DELETE.
    known_events: [[Counter; 3]; 3],
    dead_letters: Family<CodeLabels, Counter>,
    publish_latency: Histogram,
    pub in_flight: Gauge,
    pub queue_depth: Gauge,
    pub kafka_up: Gauge,
}

/// Seconds; from well under a millisecond to the longest default publish deadline.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Metrics {
    pub fn new(topics: &Topics) -> Self {
        let mut registry = Registry::with_prefix("omnichat_bridge");
        let requests = Family::<StatusLabels, Counter>::default();
        registry.register(
            "http_requests",
            "Webhook requests answered, by status",
            requests.clone(),
        );
        let request_duration = Histogram::new(LATENCY_BUCKETS);
        registry.register(
            "http_request_duration_seconds",
            "Time from a webhook request's arrival to its answer",
            request_duration.clone(),
        );
        let events = Family::<EventLabels, Counter>::default();
        registry.register(
            "events",
            "Events stored, by topic, resource and event",
            events.clone(),
        );
        let dead_letters = Family::<CodeLabels, Counter>::default();
        registry.register(
            "dead_letters",
            "Bodies dead-lettered, by error code",
            dead_letters.clone(),
        );
        let publish_latency = Histogram::new(LATENCY_BUCKETS);
        registry.register(
            "publish_duration_seconds",
            "Time from handing a record to the producer to the broker's acknowledgement",
            publish_latency.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "in_flight_requests",
            "Webhook requests being handled",
            in_flight.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "producer_queue_depth",
            "Records handed to the producer and not yet acknowledged",
            queue_depth.clone(),
        );
        let kafka_up = Gauge::default();
        registry.register(
            "kafka_up",
            "1 when the last probe reached Kafka and found every topic, else 0",
            kafka_up.clone(),
        );
        registry.register(
            "build",
            "Build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let known_events = [
            (&topics.messages, "Message"),
            (&topics.interactions, "Interaction"),
            (&topics.orders, "Order"),
        ]
        .map(|(topic, resource)| {
            ["CREATE", "UPDATE", "DELETE"].map(|event| {
                events
                    .get_or_create(&EventLabels {
                        topic: topic.to_string(),
                        resource: resource.to_owned(),
                        event: event.to_owned(),
                    })
                    .clone()
            })
        });
        Self {
            registry,
            known_events,
            requests,
            request_duration,
            events,
            dead_letters,
            publish_latency,
            in_flight,
            queue_depth,
            kafka_up,
        }
    }

    pub fn observe_request(&self, status: u16, took: Duration) {
        self.requests.get_or_create(&StatusLabels { status }).inc();
        self.request_duration.observe(took.as_secs_f64());
    }

    pub fn observe_event(
        &self,
        topic: &str,
        resource: &Resource<'_>,
        action: &Action<'_>,
        took: Duration,
    ) {
        let resource_index = match resource {
            Resource::Message => Some(0),
            Resource::Interaction => Some(1),
            Resource::Order => Some(2),
            Resource::Other(_) => None,
        };
        let action_index = match action {
            Action::Create => Some(0),
            Action::Update => Some(1),
            Action::Delete => Some(2),
            Action::Other(_) => None,
        };
        match (resource_index, action_index) {
            (Some(r), Some(a)) => {
                self.known_events[r][a].inc();
            }
            _ => {
                self.events
                    .get_or_create(&EventLabels {
                        topic: topic.to_owned(),
                        resource: resource.as_str().to_owned(),
                        event: action.as_str().to_owned(),
                    })
                    .inc();
            }
        }
        self.publish_latency.observe(took.as_secs_f64());
    }

    pub fn observe_dead_letter(&self, code: &str) {
        self.dead_letters
            .get_or_create(&CodeLabels {
                code: code.to_owned(),
            })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// What readiness is decided from.
#[derive(Debug)]
pub struct Health {
    draining: AtomicBool,
    /// The last probe's verdict on Kafka: `None` until the first probe finishes.
    kafka: Mutex<Option<Result<(), String>>>,
    queue_full: AtomicBool,
    fatal: Mutex<Option<String>>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            draining: AtomicBool::new(false),
            kafka: Mutex::new(None),
            queue_full: AtomicBool::new(false),
            fatal: Mutex::new(None),
        }
    }
}

impl Health {
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Records a probe result; returns whether the verdict changed, so it is logged once.
    pub fn set_kafka(&self, verdict: Result<(), String>) -> bool {
        let mut kafka = self.kafka.lock().unwrap_or_else(|e| e.into_inner());
        let changed = kafka.as_ref().map(Result::is_ok) != Some(verdict.is_ok());
        *kafka = Some(verdict);
        changed
    }

    pub fn set_queue_full(&self, full: bool) {
        self.queue_full.store(full, Ordering::SeqCst);
    }

    pub fn set_fatal(&self, reason: String) {
        *self.fatal.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
    }

    /// `Ok` while the process can still do its job; else why it must be restarted.
    pub fn liveness(&self) -> Result<(), String> {
        match &*self.fatal.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(reason) => Err(format!("the Kafka producer failed fatally: {reason}")),
            None => Ok(()),
        }
    }

    /// `Ok` when the bridge should get traffic, else the reason it should not.
    pub fn readiness(&self) -> Result<(), String> {
        self.liveness()?;
        if self.is_draining() {
            return Err("shutting down".to_owned());
        }
        if self.queue_full.load(Ordering::SeqCst) {
            return Err("the producer queue is at its limit".to_owned());
        }
        match &*self.kafka.lock().unwrap_or_else(|e| e.into_inner()) {
            None => Err("Kafka has not been probed yet".to_owned()),
            Some(verdict) => verdict.clone(),
        }
    }
}

/// Registers the admin routes.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .default_service(web::to(|| async {
            HttpResponse::NotFound().json(json!({"error": {
                "code": "not_found",
                "message": "the admin port serves GET /healthz, /readyz and /metrics"
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
    match health.readiness() {
        Ok(()) => HttpResponse::Ok().json(json!({"status": "ready"})),
        Err(reason) => HttpResponse::ServiceUnavailable()
            .json(json!({"status": "not_ready", "reason": reason})),
    }
}

async fn metrics(metrics: web::Data<Metrics>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(metrics.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_kafka_is_probed_usable_and_not_draining() {
        let health = Health::default();
        assert!(
            health.readiness().is_err(),
            "not ready before the first probe"
        );
        assert!(health.set_kafka(Ok(())), "first verdict is a change");
        assert_eq!(health.readiness(), Ok(()));
        assert!(!health.set_kafka(Ok(())), "same verdict is not a change");
        assert!(health.set_kafka(Err("topics do not exist: a".into())));
        assert_eq!(health.readiness(), Err("topics do not exist: a".into()));
        health.set_kafka(Ok(()));
        health.set_queue_full(true);
        assert!(health.readiness().is_err());
        health.set_queue_full(false);
        health.start_draining();
        assert_eq!(health.readiness(), Err("shutting down".into()));
        assert_eq!(health.liveness(), Ok(()), "draining is alive");
    }

    #[test]
    fn a_fatal_producer_error_fails_liveness_and_readiness() {
        let health = Health::default();
        health.set_kafka(Ok(()));
        health.set_fatal("Fatal: out of order sequence".into());
        assert!(health.liveness().is_err());
        assert!(health.readiness().is_err());
    }
}
