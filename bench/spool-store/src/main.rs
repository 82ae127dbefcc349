//! Group-commit append throughput and latency of three candidate spool stores, on this disk.
//!
//! Each store sits behind the same group-commit driver the bridge uses: `W` writer threads
//! each append one ~1 KiB record and wait until it is durable; one committer thread takes
//! everything queued, writes it, makes it durable once, and answers the batch. So the stores
//! differ only in what one durable batch costs. After the appends, the forwarder's side is
//! timed: read every record back in order and reclaim the space.
//!
//! Usage: spool-store-bench [DIR] (default: a directory under the system temp dir).

use std::io::Write;

use redb::ReadableTable;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const RECORD: usize = 1024;
const SECONDS: u64 = 4;

trait Store: Send {
    /// Appends the batch and returns when it is durable.
    fn commit(&mut self, first_seq: u64, batch: &[Vec<u8>]);
    /// Reads everything back in order, then reclaims it; returns the records read.
    fn drain(&mut self) -> u64;
}

/// A batch as length + CRC-32 framed records, the segment log's format.
fn frames(batch: &[Vec<u8>]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(batch.len() * (RECORD + 8));
    for record in batch {
        buf.extend_from_slice(&(record.len() as u32).to_le_bytes());
        buf.extend_from_slice(&crc32fast::hash(record).to_le_bytes());
        buf.extend_from_slice(record);
    }
    buf
}

/// Reads a segment's frames back in order, checking each checksum, up to the end of the file
/// or a zero length (preallocated space), then deletes the file; returns the records read.
fn read_back(path: &Path) -> u64 {
    let bytes = std::fs::read(path).expect("read");
    let mut at = 0;
    let mut n = 0;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap());
        assert_eq!(crc32fast::hash(&bytes[at + 8..at + 8 + len]), crc);
        at += 8 + len;
        n += 1;
    }
    std::fs::remove_file(path).expect("reclaim");
    n
}

struct SegmentLog {
    file: std::fs::File,
    path: PathBuf,
}

impl SegmentLog {
    fn open(dir: &Path) -> Self {
        let path = dir.join("00000000000000000000.seg");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .expect("open segment");
        Self { file, path }
    }
}

impl Store for SegmentLog {
    fn commit(&mut self, _first_seq: u64, batch: &[Vec<u8>]) {
        let buf = frames(batch);
        self.file.write_all(&buf).expect("write");
        self.file.sync_data().expect("fdatasync");
    }

    fn drain(&mut self) -> u64 {
        read_back(&self.path)
    }
}

/// The segment log with its file zero-filled up front and overwritten in place: fdatasync
/// then flushes data only (no size change, no block allocation).
struct Preallocated {
    file: std::fs::File,
    path: PathBuf,
    len: u64,
}

/// Preallocated by `set_len` only: a sparse file of the segment's size.
fn sparse(dir: &Path) -> Preallocated {
    let path = dir.join("00000000000000000000.seg");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .read(true)
        .open(&path)
        .expect("open segment");
    file.set_len(PREALLOCATED).expect("set_len");
    file.sync_all().expect("sync");
    Preallocated { file, path, len: 0 }
}

const PREALLOCATED: u64 = 256 << 20;

impl Preallocated {
    fn open(dir: &Path) -> Self {
        let path = dir.join("00000000000000000000.seg");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .read(true)
            .open(&path)
            .expect("open segment");
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..(PREALLOCATED >> 20) {
            file.write_all(&zeros).expect("zero-fill");
        }
        file.sync_all().expect("sync");
        Self { file, path, len: 0 }
    }
}

impl Store for Preallocated {
    fn commit(&mut self, _first_seq: u64, batch: &[Vec<u8>]) {
        use std::os::unix::fs::FileExt;
        let buf = frames(batch);
        self.file.write_all_at(&buf, self.len).expect("write");
        self.file.sync_data().expect("fdatasync");
        self.len += buf.len() as u64;
    }

    fn drain(&mut self) -> u64 {
        read_back(&self.path)
    }
}

struct Fjall {
    keyspace: fjall::Keyspace,
    partition: fjall::PartitionHandle,
}

impl Store for Fjall {
    fn commit(&mut self, first_seq: u64, batch: &[Vec<u8>]) {
        let mut write = self.keyspace.batch();
        for (i, record) in batch.iter().enumerate() {
            write.insert(
                &self.partition,
                (first_seq + i as u64).to_be_bytes(),
                record.as_slice(),
            );
        }
        write.commit().expect("fjall commit");
        self.keyspace
            .persist(fjall::PersistMode::SyncData)
            .expect("fjall persist");
    }

