//! Reading records back in log order, for the forwarder and the quarantine's re-drive.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::frame::{Entry, Found, FrameReader};
use super::{HEADER_LEN, Position, segment_path};

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
