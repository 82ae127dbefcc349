//! The benchmark's load generator: a realistic OmniChat mix against a webhook URL.
//!
//! - `closed`: N connections, each sending its next request as soon as the last is answered
//!   (throughput and CPU per event).
//! - `open`: requests start on a fixed schedule whatever the server does, and latency is
//!   measured from each request's scheduled start, so a stall shows up in the percentiles
//!   instead of slowing the load (no coordinated omission, as wrk2 does it).
//! - `verify`: reads every record of the given topics back and checks that each 202 the earlier
//!   runs wrote to `LOADGEN_RECEIPTS` is there, at its topic, partition and offset, with its id
//!   (a spooled event, whose answer names no offset, anywhere in its topic).
//!
//! Prints one JSON object. Usage:
//!   loadgen closed <url> <token> <connections> <seconds>
//!   loadgen open   <url> <token> <rate/s> <seconds>
//!   loadgen verify <bootstrap> <topic,topic,...> <receipts file>
//!   loadgen produce <bootstrap> <topic> <records>   (the broker alone, without the bridge:
//!   an idempotent acks=all producer writing keyed records, receipts to LOADGEN_RECEIPTS)

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::json;

const CHATS: usize = 1000;
const BODIES: usize = 8192;
const WORDS: &[&str] = &[
    "bom",
    "dia",
    "obrigado",
    "pedido",
    "entrega",
    "hoje",
    "amanhã",
    "valor",
    "frete",
    "produto",
    "tamanho",
    "cor",
    "azul",
    "pix",
    "cartão",
    "boleto",
    "prazo",
    "endereço",
    "rua",
    "número",
    "quero",
    "comprar",
    "trocar",
    "devolver",
    "status",
    "confirmado",
    "enviado",
    "olá",
    "tudo",
    "bem",
    "preciso",
    "ajuda",
    "com",
    "meu",
    "minha",
    "compra",
    "loja",
    "atendimento",
];

/// A small deterministic generator, so every run sends the same mix.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as usize
    }
}

/// 80% new messages, 10% message updates, 5% interactions, 5% orders; texts of 5 to 60 words.
/// `SEQ` in a template becomes the request's sequence number, so every request is a distinct
/// event with its own id and the zero-loss check can find each one.
fn bodies() -> Vec<String> {
    let mut rng = Lcg(7);
    (0..BODIES)
        .map(|_| {
            let chat = format!("chat{:05}", rng.next() % CHATS);
            let roll = rng.next() % 100;
            let body = if roll < 90 {
                let words = 5 + rng.next() % 56;
                let text: Vec<&str> = (0..words).map(|_| WORDS[rng.next() % WORDS.len()]).collect();
                let (event, status) = if roll < 80 { ("CREATE", "INCOMING_RECEIVED") } else { ("UPDATE", "OUTGOING_READ") };
                json!({
                    "objectId": "msgSEQ", "resource": "Message", "event": event, "timestamp": "SEQ",
                    "payload": {
                        "chat": {"className": "Chat", "objectId": chat}, "platform": "WAB-OMNICHAT",
                        "status": status, "system": false, "type": "TEXT", "text": text.join(" "),
                        "createdAt": "2025-11-24T16:00:00.000Z", "updatedAt": "2025-11-24T16:00:00.000Z",
                        "objectId": "msgSEQ"
                    }
                })
            } else if roll < 95 {
                json!({"objectId": "intSEQ", "resource": "Interaction", "event": "UPDATE", "timestamp": "SEQ"})
            } else {
                json!({"objectId": "ordSEQ", "resource": "Order", "event": "CREATE", "timestamp": "SEQ"})
            };
            serde_json::to_string(&body).expect("serializes")
        })
        .collect()
}

/// The `n`th request's body: its template with the sequence number filled in (the timestamp
/// becomes epoch milliseconds counting up from November 2025).
fn body(templates: &[String], n: usize) -> Vec<u8> {
    let template = &templates[n % templates.len()];
    template
        .replace("\"SEQ\"", &(1_764_000_000_000u64 + n as u64).to_string())
        .replace("SEQ", &n.to_string())
        .into_bytes()
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    statuses: BTreeMap<String, u64>,
    /// One `topic partition offset id` line per 202 (`-` for a spooled event's partition and
    /// offset).
    receipts: Vec<String>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        self.receipts.extend(other.receipts);
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
    }

    fn report(mut self, mode: &str, elapsed: Duration) -> serde_json::Value {
        if let Ok(path) = std::env::var("LOADGEN_RECEIPTS") {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("receipts file");
            for line in &self.receipts {
                writeln!(file, "{line}").expect("write receipt");
            }
        }
        self.latencies_us.sort_unstable();
        let pct = |p: f64| -> f64 {
            if self.latencies_us.is_empty() {
                return 0.0;
            }
            let i = ((self.latencies_us.len() as f64 * p).ceil() as usize)
                .clamp(1, self.latencies_us.len())
                - 1;
            self.latencies_us[i] as f64 / 1000.0
        };
        let accepted = self.statuses.get("202").copied().unwrap_or_default();
        json!({
            "mode": mode,
            "requests": self.latencies_us.len(),
            "accepted": accepted,
            "statuses": self.statuses,
            "seconds": elapsed.as_secs_f64(),
            "accepted_per_second": accepted as f64 / elapsed.as_secs_f64(),
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "p999_ms": pct(0.999),
            "max_ms": self.latencies_us.last().copied().unwrap_or_default() as f64 / 1000.0,
            // The whole distribution, HdrHistogram-style: percentiles at 1 - 10^(-k/8).
            "percentiles": (0..=40)
                .map(|k| {
                    let p = 1.0 - 10f64.powf(-f64::from(k) / 8.0);
                    json!([p * 100.0, pct(p.max(1e-9))])
                })
                .collect::<Vec<_>>(),
        })
    }
}

