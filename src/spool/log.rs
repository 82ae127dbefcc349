//! The spool's on-disk format: numbered segment files of checksummed frames, and a checkpoint.
//!
//! A segment (`00000000000000000007.seg`) starts with a 16-byte header: the magic `OCBSPOOL`,
//! the format version (u32, little-endian) and 4 reserved bytes. Frames follow, each the
//! payload's length (u32 LE), its CRC-32 (u32 LE), and the payload: one record, as the
//! accepted-at time (u64 LE, milliseconds since the epoch), then topic, key, headers and value,
//! each prefixed by its length. A frame counts only when it is complete and its checksum
//! matches. Only the newest segment may end in a partial frame (a crash mid-write, never
//! acknowledged), which recovery cuts off; anything else that is not a frame is damage to
//! acknowledged records, which stops the start (or, with `BRIDGE_SPOOL_ON_DAMAGE=set-aside`,
//! moves the segment to `quarantine/` and keeps the records before the damage).
//!
//! The checkpoint (`checkpoint`) names the position of the first record not yet acknowledged
//! by Kafka, with its own checksum. Losing an update only means records are sent again, never
//! that one is skipped, so it is written without an fsync (see [`write_checkpoint`]).

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::OnDamage;
use crate::publish::Record;

/// The format this version writes and reads. A spool written in another version is refused at
/// start, naming the file, rather than misread.
pub const FORMAT_VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"OCBSPOOL";
pub const HEADER_LEN: u64 = 16;
const FRAME_HEAD: usize = 8;
const CHECKPOINT: &str = "checkpoint";
const CHECKPOINT_MAGIC: &[u8; 8] = b"OCBCKPT1";
const CHECKPOINT_LEN: usize = 28;
const LOCK: &str = "spool.lock";
/// Where damaged segments and records Kafka refused for good are set aside.
pub const QUARANTINE: &str = "quarantine";
/// No single record comes near this; a larger length field is a torn or corrupt frame.
const MAX_FRAME: usize = 256 << 20;

/// A place in the log: a segment and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

impl Position {
    pub(crate) fn start_of(segment: u64) -> Self {
        Self {
            segment,
            offset: HEADER_LEN,
        }
    }
}

/// Why the spool directory cannot be used. Shown as one line at start.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("{dir} is in use by another bridge process (one spool per replica)")]
    Locked { dir: PathBuf },
    #[error(
        "{path}: damaged at byte {offset} ({what}), and acknowledged records may follow it; \
         start refused. Restore the file, or set BRIDGE_SPOOL_ON_DAMAGE=set-aside to move the \
         segment to quarantine/ and go on"
    )]
    Damaged {
        path: PathBuf,
        offset: u64,
        what: &'static str,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_owned(),
        source,
    }
}

pub fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}.seg"))
}

/// Encodes a record as one frame, ready to append.
pub fn encode(record: &Record, accepted_ms: u64) -> Vec<u8> {
    let mut frame = Vec::with_capacity(FRAME_HEAD + 64 + record.size());
    frame.extend_from_slice(&[0; FRAME_HEAD]);
    frame.extend_from_slice(&accepted_ms.to_le_bytes());
    put(&mut frame, record.topic.as_bytes());
    put(&mut frame, record.key.as_bytes());
    frame.extend_from_slice(&(record.headers.len() as u32).to_le_bytes());
    for (name, value) in &record.headers {
        put(&mut frame, name.as_bytes());
        put(&mut frame, value.as_bytes());
    }
    put(&mut frame, &record.value);
    let length = (frame.len() - FRAME_HEAD) as u32;
    let crc = crc32fast::hash(&frame[FRAME_HEAD..]);
    frame[..4].copy_from_slice(&length.to_le_bytes());
    frame[4..FRAME_HEAD].copy_from_slice(&crc.to_le_bytes());
    frame
}

fn put(frame: &mut Vec<u8>, bytes: &[u8]) {
    frame.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    frame.extend_from_slice(bytes);
}

/// A record read back, with when it was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub accepted_ms: u64,
    pub record: Record,
}

/// Header names the bridge writes; read back as constants rather than allocated per record.
const KNOWN_HEADERS: [&str; 10] = [
    "ce_specversion",
    "ce_id",
    "ce_source",
    "ce_type",
    "ce_time",
    "ce_subject",
    "content-type",
    "traceparent",
    "error_code",
    "error_message",
];

