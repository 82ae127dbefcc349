//! Webhook bytes to record value and headers, the bridge's own work per event, and the memory
//! of repeated deliveries it consults per event: `cargo bench --bench normalize`.

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

/// One event's work in the memory of repeated deliveries: a claim and a store of a new id (at
/// the count, so each store also forgets the oldest), or a claim of a remembered one; with one
/// shard and with the default sixteen.
fn repeats(c: &mut Criterion) {
    use futures_util::FutureExt;
    use omnichat_bridge::config::DedupSettings;
    use omnichat_bridge::http::repeats::{Claim, Repeats};
    use omnichat_bridge::publish::Stored;
    use std::time::Duration;

    let topics = normalizer_topics();
    let settings = DedupSettings {
        window: Duration::from_secs(300),
        max_ids: 100_000,
    };
    // Ids as the bridge makes them; more than the count, so each comes back forgotten.
    let ids: Vec<String> = (0..400_000u64)
        .map(|n| format!("b660930a-faaf-8b38-b516-{n:012x}"))
        .collect();
    let place = Stored::Kafka {
        partition: 2,
        offset: 7,
    };
    let mut group = c.benchmark_group("repeats");
    for shards in [1, 16] {
        let memory = Repeats::with_shards(&settings, &topics, 4096, Duration::from_secs(5), shards);
        let mut next = ids.iter().cycle();
        group.bench_function(format!("new_id_{shards}_shards"), |b| {
            b.iter(|| {
                let id = next.next().map_or("", String::as_str);
                match memory.claim(black_box(id)).now_or_never() {
                    Some(Ok(Claim::First(pending))) => {
                        black_box(pending.stored(&topics.messages, place))
                    }
                    _ => panic!("a new id"),
                }
            })
        });
        let id = "b660930a-faaf-8b38-b516-66289f18c305";
        if let Some(Ok(Claim::First(pending))) = memory.claim(id).now_or_never() {
            pending.stored(&topics.messages, place);
        }
        group.bench_function(format!("repeat_{shards}_shards"), |b| {
            b.iter(|| match memory.claim(black_box(id)).now_or_never() {
                Some(Ok(Claim::Repeat(first))) => black_box(first),
                _ => panic!("a repeat"),
            })
        });
    }
    group.finish();
}

fn normalizer_topics() -> Topics {
    Topics {
        messages: "omnichat.messages".into(),
        interactions: "omnichat.interactions".into(),
        orders: "omnichat.orders".into(),
        other: "omnichat.other".into(),
        deadletter: "omnichat.deadletter".into(),
    }
}

criterion_group!(benches, normalize, repeats);
criterion_main!(benches);
