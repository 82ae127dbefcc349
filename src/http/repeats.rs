//! Repeated deliveries answered once: the ids of the events this process stored within
//! `BRIDGE_DEDUP_WINDOW_S`, at most `BRIDGE_DEDUP_MAX_IDS` of them, each with where it was
//! stored, so that a sender retrying after a lost 202 gets the first answer and nothing is
//! published again.
//!
//! - An id is remembered only once its event is stored. One that is being stored is held by
//!   the request storing it ([`Pending`]); a repeat that arrives meanwhile waits for that
//!   outcome, within the publish deadline. An id whose store failed, or whose request went away,
//!   is forgotten at once: its record may not have landed, so a repeat publishes it again.
//! - What is kept per id is fixed in size: a 128-bit keyed hash of the id, never the id itself
//!   (a signed sender chooses its `webhook-id`, and its length), and the answer: topic (as an
//!   index), partition and offset or `spooled`, and when it was stored. With a key drawn at
//!   start, no sender can make two ids collide, and by chance they do with probability about
//!   2^-128 per pair.
//! - The ids are spread over [`SHARDS`] shards, each a hash map behind its own mutex with a FIFO
//!   of its stored ids, so a request takes one short lock twice (claim, then store). Each
//!   shard's map is allocated at start for twice its share of ids: hashbrown resizes a table
//!   more than half full once deletions have left tombstones, and this one never is, so it never
//!   grows or rehashes into a larger table under load, and [`Repeats::allocated_bytes`] is all
//!   it ever takes.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::{DedupSettings, Topics};
use crate::publish::{PublishError, Stored};

/// Shards of the memory, fewer when there are fewer ids than this.
pub const SHARDS: usize = 16;

/// The memory of stored event ids.
pub struct Repeats {
    shards: Box<[Mutex<Shard>]>,
    /// SipHash's key, drawn at start.
    hasher: RandomState,
    window_ms: u64,
    /// How long a repeat waits for its first delivery's outcome: the publish deadline.
    wait: Duration,
    /// Times are kept as milliseconds since this, in 8 bytes rather than an `Instant`'s 16.
    epoch: Instant,
    /// The topics an answer may name; an answer keeps the index.
    topics: Box<[Arc<str>]>,
}

impl std::fmt::Debug for Repeats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repeats")
            .field("shards", &self.shards.len())
            .field("window_ms", &self.window_ms)
            .finish_non_exhaustive()
    }
}

/// An id as remembered: `hash` places it in its shard's table, `check` picks the shard and
/// tells apart ids whose `hash` collides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    hash: u64,
    check: u64,
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// `Key::hash` is already a keyed hash: the table uses it as it is instead of hashing it again.
#[derive(Debug, Default)]
struct AsIs(u64);

impl Hasher for AsIs {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is ever called; this keeps the hasher total anyway.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Table = HashMap<Key, Slot, BuildHasherDefault<AsIs>>;

struct Shard {
    slots: Table,
    /// Stored ids, oldest first, with the time each was stored (an id stored again after its
    /// window has a newer entry; the older one no longer matches its slot and is skipped).
    stored: VecDeque<(Key, u64)>,
    /// Stored ids this shard remembers at most.
    max: usize,
    /// The table's buckets, as allocated at start (`HashMap::capacity` shrinks as tombstones
    /// take room, so it cannot tell them afterwards).
    buckets: usize,
}

enum Slot {
    /// Being stored by one request. Repeats that wait for it hold receivers of this sender:
    /// dropping it (the slot answered or removed) wakes them all, so no wake-up is lost.
    Storing(Option<watch::Sender<()>>),
    Stored(Answer),
}

/// Where the first delivery was stored: 24 bytes.
#[derive(Debug, Clone, Copy)]
struct Answer {
    offset: i64,
    at_ms: u64,
    partition: i32,
    topic: u8,
    spooled: bool,
}

/// A repeat's answer: the first delivery's.
#[derive(Debug, Clone)]
pub struct Remembered {
    pub topic: Arc<str>,
    pub stored: Stored,
    /// It came while the first was being stored, and waited for it.
    pub waited: bool,
}

/// What a request does with its event.
#[derive(Debug)]
pub enum Claim<'a> {
    /// No store of this id is remembered: the request stores it and says how that went.
    First(Pending<'a>),
    /// Stored already.
    Repeat(Remembered),
}

enum Seen {
    Claimed,
    Known(Answer),
    Storing(watch::Receiver<()>),
}

impl Repeats {
    /// Allocates the memory for `settings.max_ids`; `max_in_flight` ids may be being stored
    /// besides.
    pub fn new(
        settings: &DedupSettings,
        topics: &Topics,
        max_in_flight: usize,
        wait: Duration,
    ) -> Self {
        Self::with_shards(settings, topics, max_in_flight, wait, SHARDS)
    }