/// Decodes a payload whose checksum matched. `topics` keeps the topic names seen, so records
/// share them instead of allocating each.
fn decode(payload: &[u8], topics: &mut Vec<Arc<str>>) -> Option<Entry> {
    let mut rest = payload;
    let accepted_ms = u64::from_le_bytes(take(&mut rest, 8)?.try_into().ok()?);
    let topic = std::str::from_utf8(take_field(&mut rest)?).ok()?;
    let topic = match topics.iter().find(|known| &***known == topic) {
        Some(known) => known.clone(),
        None => {
            let fresh: Arc<str> = Arc::from(topic);
            topics.push(fresh.clone());
            fresh
        }
    };
    let key = text(take_field(&mut rest)?)?;
    let count = u32::from_le_bytes(take(&mut rest, 4)?.try_into().ok()?) as usize;
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let name = std::str::from_utf8(take_field(&mut rest)?).ok()?;
        let name = match KNOWN_HEADERS.iter().find(|known| **known == name) {
            Some(known) => Cow::Borrowed(*known),
            None => Cow::Owned(name.to_owned()),
        };
        let value = text(take_field(&mut rest)?)?;
        headers.push((name, Cow::Owned(value)));
    }
    let value = take_field(&mut rest)?.to_vec();
    rest.is_empty().then_some(Entry {
        accepted_ms,
        record: Record {
            topic,
            key,
            headers,
            value,
        },
    })
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if rest.len() < n {
        return None;
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Some(head)
}

fn take_field<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let n = u32::from_le_bytes(take(rest, 4)?.try_into().ok()?) as usize;
    take(rest, n)
}

fn text(bytes: &[u8]) -> Option<String> {
    String::from_utf8(bytes.to_vec()).ok()
}

/// What the bytes at a position hold.
enum Parsed {
    /// A whole, intact record and the frame's size.
    Frame(Entry, u64),
    /// Not enough bytes yet: at least this many are needed.
    Incomplete(usize),
    /// A zero length and checksum: nothing was written here (or zeros after a power loss).
    Zeros,
    /// Not a frame: an impossible length, a checksum that does not match, or a record that
    /// does not decode.
    Corrupt(&'static str),
}

fn parse_frame(bytes: &[u8], topics: &mut Vec<Arc<str>>) -> Parsed {
    let Some(head) = bytes.get(..FRAME_HEAD) else {
        return Parsed::Incomplete(FRAME_HEAD);
    };
    let length = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if length == 0 {
        return if crc == 0 {
            Parsed::Zeros
        } else {
            Parsed::Corrupt("an empty frame")
        };
    }
    if length > MAX_FRAME {
        return Parsed::Corrupt("an impossible frame length");
    }
    let Some(payload) = bytes.get(FRAME_HEAD..FRAME_HEAD + length) else {
        return Parsed::Incomplete(FRAME_HEAD + length);
    };
    if crc32fast::hash(payload) != crc {
        return Parsed::Corrupt("a checksum that does not match");
    }
    match decode(payload, topics) {
        Some(entry) => Parsed::Frame(entry, (FRAME_HEAD + length) as u64),
        None => Parsed::Corrupt("a record that does not decode"),
    }
}

/// What a [`FrameReader`] finds at an offset.
enum Found {
    Frame(Entry, u64),
    /// Nothing at all before the limit: the end of what was written.
    End,
    /// Part of a frame, then the end: a write cut short.
    Torn,
    Zeros,
    Corrupt(&'static str),
}

/// How much a [`FrameReader`] reads at once.
const READ_CHUNK: usize = 256 << 10;

/// Reads frames from one segment file with positioned reads. Its buffer never holds bytes
/// past the limit it is given (the committed end), so what it serves was fully written.
#[derive(Debug)]
struct FrameReader {
    file: File,
    buffer: Vec<u8>,
    /// The file offset of `buffer[0]`.
    start: u64,
}

impl FrameReader {
    fn new(file: File) -> Self {
        Self {
            file,
            buffer: Vec::new(),
            start: 0,
        }
    }

