//! The floor with Kafka behind it, for the benchmark: the HTTP floor (examples/floor.rs) that
//! also produces each body to Kafka the way the bridge must (idempotent, `acks=all`, keyed by
//! the chat, the answer only after the broker's acknowledgement), through rdkafka's own
//! `FutureProducer`. No authentication, no normalization, no headers, no metrics: what it costs
//! above the floor is the least any HTTP-to-Kafka bridge on this stack pays for durability, so
//! the bridge's own work is what it costs above this one.
//!
//! `FLOOR_ADDR=127.0.0.1:8082 KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 \
//!   cargo run --release --example floor_kafka`

use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

async fn receive(body: web::Bytes, producer: web::Data<FutureProducer>) -> HttpResponse {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return HttpResponse::BadRequest().finish();
    };
    let key = value
        .pointer("/payload/chat/objectId")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let record = FutureRecord::to("omnichat.messages")
        .key(key)
        .payload(&body[..]);
    match producer.send(record, Duration::from_secs(5)).await {
        Ok(delivery) => HttpResponse::Accepted().json(json!({
            "status": "accepted", "partition": delivery.partition, "offset": delivery.offset,
        })),
        Err(_) => HttpResponse::ServiceUnavailable().finish(),
    }
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::var("FLOOR_ADDR").unwrap_or_else(|_| "127.0.0.1:8082".to_owned());
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP_SERVERS").expect("KAFKA_BOOTSTRAP_SERVERS");
    // The bridge's own settings for what reaches the broker.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "5000")
        .create()
        .expect("a producer");
    let producer = web::Data::new(producer);
    HttpServer::new(move || {
        App::new()
            .app_data(web::PayloadConfig::new(1024 * 1024))
            .app_data(producer.clone())
            .route("/webhooks/omnichat", web::post().to(receive))
    })
    .workers(std::thread::available_parallelism().map_or(2, |n| n.get()))
    .bind(addr)?
    .run()
    .await
}
