//! The bridge's Prometheus metrics (OpenMetrics text on `/metrics`). Labels a sender could
//! invent (resources, events) are bounded to the documented values and `other`.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Metric, Registry};

use crate::conditions::{Condition, Conditions};
use crate::config::Topics;
use crate::omnichat::{Action, Resource};
use crate::spool::SpoolStatus;

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

/// Where the first delivery of a repeated one stood when the repeat arrived.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FirstLabels {
    first: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConditionLabels {
    condition: &'static str,
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
    /// Repeats answered from memory: `[stored, storing]`, created once for the hot path.
    duplicates: [Counter; 2],
    dedup_forgotten: Counter,
    connections_aged_out: Counter,
    pub in_flight: Gauge,
    pub queue_depth: Gauge,
    pub kafka_up: Gauge,
    /// 1 while `/readyz` answers 200, else 0: what a dashboard and a flapping alert read.
    pub ready: Gauge,
    /// Bytes sent to Kafka, as librdkafka's statistics report them.
    kafka_sent_bytes: Counter,
    spool: Option<SpoolMetrics>,
    conditions: std::sync::Arc<Conditions>,
    condition_starts: Family<ConditionLabels, Counter>,
    condition_active: Family<ConditionLabels, Gauge>,
}

/// Spool mode's gauges, set from the spool's status on every probe.
#[derive(Debug, Default)]
struct SpoolMetrics {
    records: Gauge,
    bytes: Gauge,
    limit: Gauge,
    quarantine_bytes: Gauge,
    oldest_age: Gauge<f64, AtomicU64>,
    forwarded: Counter,
    commits: Counter,
    commit_seconds: Counter<f64, AtomicU64>,
    set_aside: Family<DestinationLabels, Counter>,
    damaged_segments: Counter,
    forward_failures: Family<CodeLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationLabels {
    to: &'static str,
}

/// Seconds; from well under a millisecond to the longest default publish deadline.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Every metric's name (after the `omnichat_bridge_` prefix) and help, in one table.
const HELP: &[(&str, &str)] = &[
    (
        "kafka_sent_bytes",
        "Bytes sent to the Kafka brokers, compression included (librdkafka's statistics, every statistics.interval.ms)",
    ),
    (
        "spool_records",
        "Records accepted into the spool and not yet acknowledged by Kafka",
    ),
    (
        "spool_bytes",
        "Bytes of the spool's files on disk, counted against BRIDGE_SPOOL_MAX_BYTES",
    ),
    (
        "spool_limit_bytes",
        "BRIDGE_SPOOL_MAX_BYTES: above it, webhooks are answered 503",
    ),
    (
        "spool_quarantine_bytes",
        "Bytes in the spool's quarantine (counted in spool_bytes): records set aside there and damaged segments; POST /quarantine/redrive re-drives the records",
    ),
    (
        "spool_oldest_record_age_seconds",
        "Age of the oldest spooled record not yet acknowledged by Kafka; 0 when none",
    ),
    (
        "spool_forwarded_records",
        "Spooled records acknowledged by Kafka (its rate is the forward rate)",
    ),
    (
        "spool_commits",
        "Group commits: one write and fdatasync answering every request waiting for it",
    ),
    (
        "spool_commit_seconds",
        "Time spent in group commits; divided by spool_commits, the fsync latency",
    ),
    (
        "spool_set_aside_records",
        "Spooled records Kafka refused for good, set aside: to the dead-letter topic, or to the quarantine when that topic refused them too",
    ),
    (
        "spool_damaged_segments",
        "Damaged spool segments moved to the quarantine at start (BRIDGE_SPOOL_ON_DAMAGE=set-aside)",
    ),
    (
        "spool_forward_failures",
        "Times forwarding was held up, by the Kafka error that held it up",
    ),
    (
        "conditions",
        "Times each condition that stops acceptance or forwarding started (see /readyz's conditions)",
    ),
    ("condition_active", "1 while the condition holds, else 0"),
    ("http_requests", "Webhook requests answered, by status"),
    (
        "http_request_duration_seconds",
        "Time from a webhook request's arrival to its answer",
    ),
    ("events", "Events stored, by topic, resource and event"),
    ("dead_letters", "Bodies dead-lettered, by error code"),
    (
        "publish_duration_seconds",
        "Time from handing a record to the producer to the broker's acknowledgement",
    ),
    (
        "duplicates",
        "Repeated deliveries of an event this process stored within BRIDGE_DEDUP_WINDOW_S, answered 202 with the first answer and not published again; first=storing: the repeat came while the first was being stored, and waited for it",
    ),
    (
        "dedup_forgotten_ids",
        "Event ids forgotten before BRIDGE_DEDUP_WINDOW_S passed, to stay within BRIDGE_DEDUP_MAX_IDS: a repeat of one would be published again",
    ),
    (
        "connections_aged_out",
        "Kept-alive connections told Connection: close because they were older than BRIDGE_MAX_CONNECTION_AGE_S",
    ),
    ("in_flight_requests", "Webhook requests being handled"),
    (
        "producer_queue_depth",
        "Records handed to the producer and not yet acknowledged",
    ),
    (
        "kafka_up",
        "1 when the last probe reached Kafka and found every topic, else 0",
    ),
    (
        "ready",
        "1 while /readyz answers 200 (the bridge should get traffic), else 0",
    ),
];

/// Registers `metric` under `name`, with its help from [`HELP`], and hands it back.
fn add<M: Metric + Clone>(registry: &mut Registry, name: &str, metric: M) -> M {
    let help = HELP
        .iter()
        .find(|(known, _)| *known == name)
        .map_or("", |(_, help)| help);
    registry.register(name, help, metric.clone());
    metric
}

/// The nine documented resource × event counters, made once so the hot path does not build
/// label strings.
fn known_events(events: &Family<EventLabels, Counter>, topics: &Topics) -> [[Counter; 3]; 3] {
    [
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
    })
}