    /// The frame at `offset`, reading nothing at or past `limit`.
    fn frame_at(
        &mut self,
        offset: u64,
        limit: u64,
        topics: &mut Vec<Arc<str>>,
    ) -> io::Result<Found> {
        loop {
            let buffered = offset
                .checked_sub(self.start)
                .and_then(|skip| self.buffer.get(skip as usize..))
                .unwrap_or_default();
            let have = buffered.len();
            let needed = match parse_frame(buffered, topics) {
                Parsed::Incomplete(needed) => needed,
                Parsed::Frame(entry, len) => return Ok(Found::Frame(entry, len)),
                Parsed::Zeros => return Ok(Found::Zeros),
                Parsed::Corrupt(what) => return Ok(Found::Corrupt(what)),
            };
            let end_here = |have: usize| if have == 0 { Found::End } else { Found::Torn };
            let want = (needed.max(READ_CHUNK) as u64).min(limit.saturating_sub(offset)) as usize;
            if want <= have {
                // Nothing more may be read: the end of what is committed.
                return Ok(end_here(have));
            }
            self.buffer.resize(want, 0);
            let mut read = 0;
            while read < want {
                match self
                    .file
                    .read_at(&mut self.buffer[read..], offset + read as u64)
                {
                    Ok(0) => break,
                    Ok(n) => read += n,
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(error) => return Err(error),
                }
            }
            self.buffer.truncate(read);
            self.start = offset;
            if read <= have {
                // The end of the file: cleanly between frames, or inside a torn one.
                return Ok(end_here(read));
            }
        }
    }

