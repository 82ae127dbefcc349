//! The HTTP contract, in-process on a stand-in backend: statuses, error bodies,
//! authentication, limits, records as built, readiness and OpenAPI conformance. Needs no
//! broker, so plain `cargo test` runs it; the broker suite is `tests/api` (scripts/test.sh).

mod app;

mod admin;
mod answers;
mod auth;
mod bodies;
mod connections;
mod docs;
mod layers;
mod limits;
mod openapi;
mod records;
mod repeats;