/// Sends one request; returns its status and, for a 202 that names where it was stored, the
/// receipt line.
async fn send(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    body: Vec<u8>,
) -> (String, Option<String>) {
    match client
        .post(url)
        .header("x-webhook-token", token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
    {
        Ok(response) => {
            let status = response.status().as_u16().to_string();
            let answer: serde_json::Value = response.json().await.unwrap_or_default();
            // A spooled event's answer names no partition or offset yet: `-` in the receipt.
            let receipt = (status == "202").then(|| {
                let or_dash = |v: &serde_json::Value| {
                    if v.is_null() {
                        "-".to_owned()
                    } else {
                        v.to_string()
                    }
                };
                format!(
                    "{} {} {} {}",
                    answer["topic"].as_str().unwrap_or_default(),
                    or_dash(&answer["partition"]),
                    or_dash(&answer["offset"]),
                    answer["id"].as_str().unwrap_or_default()
                )
            });
            (status, receipt)
        }
        Err(error) if error.is_connect() => ("connect_error".to_owned(), None),
        Err(_) => ("error".to_owned(), None),
    }
}

fn client(connections: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

async fn closed(
    url: String,
    token: String,
    connections: usize,
    duration: Duration,
) -> serde_json::Value {
    let bodies = Arc::new(bodies());
    let next = Arc::new(AtomicUsize::new(0));
    // LOADGEN_MAX_REQUESTS ends the run early once that many requests were sent (a backlog of
    // a given size).
    let max_requests = std::env::var("LOADGEN_MAX_REQUESTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX);
    let client = client(connections);
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = Vec::new();
    for _ in 0..connections {
        let (client, url, token, bodies, next) = (
            client.clone(),
            url.clone(),
            token.clone(),
            bodies.clone(),
            next.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            while Instant::now() < deadline {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= max_requests {
                    break;
                }
                let body = body(&bodies, n);
                let sent = Instant::now();
                let (status, receipt) = send(&client, &url, &token, body).await;
                tally.latencies_us.push(sent.elapsed().as_micros() as u64);
                *tally.statuses.entry(status).or_default() += 1;
                tally.receipts.extend(receipt);
            }
            tally
        }));
    }
    let mut tally = Tally::default();
    for worker in workers {
        tally.merge(worker.await.expect("worker"));
    }
    tally.report("closed", started.elapsed())
}

async fn open(url: String, token: String, rate: f64, duration: Duration) -> serde_json::Value {
    let bodies = bodies();
    // Open-loop sequence numbers start past any closed run's, so ids never repeat.
    let first = 100_000_000;
    let client = client(512);
    let interval = Duration::from_secs_f64(1.0 / rate);
    let started = Instant::now();
    let total = (rate * duration.as_secs_f64()) as usize;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..total {
        let intended = started + interval * i as u32;
        tokio::time::sleep_until(intended.into()).await;
        let (client, url, token, tx) = (client.clone(), url.clone(), token.clone(), tx.clone());
        let body = body(&bodies, first + i);
        tokio::spawn(async move {
            let (status, receipt) = send(&client, &url, &token, body).await;
            let _ = tx.send((status, receipt, intended.elapsed().as_micros() as u64));
        });
    }
    drop(tx);
    let mut tally = Tally::default();
    while let Some((status, receipt, latency)) = rx.recv().await {
        tally.latencies_us.push(latency);
        *tally.statuses.entry(status).or_default() += 1;
        tally.receipts.extend(receipt);
    }
    tally.report("open", started.elapsed())
}

fn verify(bootstrap: &str, topics: &str, receipts: &str) -> serde_json::Value {
    use rdkafka::message::{Headers, Message};
    use std::collections::HashMap;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "omnichat-bridge-bench")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut assignment = rdkafka::TopicPartitionList::new();
    let mut expected_total = 0i64;
    for topic in topics.split(',') {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        for partition in metadata.topics()[0].partitions() {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition.id(), Duration::from_secs(10))
                .expect("watermarks");
            expected_total += high - low;
            assignment
                .add_partition_offset(topic, partition.id(), rdkafka::Offset::Beginning)
                .expect("assign");
        }
    }
    consumer.assign(&assignment).expect("assign");
    // (topic, partition, offset) -> ce_id of every record in the topics.
    let mut stored: HashMap<(String, i32, i64), String> = HashMap::new();
    // Events of the wrk load (`"objectId":"wrk…"`), which keeps no receipts: counted distinct.
    let mut wrk_events: std::collections::HashSet<Vec<u8>> = std::collections::HashSet::new();
    let mut idle = Instant::now();
    // Read until nothing arrives for 3 s, not just up to the watermarks: they are the broker's
    // own claim, and the point is to check the broker.
    while idle.elapsed() < Duration::from_secs(3) {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            idle = Instant::now();
            const WRK: &[u8] = b"\"objectId\":\"wrk";
            if let Some(value) = message.payload()
                && let Some(at) = value.windows(WRK.len()).position(|w| w == WRK)
            {
                let rest = &value[at + WRK.len()..];
                let end = rest.iter().position(|b| *b == b'"').unwrap_or(rest.len());
                wrk_events.insert(rest[..end].to_vec());
            }
            let id = message
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == "ce_id").and_then(|h| h.value))
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            stored.insert(
                (
                    message.topic().to_owned(),
                    message.partition(),
                    message.offset(),
                ),
                id,
            );
        }
    }
    let ids: std::collections::HashSet<&str> = stored.values().map(String::as_str).collect();
    let mut missing = Vec::new();
    let mut misplaced = 0;
    let lines = std::fs::read_to_string(receipts).unwrap_or_default();
    let mut accepted = 0;
    for line in lines.lines() {
        accepted += 1;
        let parts: Vec<&str> = line.split(' ').collect();
        if parts[1] == "-" {
            // Spooled: no offset was promised, only that the event gets there.
            if !ids.contains(parts[3]) {
                missing.push(line.to_owned());
            }
            continue;
        }
        let key = (
            parts[0].to_owned(),
            parts[1].parse().unwrap_or(-1),
            parts[2].parse().unwrap_or(-1),
        );
        let at_offset = stored.get(&key).map(String::as_str);
        if at_offset != Some(parts[3]) {
            // Every request is a distinct event, so an id found elsewhere means the broker
            // misreported the offset; found nowhere, it is lost.
            if ids.contains(parts[3]) {
                misplaced += 1;
            } else {
                missing.push(format!("{line} (offset holds {at_offset:?})"));
            }
        }
    }
    json!({"mode": "verify", "accepted": accepted, "wrk_events": wrk_events.len(), "records": stored.len(), "watermark_records": expected_total,
           "missing": missing.len(), "misplaced": misplaced, "first_missing": missing.iter().take(10).collect::<Vec<_>>()})
}