    /// Whether every byte from `offset` to the end of the file is zero.
    fn zeros_from(&self, offset: u64) -> io::Result<bool> {
        let mut chunk = vec![0; READ_CHUNK];
        let mut at = offset;
        loop {
            let n = match self.file.read_at(&mut chunk, at) {
                Ok(0) => return Ok(true),
                Ok(n) => n,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            };
            if chunk[..n].iter().any(|&b| b != 0) {
                return Ok(false);
            }
            at += n as u64;
        }
    }
}

fn write_header(file: &mut File) -> io::Result<()> {
    let mut header = [0u8; HEADER_LEN as usize];
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    file.write_all(&header)
}

/// Checks a segment's header; `Ok(false)` when the file is too short to have one (a crash
/// while it was being created, before anything was acknowledged from it).
fn check_header(path: &Path, file: &mut File) -> Result<bool, LogError> {
    let mut header = [0u8; HEADER_LEN as usize];
    match file.read_exact(&mut header) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(error) => return Err(io_error(path)(error)),
    }
    if &header[..8] != MAGIC {
        return Err(LogError::Format {
            path: path.to_owned(),
            reason: "not a spool segment (no OCBSPOOL header); move it out of BRIDGE_SPOOL_DIR"
                .to_owned(),
        });
    }
    let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if version != FORMAT_VERSION {
        return Err(LogError::Format {
            path: path.to_owned(),
            reason: format!(
                "written in spool format version {version}; this bridge reads version \
                 {FORMAT_VERSION}. Let the version that wrote it drain the spool first"
            ),
        });
    }
    Ok(true)
}

/// Makes a directory entry (a created, renamed or removed file) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// What recovery found in the spool directory.
#[derive(Debug)]
pub struct Recovered {
    /// Holds the directory for this process until it exits.
    pub lock: File,
    /// Where forwarding resumes.
    pub start: Position,
    /// Records from `start` to the end of the log.
    pub records: u64,
    /// Bytes of all segment files kept.
    pub bytes: u64,
    /// The segment new records go to: one past the last, so recovered segments stay sealed,
    /// and past the one forwarding resumes in.
    pub next_segment: u64,
    /// Bytes cut off the newest segment's torn tail.
    pub cut_bytes: u64,
    /// Damaged segments moved to the quarantine (with `BRIDGE_SPOOL_ON_DAMAGE=set-aside`).
    pub set_aside_segments: u64,
}

/// Opens the spool directory: takes its lock, checks every segment, cuts the newest
/// segment's torn tail, and counts what is still to be forwarded. Any other damage is handled
/// as `on_damage` says. Writes nothing new, so a full volume still starts (and drains).
pub fn recover(dir: &Path, on_damage: OnDamage) -> Result<Recovered, LogError> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let lock_path = dir.join(LOCK);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_error(&lock_path))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(LogError::Locked {
                dir: dir.to_owned(),
            });
        }
        Err(std::fs::TryLockError::Error(error)) => return Err(io_error(&lock_path)(error)),
    }

    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name();
        let Some(index) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        segments.push(index);
    }
    segments.sort_unstable();

    let checkpoint = read_checkpoint(dir);
    let mut start = match checkpoint {
        Some(position) => position,
        None => Position::start_of(segments.first().copied().unwrap_or(0)),
    };
    let mut recovered = Recovered {
        lock,
        start,
        records: 0,
        bytes: 0,
        next_segment: segments.last().map_or(0, |last| last + 1),
        cut_bytes: 0,
        set_aside_segments: 0,
    };
    let mut removed = false;
    for &segment in &segments {
        let path = segment_path(dir, segment);
        // Fully forwarded before the crash, not yet reclaimed.
        if segment < start.segment {
            std::fs::remove_file(&path).map_err(io_error(&path))?;
            removed = true;
            continue;
        }
        let newest = Some(&segment) == segments.last();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_error(&path))?;
        if !check_header(&path, &mut file)? {
            // Shorter than a header: it never held a record.
            drop(file);
            std::fs::remove_file(&path).map_err(io_error(&path))?;
            removed = true;
            continue;
        }
        let file_len = file.metadata().map_err(io_error(&path))?.len();
        let mut reader = FrameReader::new(file);
        // Records before the checkpoint were forwarded: reading starts where forwarding does.
        let mut offset = if segment == start.segment {
            start.offset.clamp(HEADER_LEN, file_len.max(HEADER_LEN))
        } else {
            HEADER_LEN
        };
        let mut topics = Vec::new();
        let damage = loop {
            match reader
                .frame_at(offset, file_len, &mut topics)
                .map_err(io_error(&path))?
            {
                Found::Frame(_, len) => {
                    recovered.records += 1;
                    offset += len;
                }
                Found::End => break None,
                // A crash mid-write leaves a partial frame, only ever in the newest segment.
                Found::Torn if newest => {
                    tracing::warn!(
                        segment = %path.display(),
                        valid_bytes = offset,
                        cut_bytes = file_len - offset,
                        "Spool segment ends in a partial record (a crash mid-write, never acknowledged); cut it off"
                    );
                    recovered.cut_bytes += file_len - offset;
                    break None;
                }
                Found::Torn => break Some("a partial record at the end of a sealed segment"),
                // Space a power loss extended but no fsync completed for: never acknowledged.
                Found::Zeros if newest && reader.zeros_from(offset).map_err(io_error(&path))? => {
                    tracing::debug!(segment = %path.display(), "Trimmed a zero-filled tail");
                    break None;
                }
                Found::Zeros => break Some("zeros where a record should be"),
                Found::Corrupt(what) => break Some(what),
            }
        };
        if let Some(what) = damage {
            set_aside_or_refuse(dir, &path, &reader.file, offset, what, on_damage)?;
            recovered.set_aside_segments += 1;
        }
        if offset < file_len {
            reader.file.set_len(offset).map_err(io_error(&path))?;
            reader.file.sync_all().map_err(io_error(&path))?;
        }
        if segment == start.segment && start.offset > offset {
            // The checkpoint points past what is readable: nothing there to resume.
            start.offset = offset;
        }
        recovered.bytes += offset;
    }
    if removed {
        sync_dir(dir).map_err(io_error(dir))?;
    }
    recovered.start = start;
    // Never below where forwarding resumes: a record written there would never be read.
    recovered.next_segment = recovered.next_segment.max(start.segment + 1);
    Ok(recovered)
}

