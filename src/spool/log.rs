//! The spool's on-disk format: numbered segment files of checksummed frames, and a checkpoint.
//!
//! A segment (`00000000000000000007.seg`) starts with a 16-byte header: the magic `OCBSPOOL`,
//! the format version (u32, little-endian) and 4 reserved bytes. Frames follow, each the
//! payload's length (u32 LE), its CRC-32 (u32 LE), and the payload: one record, as the
//! accepted-at time (u64 LE, milliseconds since the epoch), then topic, key, headers and value,
//! each prefixed by its length. A frame counts only when it is complete and its checksum
//! matches: the first one that is not ends the segment (a torn tail from a crash mid-write) and
//! recovery cuts it off.
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
/// No single record comes near this; a larger length field is a torn or corrupt frame.
const MAX_FRAME: usize = 256 << 20;

/// A place in the log: a segment and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

impl Position {
    fn start_of(segment: u64) -> Self {
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
    /// No frame here. `clean`: the end of what was written (the end of the file, or zeros);
    /// otherwise a torn or corrupt frame.
    End { clean: bool },
}

fn parse_frame(bytes: &[u8], topics: &mut Vec<Arc<str>>) -> Parsed {
    let Some(head) = bytes.get(..FRAME_HEAD) else {
        return Parsed::Incomplete(FRAME_HEAD);
    };
    let length = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if length == 0 {
        return Parsed::End { clean: crc == 0 };
    }
    if length > MAX_FRAME {
        return Parsed::End { clean: false };
    }
    let Some(payload) = bytes.get(FRAME_HEAD..FRAME_HEAD + length) else {
        return Parsed::Incomplete(FRAME_HEAD + length);
    };
    if crc32fast::hash(payload) != crc {
        return Parsed::End { clean: false };
    }
    match decode(payload, topics) {
        Some(entry) => Parsed::Frame(entry, (FRAME_HEAD + length) as u64),
        None => Parsed::End { clean: false },
    }
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
    ) -> io::Result<Parsed> {
        loop {
            let buffered = offset
                .checked_sub(self.start)
                .and_then(|skip| self.buffer.get(skip as usize..))
                .unwrap_or_default();
            let have = buffered.len();
            let needed = match parse_frame(buffered, topics) {
                Parsed::Incomplete(needed) => needed,
                parsed => return Ok(parsed),
            };
            let want = (needed.max(READ_CHUNK) as u64).min(limit.saturating_sub(offset)) as usize;
            if want <= have {
                // Nothing more may be read: the end of what is committed.
                return Ok(Parsed::End { clean: have == 0 });
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
                return Ok(Parsed::End { clean: read == 0 });
            }
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
fn sync_dir(dir: &Path) -> io::Result<()> {
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
    /// The segment new records go to: one past the last, so recovered segments stay sealed.
    pub next_segment: u64,
    /// Bytes cut off torn tails.
    pub cut_bytes: u64,
}

/// Opens the spool directory: takes its lock, checks every segment's format, cuts torn
/// tails at the first bad frame, and counts what is still to be forwarded.
pub fn recover(dir: &Path) -> Result<Recovered, LogError> {
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
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_error(&path))?;
        if !check_header(&path, &mut file)? {
            std::fs::remove_file(&path).map_err(io_error(&path))?;
            removed = true;
            continue;
        }
        let file_len = file.metadata().map_err(io_error(&path))?.len();
        let mut reader = FrameReader::new(file);
        let mut offset = HEADER_LEN;
        let mut topics = Vec::new();
        let clean = loop {
            match reader
                .frame_at(offset, file_len, &mut topics)
                .map_err(io_error(&path))?
            {
                Parsed::Frame(_, len) => {
                    if segment > start.segment || offset >= start.offset {
                        recovered.records += 1;
                    }
                    offset += len;
                }
                Parsed::End { clean } => break clean,
                Parsed::Incomplete(_) => break false,
            }
        };
        if offset < file_len {
            if clean {
                // Zeros where a frame would start: space the filesystem extended but that no
                // fsync completed for (after a power loss), never acknowledged.
                tracing::debug!(segment = %path.display(), "Trimmed a zero-filled tail");
            } else {
                tracing::warn!(
                    segment = %path.display(),
                    valid_bytes = offset,
                    cut_bytes = file_len - offset,
                    "Spool segment ends in a torn or corrupt frame (a crash mid-write); cut it off"
                );
                recovered.cut_bytes += file_len - offset;
            }
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
    Ok(recovered)
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

/// Appends frames to the newest segment, rolling to a new one when it is full.
#[derive(Debug)]
pub struct SegmentWriter {
    dir: PathBuf,
    segment: u64,
    file: File,
    len: u64,
    segment_bytes: u64,
}

impl SegmentWriter {
    /// Creates segment `segment`; the header and the directory entry are durable on return.
    pub fn create(dir: &Path, segment: u64, segment_bytes: u64) -> io::Result<Self> {
        let mut file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(segment_path(dir, segment))?;
        write_header(&mut file)?;
        file.sync_all()?;
        sync_dir(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
            segment,
            file,
            len: HEADER_LEN,
            segment_bytes,
        })
    }

    /// Appends `frames` and fsyncs them; returns the end of the log and the bytes the files
    /// grew by (a new segment's header included).
    pub fn append(&mut self, frames: &[u8]) -> io::Result<(Position, u64)> {
        let mut grown = 0;
        if self.len >= self.segment_bytes {
            // The old segment is complete and synced; records go on in a new one.
            *self = Self::create(&self.dir, self.segment + 1, self.segment_bytes)?;
            grown += HEADER_LEN;
        }
        self.file.write_all_at(frames, self.len)?;
        self.file.sync_data()?;
        self.len += frames.len() as u64;
        grown += frames.len() as u64;
        Ok((self.end(), grown))
    }

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
            match file.frame_at(self.position.offset, limit, &mut self.topics)? {
                Parsed::Frame(entry, len) => {
                    self.position.offset += len;
                    return Ok(Some((entry, self.position)));
                }
                Parsed::End { .. } | Parsed::Incomplete(_)
                    if self.position.segment >= end.segment =>
                {
                    // Only reachable if the committed end pointed into a corrupt frame.
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "spool segment {} has no readable record at offset {}",
                            self.position.segment, self.position.offset
                        ),
                    ));
                }
                Parsed::End { clean } => {
                    if !clean {
                        tracing::error!(
                            segment = self.position.segment,
                            offset = self.position.offset,
                            "Spool segment has an unreadable frame before its end; \
                             the rest of the segment is skipped"
                        );
                    }
                    self.file = None;
                    self.position = Position::start_of(self.position.segment + 1);
                }
                Parsed::Incomplete(_) => {
                    self.file = None;
                    self.position = Position::start_of(self.position.segment + 1);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