/// Writes keyed records straight to Kafka with the bridge's producer settings, to tell the
/// broker's behaviour apart from the bridge's.
async fn produce(bootstrap: &str, topic: &str, records: usize) -> serde_json::Value {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "2")
        .create()
        .expect("producer");
    let mut deliveries = Vec::with_capacity(records);
    for n in 0..records {
        let key = format!("chat{:05}", n % CHATS);
        let id = format!("direct-{n}");
        let headers = rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
            key: "ce_id",
            value: Some(id.as_bytes()),
        });
        let delivery = producer
            .send_result(
                FutureRecord::to(topic)
                    .key(&key)
                    .payload(id.as_bytes())
                    .headers(headers),
            )
            .map_err(|(e, _)| e)
            .expect("queued");
        deliveries.push((id, delivery));
    }
    let mut tally = Tally::default();
    for (id, delivery) in deliveries {
        match delivery.await {
            Ok(Ok(d)) => tally
                .receipts
                .push(format!("{topic} {} {} {id}", d.partition, d.offset)),
            _ => *tally.statuses.entry("failed".into()).or_default() += 1,
        }
    }
    tally.latencies_us = vec![0; tally.receipts.len()];
    tally.report("produce", Duration::from_secs(1))
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| {
        args.get(i)
            .cloned()
            .unwrap_or_else(|| panic!("missing argument {i}; see the usage in examples/loadgen.rs"))
    };
    let number = |i: usize| arg(i).parse::<f64>().expect("a number");
    let report = match arg(0).as_str() {
        "closed" => {
            closed(
                arg(1),
                arg(2),
                number(3) as usize,
                Duration::from_secs_f64(number(4)),
            )
            .await
        }
        "open" => {
            open(
                arg(1),
                arg(2),
                number(3),
                Duration::from_secs_f64(number(4)),
            )
            .await
        }
        "verify" => verify(&arg(1), &arg(2), &arg(3)),
        "produce" => produce(&arg(1), &arg(2), number(3) as usize).await,
        other => panic!("unknown mode {other}"),
    };
    println!("{report}");
}