/// Damage anywhere but a torn tail: acknowledged records may be lost, so the start stops,
/// unless the operator chose to go on. Then the whole segment, as found, is copied to the
/// quarantine (durably) before the caller cuts it at the damage, so that the records before it
/// are still forwarded and those after it can be salvaged by hand.
fn set_aside_or_refuse(
    dir: &Path,
    path: &Path,
    file: &File,
    offset: u64,
    what: &'static str,
    on_damage: OnDamage,
) -> Result<(), LogError> {
    if on_damage == OnDamage::Refuse {
        return Err(LogError::Damaged {
            path: path.to_owned(),
            offset,
            what,
        });
    }
    let quarantine = dir.join(QUARANTINE);
    std::fs::create_dir_all(&quarantine).map_err(io_error(&quarantine))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("segment");
    let copy = quarantine.join(format!("damaged-at-{offset}-{name}"));
    let mut target = File::create(&copy).map_err(io_error(&copy))?;
    let mut source = file.try_clone().map_err(io_error(path))?;
    io::Seek::seek(&mut source, io::SeekFrom::Start(0)).map_err(io_error(path))?;
    io::copy(&mut source, &mut target).map_err(io_error(&copy))?;
    target.sync_all().map_err(io_error(&copy))?;
    sync_dir(&quarantine).map_err(io_error(&quarantine))?;
    tracing::error!(
        segment = %path.display(),
        offset,
        quarantined = %copy.display(),
        "Spool segment damaged ({what}); moved to the quarantine, forwarding the records before the damage"
    );
    Ok(())
}

fn read_checkpoint(dir: &Path) -> Option<Position> {
    let path = dir.join(CHECKPOINT);
    let bytes = std::fs::read(&path).ok()?;
    let valid = bytes.len() == CHECKPOINT_LEN
        && &bytes[..8] == CHECKPOINT_MAGIC
        && crc32fast::hash(&bytes[..24]).to_le_bytes() == bytes[24..28];
    if !valid {
        tracing::warn!(
            path = %path.display(),
            "Spool checkpoint unreadable; forwarding from the oldest segment (some records are sent again)"
        );
        return None;
    }
    let number = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
    Some(Position {
        segment: number(8),
        offset: number(16),
    })
}

/// Records `position` as the first record not yet acknowledged. Overwritten in place and not
/// fsynced: a checkpoint only saves sending records again, so it is not worth an fsync that
/// would queue in front of the writer's. A process crash keeps it (it is in the page cache); a
/// power loss may leave it stale or torn, and then more records are sent again.
pub fn write_checkpoint(dir: &Path, position: Position) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(CHECKPOINT_LEN);
    bytes.extend_from_slice(CHECKPOINT_MAGIC);
    bytes.extend_from_slice(&position.segment.to_le_bytes());
    bytes.extend_from_slice(&position.offset.to_le_bytes());
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(CHECKPOINT))?
        .write_all_at(&bytes, 0)
}

/// Why an append was not stored.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The volume has no room (ENOSPC, or a quota): nothing of the batch was kept, and the
    /// spool goes on once forwarding frees space.
    #[error("the spool's volume is full: {0}")]
    NoSpace(io::Error),
    /// Any other failure: what is on disk is unknown until recovery reads it again.
    #[error("{0}")]
    Io(io::Error),
}