impl SpoolMetrics {
    fn register(r: &mut Registry) -> Self {
        Self {
            records: add(r, "spool_records", Gauge::default()),
            bytes: add(r, "spool_bytes", Gauge::default()),
            limit: add(r, "spool_limit_bytes", Gauge::default()),
            quarantine_bytes: add(r, "spool_quarantine_bytes", Gauge::default()),
            oldest_age: add(r, "spool_oldest_record_age_seconds", Gauge::default()),
            forwarded: add(r, "spool_forwarded_records", Counter::default()),
            commits: add(r, "spool_commits", Counter::default()),
            commit_seconds: add(r, "spool_commit_seconds", Counter::default()),
            set_aside: add(r, "spool_set_aside_records", Family::default()),
            damaged_segments: add(r, "spool_damaged_segments", Counter::default()),
            forward_failures: add(r, "spool_forward_failures", Family::default()),
        }
    }
}

impl Metrics {
    /// The bridge's metrics; the spool's only in spool mode. `conditions` are counted and
    /// shown as they stand when metrics are read.
    pub fn new(topics: &Topics, spool: bool, conditions: std::sync::Arc<Conditions>) -> Self {
        let mut registry = Registry::with_prefix("omnichat_bridge");
        let r = &mut registry;
        let condition_starts = add(r, "conditions", Family::default());
        let condition_active = add(r, "condition_active", Family::default());
        let spool = spool.then(|| SpoolMetrics::register(r));
        let requests = add(r, "http_requests", Family::default());
        let request_duration = add(
            r,
            "http_request_duration_seconds",
            Histogram::new(LATENCY_BUCKETS),
        );
        let events: Family<EventLabels, Counter> = add(r, "events", Family::default());
        let dead_letters = add(r, "dead_letters", Family::default());
        let publish_latency = add(
            r,
            "publish_duration_seconds",
            Histogram::new(LATENCY_BUCKETS),
        );
        let duplicates: Family<FirstLabels, Counter> = add(r, "duplicates", Family::default());
        let dedup_forgotten = add(r, "dedup_forgotten_ids", Counter::default());
        let connections_aged_out = add(r, "connections_aged_out", Counter::default());
        let in_flight = add(r, "in_flight_requests", Gauge::default());
        let queue_depth = add(r, "producer_queue_depth", Gauge::default());
        let kafka_up = add(r, "kafka_up", Gauge::default());
        let kafka_sent_bytes = add(r, "kafka_sent_bytes", Counter::default());
        let ready = add(r, "ready", Gauge::default());
        let version = Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]);
        r.register("build", "Build information", version);
        Self {
            registry,
            known_events: known_events(&events, topics),
            requests,
            request_duration,
            events,
            dead_letters,
            publish_latency,
            duplicates: ["stored", "storing"]
                .map(|first| duplicates.get_or_create(&FirstLabels { first }).clone()),
            dedup_forgotten,
            connections_aged_out,
            in_flight,
            queue_depth,
            kafka_up,
            ready,
            kafka_sent_bytes,
            spool,
            conditions,
            condition_starts,
            condition_active,
        }
    }

    /// The bytes sent to Kafka so far, as the producer counts them.
    pub fn observe_sent_bytes(&self, total: u64) {
        self.kafka_sent_bytes
            .inc_by(total.saturating_sub(self.kafka_sent_bytes.get()));
    }

    /// Brings the condition series up to date with the conditions themselves.
    fn observe_conditions(&self) {
        for condition in Condition::ALL {
            let labels = ConditionLabels {
                condition: condition.code(),
            };
            let starts = self.condition_starts.get_or_create(&labels);
            starts.inc_by(
                self.conditions
                    .starts(condition)
                    .saturating_sub(starts.get()),
            );
            self.condition_active
                .get_or_create(&labels)
                .set(i64::from(self.conditions.is_active(condition)));
        }
    }

    pub fn observe_spool(&self, status: &SpoolStatus) {
        let Some(spool) = &self.spool else { return };
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        spool.records.set(gauge(status.records));
        spool.bytes.set(gauge(status.bytes));
        spool.limit.set(gauge(status.limit));
        spool.quarantine_bytes.set(gauge(status.quarantine_bytes));
        spool.oldest_age.set(status.oldest_age.as_secs_f64());
        // The spool counts; these counters catch up with it.
        spool
            .forwarded
            .inc_by(status.forwarded.saturating_sub(spool.forwarded.get()));
        spool
            .commits
            .inc_by(status.commits.saturating_sub(spool.commits.get()));
        let seconds = status.commit_time.as_secs_f64() - spool.commit_seconds.get();
        if seconds > 0.0 {
            spool.commit_seconds.inc_by(seconds);
        }
        for (to, count) in [
            ("deadletter", status.set_aside_to_deadletter),
            ("quarantine", status.set_aside_to_quarantine),
        ] {
            let counter = spool.set_aside.get_or_create(&DestinationLabels { to });
            counter.inc_by(count.saturating_sub(counter.get()));
        }
        spool.damaged_segments.inc_by(
            status
                .damaged_segments
                .saturating_sub(spool.damaged_segments.get()),
        );
        // Codes come from librdkafka's finite list of errors.
        for (code, count) in &status.forward_failures {
            let counter = spool
                .forward_failures
                .get_or_create(&CodeLabels { code: code.clone() });
            counter.inc_by(count.saturating_sub(counter.get()));
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
                // Values outside the documented enumerations come from senders: counted under
                // `other`, so a sender cannot grow the series (the event keeps the value).
                let label = |index: Option<usize>, name: &str| match index {
                    Some(_) => name.to_owned(),
                    None => "other".to_owned(),
                };
                self.events
                    .get_or_create(&EventLabels {
                        topic: topic.to_owned(),
                        resource: label(resource_index, resource.as_str()),
                        event: label(action_index, action.as_str()),
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

    /// A repeated delivery answered from memory; `waited` when it came while the first was
    /// still being stored.
    pub fn observe_duplicate(&self, waited: bool) {
        self.duplicates[usize::from(waited)].inc();
    }

    /// Ids forgotten before their window passed, to stay within the count.
    pub fn observe_forgotten_ids(&self, count: usize) {
        if count > 0 {
            self.dedup_forgotten.inc_by(count as u64);
        }
    }

    pub fn observe_connection_aged_out(&self) {
        self.connections_aged_out.inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.observe_conditions();
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> crate::config::Topics {
        crate::config::Topics {
            messages: "m".into(),
            interactions: "i".into(),
            orders: "o".into(),
            other: "x".into(),
            deadletter: "d".into(),
        }
    }

    #[test]
    fn every_metric_has_its_help() {
        let topics = topics();
        let rendered = Metrics::new(&topics, true, Default::default()).render();
        let helps: Vec<&str> = rendered
            .lines()
            .filter(|l| l.starts_with("# HELP"))
            .collect();
        assert!(helps.len() >= HELP.len(), "{rendered}");
        for line in helps {
            assert!(line.split(' ').count() > 4, "no help: {line}");
        }
    }

    #[test]
    fn resources_and_events_a_sender_invents_share_one_bounded_label() {
        let topics = topics();
        let metrics = Metrics::new(&topics, false, Default::default());
        let took = Duration::from_millis(1);
        metrics.observe_event("x", &Resource::Other("Seed".into()), &Action::Create, took);
        let before = metrics.render().len();
        for n in 0..2_000 {
            let resource = Resource::Other(format!("Made-up-{n}").into());
            let action = Action::Other(format!("EVENT-{n}").into());
            metrics.observe_event("x", &resource, &action, took);
        }
        let after = metrics.render();
        assert!(
            after.len() <= before + 200,
            "grew from {before} to {} bytes",
            after.len()
        );
        assert!(after.contains("resource=\"other\""), "{after}");
        assert!(!after.contains("Made-up"), "{after}");
    }
}
