//! The floor with Kafka behind it, for the benchmark: the HTTP floor (examples/floor.rs) that
//! also produces each body to Kafka the way the bridge must (idempotent, `acks=all`, keyed by
//! the chat, the answer only after the broker's acknowledgement), through rdkafka's own
//! `FutureProducer`. No authentication, no normalization, no headers, no metrics: what it costs
//! above the floor is the least any HTTP-to-Kafka bridge on this stack pays for durability, so
//! the bridge's own work is what it costs above this one.
//!
//! Each body goes to the topic of its resource, keyed as the bridge keys it, so the mix compares
//! like with like; `KAFKA_COMPRESSION_TYPE` sets the codec, and `GET /stats` says how many
//! bytes librdkafka sent to the brokers.
//!
//! `FLOOR_ADDR=127.0.0.1:8082 KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 \
//!   cargo run --release --example floor_kafka`

use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Counts the bytes librdkafka sent to the brokers, from its statistics.
#[derive(Default, Clone)]
struct Sent(Arc<AtomicU64>);

impl ClientContext for Sent {
    fn stats_raw(&self, statistics: &[u8]) {
        #[derive(serde::Deserialize)]
        struct TxBytes {
            tx_bytes: u64,
        }
        if let Ok(sent) = serde_json::from_slice::<TxBytes>(statistics) {
            self.0.store(sent.tx_bytes, Ordering::Relaxed);
        }
    }
}

type Producer = FutureProducer<Sent>;

/// Routed as the bridge routes: a resource's topic, keyed by the chat or the object.
fn topic_and_key(value: &serde_json::Value) -> (&'static str, &str) {
    let text = |pointer: &str| value.pointer(pointer).and_then(|v| v.as_str());
    let object = text("/objectId").unwrap_or_default();
    match text("/resource") {
        Some("Message") => (
            "omnichat.messages",
            text("/payload/chat/objectId").unwrap_or_default(),
        ),
        Some("Interaction") => ("omnichat.interactions", object),
        Some("Order") => ("omnichat.orders", object),
        _ => ("omnichat.other", object),
    }
}

async fn receive(body: web::Bytes, producer: web::Data<Producer>) -> HttpResponse {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return HttpResponse::BadRequest().finish();
    };
    let (topic, key) = topic_and_key(&value);
    let record = FutureRecord::to(topic).key(key).payload(&body[..]);
    match producer.send(record, Duration::from_secs(5)).await {
        Ok(delivery) => HttpResponse::Accepted().json(json!({
            "status": "accepted", "partition": delivery.partition, "offset": delivery.offset,
        })),
        Err(_) => HttpResponse::ServiceUnavailable().finish(),
    }
}

async fn stats(sent: web::Data<Sent>) -> HttpResponse {
    let sent = sent.0.load(Ordering::Relaxed);
    HttpResponse::Ok().json(json!({ "sentBytes": sent }))
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::var("FLOOR_ADDR").unwrap_or_else(|_| "127.0.0.1:8082".to_owned());
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP_SERVERS").expect("KAFKA_BOOTSTRAP_SERVERS");
    // The bridge's own settings for what reaches the broker.
    let sent = Sent::default();
    let compression = std::env::var("KAFKA_COMPRESSION_TYPE").unwrap_or_else(|_| "none".into());
    let producer: Producer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "5000")
        .set("compression.type", compression)
        .set("statistics.interval.ms", "1000")
        .create_with_context(sent.clone())
        .expect("a producer");
    let producer = web::Data::new(producer);
    let sent = web::Data::new(sent);
    HttpServer::new(move || {
        App::new()
            .app_data(web::PayloadConfig::new(1024 * 1024))
            .app_data(producer.clone())
            .app_data(sent.clone())
            .route("/webhooks/omnichat", web::post().to(receive))
            // The bench reads the bytes sent to the brokers here.
            .route("/stats", web::get().to(stats))
    })
    .workers(std::thread::available_parallelism().map_or(2, |n| n.get()))
    .bind(addr)?
    .run()
    .await
}