fn is_no_space(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// Appends frames to the newest segment, rolling to a new one when it is full. Segments are
/// created when the first record needs one, so a start on a full volume writes nothing.
#[derive(Debug)]
pub struct SegmentWriter {
    dir: PathBuf,
    /// The segment written to, or the one the next append creates.
    segment: u64,
    file: Option<File>,
    len: u64,
    segment_bytes: u64,
}

impl SegmentWriter {
    /// A writer whose first append creates segment `segment`.
    pub fn new(dir: &Path, segment: u64, segment_bytes: u64) -> Self {
        Self {
            dir: dir.to_owned(),
            segment,
            file: None,
            len: HEADER_LEN,
            segment_bytes,
        }
    }

    /// Creates segment `segment`; its header and directory entry are durable on return. A
    /// failed creation leaves no file behind (best effort: recovery removes a headerless one).
    fn open(&mut self, segment: u64) -> io::Result<()> {
        let path = segment_path(&self.dir, segment);
        let created = (|| {
            let mut file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&path)?;
            write_header(&mut file)?;
            file.sync_all()?;
            sync_dir(&self.dir)?;
            Ok(file)
        })();
        match created {
            Ok(file) => {
                self.segment = segment;
                self.file = Some(file);
                self.len = HEADER_LEN;
                Ok(())
            }
            Err(error) => {
                let _ = std::fs::remove_file(&path);
                Err(error)
            }
        }
    }

    /// Appends `frames` and fsyncs them; returns the end of the log and the bytes the files
    /// grew by (a new segment's header included).
    pub fn append(&mut self, frames: &[u8]) -> Result<(Position, u64), AppendError> {
        let mut grown = 0;
        let next = match &self.file {
            None => Some(self.segment),
            // The old segment is complete and synced; records go on in a new one.
            Some(_) if self.len >= self.segment_bytes => Some(self.segment + 1),
            Some(_) => None,
        };
        if let Some(segment) = next {
            self.open(segment)
                .map_err(|error| match is_no_space(&error) {
                    true => AppendError::NoSpace(error),
                    false => AppendError::Io(error),
                })?;
            grown += HEADER_LEN;
        }
        let Some(file) = &self.file else {
            return Err(AppendError::Io(io::Error::other("no segment open")));
        };
        if let Err(error) = file.write_all_at(frames, self.len) {
            // Part of the batch may be on disk; cut it so the segment ends at its last frame.
            let cut = file.set_len(self.len);
            return Err(match (is_no_space(&error), cut) {
                (true, Ok(())) => {
                    // Sealed as it is: once forwarded it can be deleted, which frees the
                    // space; the next append starts a new segment.
                    self.file = None;
                    self.segment += 1;
                    self.len = HEADER_LEN;
                    AppendError::NoSpace(error)
                }
                _ => AppendError::Io(error),
            });
        }
        file.sync_data().map_err(AppendError::Io)?;
        self.len += frames.len() as u64;
        grown += frames.len() as u64;
        Ok((self.end(), grown))
    }

    /// The end of what is durable: where the reader stops.
    pub fn end(&self) -> Position {
        Position {
            segment: self.segment,
            offset: self.len,
        }
    }
}

/// Reads records in log order for the forwarder, up to the end the writer has made durable.
#[derive(Debug)]
pub struct SegmentReader {
    dir: PathBuf,
    position: Position,
    file: Option<FrameReader>,
    topics: Vec<Arc<str>>,
}

impl SegmentReader {
    pub fn new(dir: &Path, position: Position) -> Self {
        Self {
            dir: dir.to_owned(),
            position,
            file: None,
            topics: Vec::new(),
        }
    }

    /// The position after the last record read.
    pub fn position(&self) -> Position {
        self.position
    }

    /// Goes back to `position` (to send again from there).
    pub fn seek(&mut self, position: Position) {
        self.position = position;
        self.file = None;
    }

    /// The next record before `end`, with the position after it.
    pub fn next(&mut self, end: Position) -> io::Result<Option<(Entry, Position)>> {
        loop {
            if self.position >= end {
                return Ok(None);
            }
            let file = match &mut self.file {
                Some(file) => file,
                None => {
                    let path = segment_path(&self.dir, self.position.segment);
                    let file = match File::open(&path) {
                        Ok(file) => file,
                        Err(error) if error.kind() == io::ErrorKind::NotFound => {
                            self.position = Position::start_of(self.position.segment + 1);
                            continue;
                        }
                        Err(error) => return Err(error),
                    };
                    self.position.offset = self.position.offset.max(HEADER_LEN);
                    self.file.insert(FrameReader::new(file))
                }
            };
            // In the segment being written, nothing past the committed end is read.
            let limit = if self.position.segment == end.segment {
                end.offset
            } else {
                u64::MAX
            };
            let found = file.frame_at(self.position.offset, limit, &mut self.topics)?;
            let what = match found {
                Found::Frame(entry, len) => {
                    self.position.offset += len;
                    return Ok(Some((entry, self.position)));
                }
                Found::End if self.position.segment < end.segment => {
                    self.file = None;
                    self.position = Position::start_of(self.position.segment + 1);
                    continue;
                }
                Found::End | Found::Torn => "a record cut short",
                Found::Zeros => "zeros where a record should be",
                Found::Corrupt(what) => what,
            };
            // Never skipped: the records after it were acknowledged. A restart's recovery
            // refuses to start or sets the segment aside, as BRIDGE_SPOOL_ON_DAMAGE says.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is damaged at byte {} ({what})",
                    segment_path(&self.dir, self.position.segment).display(),
                    self.position.offset
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests;
