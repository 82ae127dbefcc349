//! Webhook bytes to record value and headers, the bridge's own work per event:
//! `cargo bench --bench normalize`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use omnichat_bridge::config::Topics;
use omnichat_bridge::event::{Normalizer, Receipt};
use omnichat_bridge::omnichat::Webhook;

const MESSAGE: &str = include_str!("../tests/fixtures/seed-message.json");
const ORDER: &str = r#"{"objectId": "o9", "resource": "Order", "event": "UPDATE", "timestamp": "2023-04-18T10:47:35-03:00"}"#;

fn normalizer() -> Normalizer {
    Normalizer::new(
        Topics {
            messages: "omnichat.messages".into(),
            interactions: "omnichat.interactions".into(),
            orders: "omnichat.orders".into(),
            other: "omnichat.other".into(),
            deadletter: "omnichat.deadletter".into(),
        },
        "omnichat".into(),
    )
}

fn normalize(c: &mut Criterion) {
    let normalizer = normalizer();
    let received_at = time::OffsetDateTime::now_utc();
    let mut group = c.benchmark_group("normalize");
    for (name, body) in [("message", MESSAGE), ("order", ORDER)] {
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let body = black_box(body.as_bytes());
                let webhook = Webhook::parse(body).expect("valid");
                let receipt = Receipt {
                    body,
                    received_at,
                    signed_id: None,
                    traceparent: None,
                };
                black_box(normalizer.event(&webhook, &receipt))
            })
        });
    }
    group.bench_function("dead_letter", |b| {
        b.iter(|| {
            let body = black_box(b"{not json".as_slice());
            let rejection = Webhook::parse(body).expect_err("invalid");
            let receipt = Receipt {
                body,
                received_at,
                signed_id: None,
                traceparent: None,
            };
            black_box(normalizer.dead_letter(&rejection, &receipt))
        })
    });
    group.finish();
}

criterion_group!(benches, normalize);
criterion_main!(benches);
