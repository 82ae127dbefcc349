//! omnichat-bridge: OmniChat webhooks in, keyed CloudEvents on Kafka out, acknowledged only
//! once stored.
//!
//! The modules follow a webhook's path:
//!
//! - [`config`]: environment variables to validated [`config::Settings`]; secrets wrapped.
//! - [`http`]: the public server (every request's headers on a deadline), the ingress route,
//!   authentication, and the one mapping from errors to statuses.
//! - [`omnichat`]: OmniChat's wire format, tolerant of unknown fields and values.
//! - [`event`]: normalization into the schema-1 value, CloudEvents headers and event ids.
//! - [`publish`]: the [`publish::Publisher`] seam, its Kafka implementation (producer
//!   generations) and [`publish::refusal`], the classes of Kafka's refusals.
//! - [`spool`]: spool mode's durable local log, its recovery, and the forwarder that drains it
//!   to Kafka and sets aside what Kafka refuses for good.
//! - [`ops`]: liveness, readiness and metrics on the admin port.
//! - [`startup`]: binding, running, and the shutdown sequence.
//! - [`telemetry`]: structured logs.

pub mod backend;
pub mod cli;
pub mod config;
pub mod event;
pub mod http;
pub mod omnichat;
pub mod ops;
pub mod publish;
pub mod redrive;
pub mod shutdown;
pub mod spool;
pub mod startup;
pub mod telemetry;
