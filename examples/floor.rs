//! The HTTP floor for the benchmark: the same web stack as the bridge (actix-web, one worker per
//! core) reading the body, parsing it as JSON and answering 202, with no Kafka behind it. What
//! the bridge costs above this is the price of authentication, normalization and the broker's
//! acknowledgement.
//!
//! `FLOOR_ADDR=127.0.0.1:8081 cargo run --release --example floor`

use actix_web::{App, HttpResponse, HttpServer, web};
use serde_json::json;

/// The same allocator as the bridge, so the comparison measures the bridge's work, not malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

async fn receive(body: web::Bytes) -> HttpResponse {
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(_) => HttpResponse::Accepted().json(json!({"status": "accepted"})),
        Err(_) => HttpResponse::BadRequest().finish(),
    }
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::var("FLOOR_ADDR").unwrap_or_else(|_| "127.0.0.1:8081".to_owned());
    HttpServer::new(|| {
        App::new()
            .app_data(web::PayloadConfig::new(1024 * 1024))
            .route("/webhooks/omnichat", web::post().to(receive))
    })
    .workers(std::thread::available_parallelism().map_or(2, |n| n.get()))
    .bind(addr)?
    .run()
    .await
}
