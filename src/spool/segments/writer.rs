//! Appending frames to the newest segment, durably.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{HEADER_LEN, Position, segment_path, sync_dir, write_header};

/// The scratch file a room probe writes; never a segment, so recovery ignores it.
const ROOM_PROBE: &str = "room-probe.tmp";

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
            if !is_no_space(&error) || file.set_len(self.len).is_err() {
                return Err(AppendError::Io(error));
            }
            if next.is_some() {
                // A segment made for this batch holds only its header: it goes, uncounted as it
                // is, and the next append makes it again.
                self.file = None;
                let _ = std::fs::remove_file(segment_path(&self.dir, self.segment));
                return Err(AppendError::NoSpace(error));
            }
            return Err(match file.sync_data() {
                // Sealed only once the cut is durable: a sealed segment is no longer the newest,
                // where recovery would cut a torn tail, so a power loss must not bring it back.
                // Once forwarded it can be deleted, which frees the space; the next append
                // starts a new segment.
                Ok(()) => {
                    self.file = None;
                    self.segment += 1;
                    self.len = HEADER_LEN;
                    AppendError::NoSpace(error)
                }
                // The cut did not reach the disk for want of space (some volumes report that at
                // fsync): the segment stays the newest, so recovery would cut its tail, and the
                // next append writes over it.
                Err(sync) if is_no_space(&sync) => AppendError::NoSpace(sync),
                Err(sync) => AppendError::Io(sync),
            });
        }
        file.sync_data().map_err(AppendError::Io)?;
        self.len += frames.len() as u64;
        grown += frames.len() as u64;
        Ok((self.end(), grown))
    }

    /// Whether the volume takes `bytes` more now: written to a scratch file beside the
    /// segments and removed again. While the volume is full, the writer asks this, so that
    /// readiness turns back without waiting for a request to find room.
    pub fn has_room_for(&self, bytes: usize) -> io::Result<bool> {
        let path = self.dir.join(ROOM_PROBE);
        let written = (|| {
            let file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&path)?;
            file.write_all_at(&vec![0u8; bytes], 0)
        })();
        let _ = std::fs::remove_file(&path);
        match written {
            Ok(()) => Ok(true),
            Err(error) if is_no_space(&error) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// The end of what is durable: where the reader stops.
    pub fn end(&self) -> Position {
        Position {
            segment: self.segment,
            offset: self.len,
        }
    }
}
