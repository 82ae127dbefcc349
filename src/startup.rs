//! Builds the application from settings and runs it until a shutdown signal, then drains.

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{App, HttpServer, web};

use crate::backend::Backend;
use crate::conditions::{Condition, Conditions};
use crate::config::{AckMode, ConfigError, Settings};
use crate::event::Normalizer;
use crate::http::{self, Ingress};
use crate::ops::{self, Health, Metrics};
use crate::publish::kafka::{KafkaPublisher, KafkaUnusable, policy};
use crate::shutdown;
use crate::spool::{FORWARD_WINDOW_BYTES, FORWARD_WINDOW_RECORDS, Spool};

/// What normalization adds to a body at most (headers and the event's own fields), for the
/// spool's "room for one more event" check.
const LARGEST_EVENT_OVERHEAD: usize = 64 << 10;

/// How often readiness asks Kafka for metadata.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("KAFKA_BOOTSTRAP_SERVERS: {reason}")]
    Kafka { reason: String },
    #[error("BRIDGE_SPOOL_DIR: {0}")]
    Spool(#[from] crate::spool::segments::SpoolDirError),
    #[error("cannot listen on {variable}={addr}: {source}")]
    Listen {
        variable: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// A bound, not yet running, bridge.
pub struct Application {
    settings: Settings,
    port: u16,
    admin_port: u16,
    server: Server,
    admin: Server,
    backend: Backend,
    health: web::Data<Health>,
    metrics: web::Data<Metrics>,
    conditions: Arc<Conditions>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("port", &self.port)
            .field("admin_port", &self.admin_port)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Binds both listeners and creates the Kafka producer; in spool mode also recovers the
    /// spool and starts forwarding it.
    pub fn build(settings: Settings) -> Result<Self, StartupError> {
        boot(settings, |_| {})
    }

    /// The effective settings, secrets redacted, for the start's log line.
    pub fn effective_settings(&self) -> std::collections::BTreeMap<String, String> {
        self.settings.effective().into_iter().collect()
    }

    /// Binds both listeners around a backend (tests use this seam with a stand-in).
    pub fn with_backend(settings: Settings, backend: Backend) -> Result<Self, StartupError> {
        let listen = |variable, addr| {
            TcpListener::bind(addr).map_err(|source| StartupError::Listen {
                variable,
                addr,
                source,
            })
        };
        let listener = listen("BRIDGE_LISTEN_ADDR", settings.listen_addr)?;
        let admin_listener = listen("BRIDGE_ADMIN_ADDR", settings.admin_addr)?;
        let port = local_port(&listener);
        let admin_port = local_port(&admin_listener);

        let conditions = backend.conditions();
        let metrics = web::Data::new(Metrics::new(
            &settings.topics,
            matches!(settings.ack_mode, AckMode::Spool(_)),
            conditions.clone(),
        ));
        let spool_backend = backend.clone();
        let health = web::Data::new(Health::new(
            backend
                .spool()
                .is_some()
                .then(|| -> ops::SpoolProbe { Arc::new(move || spool_backend.spool_status()) }),
            conditions.clone(),
        ));
        let ingress = web::Data::new(Ingress::new(
            &settings,
            backend.publisher(),
            metrics.clone().into_inner(),
        ));

        // In-flight requests get what is left of the shutdown budget after the delay; the
        // flush gets the rest (see `run_until_stopped`).
        let drain_secs = settings
            .shutdown_timeout
            .saturating_sub(settings.shutdown_delay)
            .as_secs()
            .max(1);
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        let server = http::server::public(
            listener,
            ingress,
            http::server::ServerSettings {
                workers,
                connections_per_worker: settings.max_connections.div_ceil(workers).max(1),
                drain: Duration::from_secs(drain_secs),
                request_timeout: settings.request_timeout,
                max_connection_age: settings.max_connection_age,
            },
        )
        .map_err(|source| StartupError::Listen {
            variable: "BRIDGE_LISTEN_ADDR",
            addr: settings.listen_addr,
            source,
        })?;

        let admin = admin_server(&settings, admin_listener, &health, &metrics, &backend)?;

        Ok(Self {
            settings,
            port,
            admin_port,
            server,
            admin,
            backend,
            health,
            metrics,
            conditions,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// Serves until `shutdown` resolves, then runs the shutdown sequence (see
    /// [`shutdown::Sequence`]).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        let Application {
            settings,
            server,
            admin,
            backend,
            health,
            metrics,
            conditions,
            ..
        } = self;
        let server_handle = server.handle();
        let admin_handle = admin.handle();
        let mut server = tokio::spawn(server);
        let admin = tokio::spawn(admin);
        let probe = tokio::spawn(probe_kafka(
            backend.clone(),
            settings.clone(),
            health.clone().into_inner(),
            metrics.clone().into_inner(),
            conditions,
        ));

        tokio::select! {
            result = &mut server => {
                probe.abort();
                admin_handle.stop(false).await;
                return result.unwrap_or_else(|e| Err(std::io::Error::other(e)));
            }
            () = shutdown => {}
        }

        shutdown::Sequence {
            delay: settings.shutdown_delay,
            budget: settings.shutdown_timeout,
            health: &health,
            metrics: &metrics,
            backend: &backend,
        }
        .run(async {
            server_handle.stop(true).await;
            let _ = (&mut server).await;
        })
        .await;
        probe.abort();
        admin_handle.stop(false).await;
        let _ = admin.await;
        Ok(())
    }
}

/// The admin port: health, readiness, metrics and the quarantine's re-drive.
fn admin_server(
    settings: &Settings,
    listener: TcpListener,
    health: &web::Data<Health>,
    metrics: &web::Data<Metrics>,
    backend: &Backend,
) -> Result<Server, StartupError> {
    let (health, metrics) = (health.clone(), metrics.clone());
    let backend = web::Data::new(backend.clone());
    let normalizer = web::Data::new(Normalizer::new(
        settings.topics.clone(),
        settings.event_source.clone(),
    ));
    let server = HttpServer::new(move || {
        App::new()
            .app_data(health.clone())
            .app_data(metrics.clone())
            .app_data(backend.clone())
            .app_data(normalizer.clone())
            .configure(ops::routes)
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)
    .map_err(|source| StartupError::Listen {
        variable: "BRIDGE_ADMIN_ADDR",
        addr: settings.admin_addr,
        source,
    })?;
    Ok(server.run())
}

/// Boots the bridge, the one way `main` and the tests do: creates the Kafka producer (where
/// librdkafka checks every `KAFKA_*` property), calls `before_recovery` (main starts logging
/// there, so a bad property is the one line on stderr), recovers the spool in spool mode, and
/// binds both listeners.
pub fn boot(
    settings: Settings,
    before_recovery: impl FnOnce(&Settings),
) -> Result<Application, StartupError> {
    check_settings(&settings)?;
    let kafka = kafka_publisher(&settings)?;
    before_recovery(&settings);
    let backend = backend(&settings, kafka)?;
    Application::with_backend(settings, backend)
}

/// The Kafka producer the mode needs: one that answers within the publish deadline, or in
/// spool mode the forwarder's, which never gives a record up. librdkafka checks every
/// `KAFKA_*` property here.
fn kafka_publisher(settings: &Settings) -> Result<KafkaPublisher, ConfigError> {
    match settings.ack_mode {
        AckMode::Kafka => KafkaPublisher::new(&settings.kafka, settings.publish_timeout),
        AckMode::Spool(_) => KafkaPublisher::unbounded(&settings.kafka, settings.publish_timeout),
    }
}

/// What webhooks are handed to: the producer itself, or in spool mode the spool (recovered
/// from its directory, its forwarder started) in front of it.
fn backend(settings: &Settings, kafka: KafkaPublisher) -> Result<Backend, StartupError> {
    Ok(match &settings.ack_mode {
        AckMode::Kafka => Backend::Kafka(Arc::new(kafka)),
        AckMode::Spool(spool) => Backend::Spool(Arc::new(Spool::open(
            spool,
            settings.max_body_bytes + LARGEST_EVENT_OVERHEAD,
            kafka,
            settings.topics.deadletter.clone(),
            settings.publish_timeout,
            Arc::default(),
        )?)),
    })
}

/// What the settings must also satisfy before anything starts, beyond what parsing them checks:
/// this process's limits, the producer's policy, and a producer queue that holds what the bridge
/// hands it. Run at start, by `check-config` and by `drain`.
pub fn check_settings(settings: &Settings) -> Result<(), ConfigError> {
    settings.check_process_limits()?;
    policy::check(&settings.kafka)?;
    check_producer_queue(settings)
}

/// The producer's queue must hold what the bridge may hand it at once: every request in
/// flight in kafka mode, the forwarder's window in spool mode. Checked here, where the settings
/// and the spool's window are both known.
pub fn check_producer_queue(settings: &Settings) -> Result<(), ConfigError> {
    let records = FORWARD_WINDOW_RECORDS.max(settings.max_in_flight) as u64;
    settings.kafka.at_least(
        "queue.buffering.max.messages",
        records,
        "records: BRIDGE_MAX_IN_FLIGHT and the spool forwarder's window",
    )?;
    settings.kafka.at_least(
        "queue.buffering.max.kbytes",
        (FORWARD_WINDOW_BYTES / 1024) as u64,
        "KiB: the spool forwarder's window",
    )
}

/// What `omnichat-bridge check-config` verifies before a rollout: the producer can be created
/// from the settings, Kafka answers, and every configured topic exists.
pub fn check_kafka(settings: &Settings, timeout: Duration) -> Result<(), StartupError> {
    let publisher = KafkaPublisher::new(&settings.kafka, settings.publish_timeout)?;
    let topics: Vec<&str> = settings.topics.all().iter().map(|t| &***t).collect();
    publisher
        .probe(&topics, timeout)
        .map(drop)
        .map_err(|reason| StartupError::Kafka {
            reason: reason.to_string(),
        })
}

fn local_port(listener: &TcpListener) -> u16 {
    listener.local_addr().map(|a| a.port()).unwrap_or_default()
}

/// Keeps readiness and the Kafka gauges current, logging each change of state once.
async fn probe_kafka(
    backend: Backend,
    settings: Settings,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    conditions: Arc<Conditions>,
) {
    let topics: Vec<String> = settings
        .topics
        .all()
        .iter()
        .map(|t| t.to_string())
        .collect();
    loop {
        let probe_backend = backend.clone();
        let probe_topics = topics.clone();
        let verdict = tokio::task::spawn_blocking(move || {
            let names: Vec<&str> = probe_topics.iter().map(String::as_str).collect();
            probe_backend.probe(&names, PROBE_TIMEOUT)
        })
        .await
        .unwrap_or(Err(KafkaUnusable::ProbeLost));
        metrics.kafka_up.set(i64::from(verdict.is_ok()));
        if let Some(reason) = backend.fatal_error().filter(|_| health.liveness().is_ok()) {
            tracing::error!(reason = %reason, "Liveness now fails");
            health.set_fatal(reason);
        }
        let queue = backend.queue();
        metrics.queue_depth.set(queue.waiting as i64);
        metrics.observe_sent_bytes(backend.sent_bytes());
        let queue_full = queue.limit > 0 && queue.waiting >= queue.limit * 9 / 10;
        health.set_queue_full(queue_full);
        conditions.set(
            Condition::QueueFull,
            queue_full.then(|| {
                format!(
                    "{} of {} records wait in the producer",
                    queue.waiting, queue.limit
                )
            }),
        );
        note_kafka(&verdict, &backend, &conditions);
        match (&verdict, health.set_kafka(verdict.clone().map(drop))) {
            (Ok(_), true) => {
                tracing::info!("Kafka reachable; all topics present");
                if let Some(spool) = backend.spool() {
                    spool.kafka_usable();
                }
            }
            (Err(reason), true) => tracing::warn!(reason = %reason, "Kafka not usable"),
            _ => {}
        }
        metrics.ready.set(i64::from(health.readiness().is_ok()));
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// Raises or clears the conditions the probe's verdict names. In spool mode the forwarder
/// names a partition that takes nothing, which it sees better than metadata does.
fn note_kafka(
    verdict: &Result<Vec<String>, KafkaUnusable>,
    backend: &Backend,
    conditions: &Conditions,
) {
    let (unreachable, missing) = match verdict {
        Err(unreachable @ (KafkaUnusable::Unreachable(_) | KafkaUnusable::ProbeLost)) => {
            (Some(unreachable.to_string()), None)
        }
        Err(missing @ KafkaUnusable::TopicsMissing(_)) => (None, Some(missing.to_string())),
        _ => (None, None),
    };
    conditions.set(Condition::KafkaUnreachable, unreachable);
    conditions.set(Condition::TopicsMissing, missing);
    if backend.spool().is_none()
        && let Ok(leaderless) = verdict
    {
        conditions.set(
            Condition::PartitionUnavailable,
            (!leaderless.is_empty())
                .then(|| format!("partitions without a leader: {}", leaderless.join(", "))),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(extra: &[(&str, &str)]) -> Settings {
        let mut vars = vec![
            (
                "KAFKA_BOOTSTRAP_SERVERS".to_owned(),
                "127.0.0.1:9".to_owned(),
            ),
            ("BRIDGE_ALLOW_UNAUTHENTICATED".to_owned(), "true".to_owned()),
        ];
        vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Settings::from_vars(vars).expect("valid settings")
    }

    #[test]
    fn a_producer_queue_too_small_for_what_the_bridge_hands_it_is_refused_naming_it() {
        for (vars, variable) in [
            (
                &[("KAFKA_QUEUE_BUFFERING_MAX_MESSAGES", "1000")][..],
                "KAFKA_QUEUE_BUFFERING_MAX_MESSAGES",
            ),
            (
                &[("KAFKA_QUEUE_BUFFERING_MAX_KBYTES", "1024")],
                "KAFKA_QUEUE_BUFFERING_MAX_KBYTES",
            ),
            (
                &[
                    ("BRIDGE_MAX_IN_FLIGHT", "20000"),
                    ("KAFKA_QUEUE_BUFFERING_MAX_MESSAGES", "10000"),
                ],
                "KAFKA_QUEUE_BUFFERING_MAX_MESSAGES",
            ),
        ] {
            let refused = check_producer_queue(&settings(vars)).expect_err("too small");
            assert_eq!(refused.variable, variable);
        }
        let fits = [("KAFKA_QUEUE_BUFFERING_MAX_MESSAGES", "4096")];
        assert_eq!(check_producer_queue(&settings(&fits)), Ok(()));
        assert_eq!(check_producer_queue(&settings(&[])), Ok(()));
    }
}
