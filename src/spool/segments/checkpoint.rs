//! The checkpoint: the position of the first record Kafka has not acknowledged.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{CHECKPOINT, CHECKPOINT_LEN, CHECKPOINT_MAGIC, Position};

pub(super) fn read_checkpoint(dir: &Path) -> Option<Position> {
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
