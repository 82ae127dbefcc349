//! omnichat-bridge: OmniChat webhooks in, keyed CloudEvents on Kafka out, acknowledged only
//! once stored.
//!
//! The modules follow a webhook's path:
//!
//! - [`conditions`]: what stops acceptance or forwarding while a dependency misbehaves, each
//!   with a stable code, raised and cleared by whoever sees it, named in readiness.
//! - [`config`]: environment variables to validated [`config::Settings`]; each `BRIDGE_*`
//!   variable declared once in [`config::variables`]; secrets wrapped.
//! - [`http`]: the public server (every request's headers on a deadline, connections aged
//!   out), the ingress route, authentication, the memory of repeated deliveries
//!   ([`http::repeats`]), and the one mapping from errors to statuses.
//! - [`omnichat`]: OmniChat's wire format, parsed into types (times included) at the edge.
//! - [`event`]: normalization into the schema-1 value, CloudEvents headers, event ids, and the
//!   dead-letter format.
//! - [`publish`]: the [`publish::Publisher`] seam (it only publishes), its Kafka
//!   implementation (producer generations) and [`publish::refusal`], the classes of Kafka's
//!   refusals.
//! - [`spool`]: spool mode's durable local log ([`spool::segments`]), its recovery, the
//!   quarantine, and the forwarder that drains it to Kafka and sets aside what Kafka refuses
//!   for good.
//! - [`backend`]: what startup owns, Kafka or the spool, with its lifecycle and health.
//! - [`ops`]: liveness, readiness (with stable codes) and metrics on the admin port.
//! - [`redrive`]: dead letters and quarantined records back through today's normalization.
//! - [`drain`]: a spool no bridge runs on (a scaled-down replica's volume) carried to Kafka by
//!   the spool's own recovery and forwarder.
//! - [`startup`]: booting and running; [`shutdown`]: the shutdown sequence.
//! - [`cli`]: the commands; [`telemetry`]: structured logs.

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
