//! omnichat-bridge: OmniChat webhooks in, keyed CloudEvents on Kafka out, acknowledged only
//! once stored.
//!
//! The modules follow a webhook's path, and depend one way, each only on those listed before
//! it (`tests/contract/layers.rs` fails the build otherwise):
//!
//! - `locks` and [`conditions`]: taking a lock a panic left; what stops acceptance or
//!   forwarding while a dependency misbehaves, each with a stable code, raised and cleared by
//!   whoever sees it, named in readiness.
//! - [`config`]: environment variables to validated [`config::Settings`]; each `BRIDGE_*`
//!   variable declared once in [`config::variables`]; `KAFKA_*` variables read as librdkafka
//!   properties; secrets wrapped. [`telemetry`]: structured logs.
//! - [`omnichat`]: OmniChat's wire format, parsed into types (sent times included) at the edge.
//! - [`publish`]: the [`publish::Publisher`] seam (it only publishes) and its vocabulary (a
//!   record, the classes of Kafka's refusals in [`publish::refusal`]); the Kafka implementation
//!   (producer generations) with the producer's policy ([`publish::kafka::policy`]).
//! - [`event`]: normalization into the schema-1 value, CloudEvents headers (names in
//!   [`event::headers`]), event ids, RFC 3339 times, and the dead-letter format.
//! - [`redrive`]: dead letters back through today's normalization.
//! - [`spool`]: spool mode's durable local log ([`spool::segments`]), its recovery, the
//!   quarantine, and the forwarder that drains it to Kafka and sets aside what Kafka refuses
//!   for good.
//! - [`backend`]: what startup owns, Kafka or the spool, with its lifecycle and health.
//! - [`ops`]: liveness, readiness (with stable codes) and metrics on the admin port.
//! - [`http`]: the public server (every request's headers on a deadline, connections aged
//!   out), the ingress route, authentication, the memory of repeated deliveries
//!   ([`http::repeats`]), and the one mapping from errors to statuses.
//! - [`shutdown`]: the shutdown sequence; [`startup`]: booting and running, and the checks
//!   that need both the settings and the parts (the producer's policy and queue).
//! - [`drain`]: a spool no bridge runs on (a scaled-down replica's volume) carried to Kafka by
//!   the spool's own recovery and forwarder. [`cli`]: the commands.

pub mod backend;
pub mod cli;
pub mod conditions;
pub mod config;
pub mod drain;
pub mod event;
pub mod http;
mod locks;
pub mod omnichat;
pub mod ops;
pub mod publish;
pub mod redrive;
pub mod shutdown;
pub mod spool;
pub mod startup;
pub mod telemetry;
