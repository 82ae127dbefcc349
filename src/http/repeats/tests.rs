use super::*;

fn topics() -> Topics {
    Topics {
        messages: "m".into(),
        interactions: "i".into(),
        orders: "o".into(),
        other: "x".into(),
        deadletter: "d".into(),
    }
}

fn memory(window: Duration, max_ids: usize, shards: usize) -> (Repeats, Topics) {
    let topics = topics();
    let settings = DedupSettings { window, max_ids };
    let repeats = Repeats::with_shards(&settings, &topics, 64, Duration::from_secs(5), shards);
    (repeats, topics)
}

const MINUTE: Duration = Duration::from_secs(60);
const PLACE: Stored = Stored::Kafka {
    partition: 3,
    offset: 42,
};

async fn first<'a>(repeats: &'a Repeats, id: &str) -> Pending<'a> {
    match repeats.claim(id).await {
        Ok(Claim::First(pending)) => pending,
        other => panic!("{id}: expected to be first, got {other:?}"),
    }
}

async fn repeat(repeats: &Repeats, id: &str) -> Remembered {
    match repeats.claim(id).await {
        Ok(Claim::Repeat(first)) => first,
        other => panic!("{id}: expected a repeat, got {other:?}"),
    }
}

#[test]
fn an_id_and_its_answer_take_forty_bytes_in_the_table_and_twenty_four_in_the_fifo() {
    // The README's figure per id is made of these; a field added here must move it.
    assert_eq!(size_of::<Answer>(), 24);
    assert_eq!(
        size_of::<(Key, Slot)>(),
        40,
        "the slot's tag sits in a niche"
    );
    assert_eq!(size_of::<(Key, u64)>(), 24);
}

#[tokio::test]
async fn a_stored_id_is_answered_with_its_first_place_and_topic() {
    let (repeats, topics) = memory(MINUTE, 100, SHARDS);
    first(&repeats, "a").await.stored(&topics.orders, PLACE);
    let again = repeat(&repeats, "a").await;
    assert_eq!(
        (&*again.topic, again.stored, again.waited),
        ("o", PLACE, false)
    );
    first(&repeats, "b")
        .await
        .stored(&topics.messages, Stored::OnDisk);
    let spooled = repeat(&repeats, "b").await;
    assert_eq!((&*spooled.topic, spooled.stored), ("m", Stored::OnDisk));
}

#[tokio::test]
async fn an_id_whose_store_failed_is_forgotten_at_once() {
    let (repeats, _) = memory(MINUTE, 100, SHARDS);
    drop(first(&repeats, "a").await);
    let _published_again = first(&repeats, "a").await;
}

