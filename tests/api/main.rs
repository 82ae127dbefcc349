//! Integration tests: the real application on port 0 against a real Kafka broker (tansu,
//! started by `scripts/test.sh`), records read back with a Kafka consumer.

mod helpers;

mod delivery;
mod drain;
mod faultfs;
mod faults;
mod ingress;
mod ordering;
mod outage;
mod partition;
mod process;
mod records;
mod redrive;
mod refusals;
mod shutdown;
mod spool;
mod spool_edges;
mod volume;