    /// As [`Repeats::new`], with `shards` shards (tests and the benchmark compare counts).
    #[doc(hidden)]
    pub fn with_shards(
        settings: &DedupSettings,
        topics: &Topics,
        max_in_flight: usize,
        wait: Duration,
        shards: usize,
    ) -> Self {
        let count = shards.clamp(1, settings.max_ids.max(1));
        let max = settings.max_ids / count;
        let storing = max_in_flight.div_ceil(count);
        let shards = (0..count)
            .map(|_| {
                let slots =
                    Table::with_capacity_and_hasher(2 * (max + storing), Default::default());
                Mutex::new(Shard {
                    buckets: buckets(slots.capacity()),
                    slots,
                    stored: VecDeque::with_capacity(max + 1),
                    max,
                })
            })
            .collect();
        Self {
            shards,
            hasher: RandomState::new(),
            window_ms: settings.window.as_millis().try_into().unwrap_or(u64::MAX),
            wait,
            epoch: Instant::now(),
            topics: topics.all().into_iter().cloned().collect(),
        }
    }

    /// The first answer of `id` if it is remembered; else the right to store it. While
    /// another request stores it, waits for that outcome, within the publish deadline (then
    /// the error says the event was not stored in time, as the publish would have).
    pub async fn claim(&self, id: &str) -> Result<Claim<'_>, PublishError> {
        let key = self.key(id);
        // Read from the clock only by a repeat that waits, not on every event's way.
        let mut deadline = None;
        loop {
            let mut first = match self.seen(key) {
                Seen::Claimed => return Ok(Claim::First(Pending { repeats: self, key })),
                Seen::Known(answer) => {
                    return Ok(Claim::Repeat(self.remembered(answer, deadline.is_some())));
                }
                Seen::Storing(first) => first,
            };
            let deadline = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + self.wait);
            // Resolves (with an error: nothing is ever sent) once the first's slot is answered
            // or removed; then the slot says which.
            if tokio::time::timeout_at(deadline, first.changed())
                .await
                .is_err()
            {
                return Err(PublishError::Timeout(self.wait));
            }
        }
    }

    fn seen(&self, key: Key) -> Seen {
        let mut shard = self.shard(key);
        let now = self.now_ms();
        shard.forget_expired(now, self.window_ms);
        match shard.slots.entry(key) {
            Entry::Vacant(vacant) => {
                vacant.insert(Slot::Storing(None));
                Seen::Claimed
            }
            Entry::Occupied(mut occupied) => match occupied.get_mut() {
                Slot::Stored(answer) if now.saturating_sub(answer.at_ms) < self.window_ms => {
                    Seen::Known(*answer)
                }
                slot @ Slot::Stored(_) => {
                    *slot = Slot::Storing(None);
                    Seen::Claimed
                }
                Slot::Storing(waiters) => Seen::Storing(
                    waiters
                        .get_or_insert_with(|| watch::channel(()).0)
                        .subscribe(),
                ),
            },
        }
    }

    fn remembered(&self, answer: Answer, waited: bool) -> Remembered {
        let topic = self.topics[usize::from(answer.topic)].clone();
        let stored = match answer.spooled {
            true => Stored::OnDisk,
            false => Stored::Kafka {
                partition: answer.partition,
                offset: answer.offset,
            },
        };
        Remembered {
            topic,
            stored,
            waited,
        }
    }

    /// Answers `key`'s slot; returns how many ids were forgotten early to make room.
    fn store(&self, key: Key, topic: &Arc<str>, stored: Stored) -> usize {
        let Some(topic) = self.topic_index(topic) else {
            self.forget(key);
            return 0;
        };
        let (partition, offset) = match stored {
            Stored::Kafka { partition, offset } => (partition, offset),
            Stored::OnDisk => (0, 0),
        };
        let mut shard = self.shard(key);
        // Taken under the lock, so that each shard's FIFO is in time order.
        let at_ms = self.now_ms();
        if let Some(slot) = shard.slots.get_mut(&key) {
            *slot = Slot::Stored(Answer {
                offset,
                at_ms,
                partition,
                topic,
                spooled: stored == Stored::OnDisk,
            });
            shard.stored.push_back((key, at_ms));
        }
        shard.forget_expired(at_ms, self.window_ms)
    }

    /// Removes `key`'s slot if it is still being stored: nothing is remembered of it.
    fn forget(&self, key: Key) {
        let mut shard = self.shard(key);
        if let Some(Slot::Storing(_)) = shard.slots.get(&key) {
            shard.slots.remove(&key);
        }
    }

    fn topic_index(&self, topic: &Arc<str>) -> Option<u8> {
        let index = self
            .topics
            .iter()
            .position(|t| Arc::ptr_eq(t, topic))
            .or_else(|| self.topics.iter().position(|t| t == topic))?;
        u8::try_from(index).ok()
    }

    /// Two keyed hashes of the id over distinct inputs (the second has a byte more), so two
    /// independent 64-bit halves under one secret key.
    fn key(&self, id: &str) -> Key {
        Key {
            hash: self.hasher.hash_one(id),
            check: self.hasher.hash_one((id, 1u8)),
        }
    }

    fn shard(&self, key: Key) -> MutexGuard<'_, Shard> {
        // `check`, not `hash`: the table places ids by `hash`'s low bits, which must not be
        // the same for every id of a shard.
        let index = (key.check % self.shards.len() as u64) as usize;
        // A panic cannot leave a shard half-changed: each change is one map operation.
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn now_ms(&self) -> u64 {
        self.epoch
            .elapsed()
            .as_millis()
            .try_into()
            .unwrap_or(u64::MAX)
    }

    /// Stored ids remembered now (in or past their window until the next store prunes them).
    pub fn remembered_ids(&self) -> usize {
        (0..self.shards.len())
            .map(|i| {
                let shard = self.shards[i]
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                shard
                    .slots
                    .values()
                    .filter(|slot| matches!(slot, Slot::Stored(_)))
                    .count()
            })
            .sum()
    }

    /// The bytes the memory holds, all allocated at start: each shard's table (its buckets of
    /// an id and its slot, a control byte per bucket and a group's worth more) and its FIFO.
    pub fn allocated_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
                shard.buckets * (size_of::<(Key, Slot)>() + 1)
                    + GROUP_WIDTH
                    + shard.stored.capacity() * size_of::<(Key, u64)>()
            })
            .sum()
    }

    /// The capacity of each shard's table, for the tests that keep it from growing: above
    /// what it was at start only if the table was reallocated.
    #[doc(hidden)]
    pub fn table_capacities(&self) -> Vec<usize> {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .slots
                    .capacity()
            })
            .collect()
    }
}