#[tokio::test]
async fn a_repeat_during_the_store_waits_for_its_outcome() {
    let (repeats, topics) = memory(MINUTE, 100, SHARDS);
    let pending = first(&repeats, "a").await;
    let mut waiting = std::pin::pin!(repeats.claim("a"));
    assert!(futures_util::poll!(&mut waiting).is_pending(), "it waits");
    pending.stored(&topics.interactions, PLACE);
    match waiting.await {
        Ok(Claim::Repeat(first)) => {
            assert_eq!(
                (&*first.topic, first.stored, first.waited),
                ("i", PLACE, true)
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn repeats_waiting_for_a_store_that_fails_store_it_themselves_once() {
    let (repeats, topics) = memory(MINUTE, 100, SHARDS);
    let pending = first(&repeats, "a").await;
    let mut one = std::pin::pin!(repeats.claim("a"));
    let mut two = std::pin::pin!(repeats.claim("a"));
    assert!(futures_util::poll!(&mut one).is_pending());
    assert!(futures_util::poll!(&mut two).is_pending());
    drop(pending);
    // One of them takes the store over; the other waits for it in turn.
    let taker = match one.await {
        Ok(Claim::First(pending)) => pending,
        other => panic!("{other:?}"),
    };
    assert!(futures_util::poll!(&mut two).is_pending());
    taker.stored(&topics.orders, PLACE);
    assert!(matches!(two.await, Ok(Claim::Repeat(_))));
}

#[tokio::test(start_paused = true)]
async fn a_repeat_waits_no_longer_than_the_publish_deadline() {
    let (repeats, _) = memory(MINUTE, 100, SHARDS);
    let _stuck = first(&repeats, "a").await;
    let started = tokio::time::Instant::now();
    let waited = repeats.claim("a").await;
    assert!(
        matches!(waited, Err(PublishError::Timeout(d)) if d == Duration::from_secs(5)),
        "{waited:?}"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(5));
}

#[tokio::test]
async fn an_id_is_forgotten_once_its_window_has_passed() {
    let (repeats, topics) = memory(Duration::from_millis(50), 100, SHARDS);
    first(&repeats, "a").await.stored(&topics.orders, PLACE);
    repeat(&repeats, "a").await;
    // Sleeps past the window: what is tested is time passing.
    tokio::time::sleep(Duration::from_millis(60)).await;
    first(&repeats, "a").await.stored(&topics.orders, PLACE);
    repeat(&repeats, "a").await;
}

#[tokio::test]
async fn past_the_count_the_oldest_ids_are_forgotten_first() {
    let (repeats, topics) = memory(MINUTE, 3, 1);
    for id in ["a", "b", "c"] {
        assert_eq!(first(&repeats, id).await.stored(&topics.orders, PLACE), 0);
    }
    assert_eq!(first(&repeats, "d").await.stored(&topics.orders, PLACE), 1);
    for id in ["b", "c", "d"] {
        repeat(&repeats, id).await;
    }
    let _a_is_new_again = first(&repeats, "a").await;
}

#[tokio::test]
async fn a_flood_of_distinct_ids_stays_within_the_count_and_the_memory_allocated_at_start() {
    let (repeats, topics) = memory(MINUTE, 1_000, SHARDS);
    let (capacities, bytes) = (repeats.table_capacities(), repeats.allocated_bytes());
    let mut forgotten = 0;
    for n in 0..50_000 {
        let id = format!("flood-{n}");
        forgotten += first(&repeats, &id).await.stored(&topics.messages, PLACE);
    }
    let remembered = repeats.remembered_ids();
    // Each shard holds its share, 1,000 / 16 rounded down.
    assert_eq!(remembered, 62 * SHARDS);
    assert_eq!(forgotten, 50_000 - remembered);
    for (before, after) in capacities.iter().zip(repeats.table_capacities()) {
        assert!(after <= *before, "a table grew from {before} to {after}");
    }
    assert_eq!(repeats.allocated_bytes(), bytes);
    repeat(&repeats, "flood-49999").await;
}

/// Resident memory of this process, from /proc.
fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<usize>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

const RSS_CHILD: &str = "OMNICHAT_REPEATS_RSS_CHILD";

/// Measured in a process of its own (this test binary again, running only this test), since
/// the tests running beside it would move the process's RSS.
#[test]
fn the_default_memory_measured_in_rss_is_what_it_computes() {
    if std::env::var_os(RSS_CHILD).is_none() {
        let exe = std::env::current_exe().expect("test binary");
        let output = std::process::Command::new(exe)
            .args([
                "http::repeats::tests::the_default_memory_measured_in_rss_is_what_it_computes",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(RSS_CHILD, "1")
            .output()
            .expect("the child runs");
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        eprintln!("{text}");
        assert!(output.status.success(), "{text}");
        assert!(
            text.contains("1 passed"),
            "the child ran the measurement: {text}"
        );
        return;
    }
    let defaults = crate::config::Settings::from_vars(
        [
            ("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9"),
            ("BRIDGE_AUTH_TOKENS", "0123456789abcdef0123"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    )
    .expect("defaults");
    let settings = defaults.dedup.expect("on by default");
    let topics = topics();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let before = rss_bytes();
    let repeats = Repeats::new(&settings, &topics, defaults.max_in_flight, MINUTE);
    runtime.block_on(async {
        // Three times the count: every shard full, its oldest ids forgotten again and again.
        for n in 0..3 * settings.max_ids {
            let id = format!("{n:036}");
            first(&repeats, &id).await.stored(&topics.messages, PLACE);
        }
    });
    let grown = rss_bytes().saturating_sub(before);
    let computed = repeats.allocated_bytes();
    eprintln!(
        "{} ids: computed {computed} bytes ({} per id), RSS grew {grown} bytes",
        settings.max_ids,
        computed / settings.max_ids
    );
    assert!(
        grown <= computed + computed / 10 + (1 << 20),
        "RSS grew {grown} bytes, more than the {computed} computed"
    );
    assert!(
        grown >= computed * 8 / 10,
        "RSS grew {grown} bytes, far less than the {computed} computed: the figure is wrong"
    );
}
