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
//!
//! Along a record's life: `frame` encodes and decodes one record, `writer` appends frames
//! to segments, `reader` reads them back for the forwarder, `checkpoint` remembers how far
//! Kafka acknowledged, and `recovery` checks everything at start.

mod checkpoint;
mod frame;
mod reader;
mod recovery;
mod writer;

pub use checkpoint::write_checkpoint;
pub use frame::{Entry, encode};
pub use reader::SegmentReader;
pub use recovery::{Recovered, recover};
pub use writer::{AppendError, SegmentWriter};

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

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
pub enum SpoolDirError {
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

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> SpoolDirError + '_ {
    move |source| SpoolDirError::Io {
        path: path.to_owned(),
        source,
    }
}

pub fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}.seg"))
}

fn write_header(file: &mut File) -> io::Result<()> {
    let mut header = [0u8; HEADER_LEN as usize];
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    file.write_all(&header)
}

/// Checks a segment's header; `Ok(false)` when the file is too short to have one (a crash
/// while it was being created, before anything was acknowledged from it).
fn check_header(path: &Path, file: &mut File) -> Result<bool, SpoolDirError> {
    let mut header = [0u8; HEADER_LEN as usize];
    match file.read_exact(&mut header) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(error) => return Err(io_error(path)(error)),
    }
    if &header[..8] != MAGIC {
        return Err(SpoolDirError::Format {
            path: path.to_owned(),
            reason: "not a spool segment (no OCBSPOOL header); move it out of BRIDGE_SPOOL_DIR"
                .to_owned(),
        });
    }
    let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if version != FORMAT_VERSION {
        return Err(SpoolDirError::Format {
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

/// Creates `dir` and whichever of its parents are missing, each made durable in its parent
/// before the next: a directory whose entry a power loss drops takes every file in it along,
/// fsynced or not. An existing `dir`'s entry is synced too, in case the run that created it
/// crashed before it could.
pub(crate) fn create_dir_durably(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.exists() {
        missing.push(at);
        match at.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => at = parent,
            _ => break,
        }
    }
    let parent_of = |path: &Path| match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    if missing.is_empty() {
        // Best effort: a parent this process may not read cannot hold a crash's leftovers.
        let _ = sync_dir(&parent_of(dir));
        return Ok(());
    }
    for created in missing.into_iter().rev() {
        match std::fs::create_dir(created) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(error),
        }
        sync_dir(created)?;
        sync_dir(&parent_of(created))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