    fn drain(&mut self) -> u64 {
        let mut n = 0;
        let keys: Vec<_> = self
            .partition
            .iter()
            .map(|kv| {
                n += 1;
                kv.expect("fjall read").0
            })
            .collect();
        for key in keys {
            self.partition.remove(key).expect("fjall remove");
        }
        self.keyspace
            .persist(fjall::PersistMode::SyncData)
            .expect("fjall persist");
        n
    }
}

struct Redb {
    db: redb::Database,
}

const TABLE: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("spool");

impl Store for Redb {
    fn commit(&mut self, first_seq: u64, batch: &[Vec<u8>]) {
        let tx = self.db.begin_write().expect("redb begin");
        {
            let mut table = tx.open_table(TABLE).expect("redb table");
            for (i, record) in batch.iter().enumerate() {
                table
                    .insert(first_seq + i as u64, record.as_slice())
                    .expect("redb insert");
            }
        }
        tx.commit().expect("redb commit");
    }

    fn drain(&mut self) -> u64 {
        let mut n = 0;
        let tx = self.db.begin_read().expect("redb read");
        let table = tx.open_table(TABLE).expect("redb table");
        for row in table.iter().expect("redb iter") {
            let _ = row.expect("redb row");
            n += 1;
        }
        drop(table);
        drop(tx);
        let tx = self.db.begin_write().expect("redb begin");
        {
            let mut table = tx.open_table(TABLE).expect("redb table");
            table.retain(|_, _| false).expect("redb delete");
        }
        tx.commit().expect("redb commit");
        n
    }
}

type Waiter = (Vec<u8>, mpsc::Sender<()>);

/// CPU seconds this process has used (user + system), from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn run(name: &str, mut store: Box<dyn Store>, writers: usize) {
    let cpu_before = cpu_seconds();
    let (tx, rx) = mpsc::channel::<Waiter>();
    let committer = std::thread::spawn(move || {
        let mut seq = 0u64;
        let mut batches = 0u64;
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
            let records: Vec<Vec<u8>> = batch.iter().map(|(r, _)| r.clone()).collect();
            store.commit(seq, &records);
            seq += records.len() as u64;
            batches += 1;
            for (_, done) in batch {
                let _ = done.send(());
            }
        }
        (store, seq, batches)
    });
    let stop = Instant::now() + Duration::from_secs(SECONDS);
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                let record = vec![b'a' + (w % 26) as u8; RECORD];
                while Instant::now() < stop {
                    let (done, wait) = mpsc::channel();
                    let started = Instant::now();
                    tx.send((record.clone(), done)).expect("committer gone");
                    wait.recv().expect("no answer");
                    latencies.push(started.elapsed());
                }
                latencies
            })
        })
        .collect();
    drop(tx);
    let mut latencies: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("writer"))
        .collect();
    let (mut store, appended, batches) = committer.join().expect("committer");
    let cpu = cpu_seconds() - cpu_before;
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let drain_started = Instant::now();
    let drained = store.drain();
    let drain = drain_started.elapsed();
    assert_eq!(drained, appended, "{name}: read back fewer than appended");
    println!(
        "{name:<9} writers {writers:>3}: {:>7.0} appends/s, {:>5.1} per fsync, {:>5.0} us CPU per fsync, p50 {:>6.2} ms, p99 {:>6.2} ms; read back + reclaim {:>7.0} records/s",
        appended as f64 / SECONDS as f64,
        appended as f64 / batches as f64,
        cpu * 1e6 / batches as f64,
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        drained as f64 / drain.as_secs_f64(),
    );
}

fn main() {
    let base = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("spool-store-bench"));
    for writers in [1, 16, 256] {
        for name in ["segment", "prealloc", "sparse", "fjall", "redb"] {
            let dir = base.join(format!("{name}-{writers}"));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("bench dir");
            let store: Box<dyn Store> = match name {
                "segment" => Box::new(SegmentLog::open(&dir)),
                "prealloc" => Box::new(Preallocated::open(&dir)),
                "sparse" => Box::new(sparse(&dir)),
                "fjall" => {
                    let keyspace = fjall::Config::new(&dir).open().expect("fjall open");
                    let partition = keyspace
                        .open_partition("spool", Default::default())
                        .expect("fjall partition");
                    Box::new(Fjall {
                        keyspace,
                        partition,
                    })
                }
                _ => Box::new(Redb {
                    db: redb::Database::create(dir.join("spool.redb")).expect("redb open"),
                }),
            };
            run(name, store, writers);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
