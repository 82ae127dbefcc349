//! What the broker tests share, by concern: the app under test, reading Kafka back, and load.

mod app;
pub mod faultfs;
mod kafka;
mod load;

pub use app::*;
pub use kafka::*;
pub use load::*;