/// hashbrown's control bytes are scanned a group (an SSE2 register, 16 bytes; 8 elsewhere) at a
/// time; the table holds one group more than its buckets.
const GROUP_WIDTH: usize = 16;

/// The buckets of a fresh hashbrown table whose capacity is `capacity`: a power of two of which
/// it uses at most 7/8 (below 8 buckets, all but one).
fn buckets(capacity: usize) -> usize {
    match capacity {
        0 => 0,
        1..8 => (capacity + 1).next_power_of_two(),
        _ => capacity / 7 * 8,
    }
}

impl Shard {
    /// Forgets stored ids past the window, and the oldest beyond the count; returns how many
    /// of those were still within their window.
    fn forget_expired(&mut self, now: u64, window_ms: u64) -> usize {
        let mut early = 0;
        while let Some(&(key, at_ms)) = self.stored.front() {
            let expired = now.saturating_sub(at_ms) >= window_ms;
            if !expired && self.stored.len() <= self.max {
                break;
            }
            self.stored.pop_front();
            if let Some(Slot::Stored(answer)) = self.slots.get(&key)
                && answer.at_ms == at_ms
            {
                self.slots.remove(&key);
                early += usize::from(!expired);
            }
        }
        early
    }
}

/// The right to store an id, held while its event is being stored: repeats wait for it.
/// Dropped without [`Pending::stored`] (the store failed, or the request went away), the id is
/// forgotten and the repeats waiting for it go on to publish it themselves.
#[derive(Debug)]
pub struct Pending<'a> {
    repeats: &'a Repeats,
    key: Key,
}

impl Pending<'_> {
    /// The event is stored at `stored` in `topic`: remembered from now on. Returns how many ids
    /// were forgotten before their window to stay within the count.
    pub fn stored(self, topic: &Arc<str>, stored: Stored) -> usize {
        let forgotten = self.repeats.store(self.key, topic, stored);
        std::mem::forget(self);
        forgotten
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.repeats.forget(self.key);
    }
}

#[cfg(test)]
mod tests;
