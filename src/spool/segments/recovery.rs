//! Recovery at start: the lock, every segment checked, the newest one's torn tail cut, and
//! damage anywhere else refused or set aside.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

use super::checkpoint::read_checkpoint;
use super::frame::{Found, FrameReader};
use super::{
    HEADER_LEN, LOCK, Position, QUARANTINE, SpoolDirError, check_header, create_dir_durably,
    io_error, segment_path, sync_dir,
};
use crate::config::OnDamage;

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
pub fn recover(dir: &Path, on_damage: OnDamage) -> Result<Recovered, SpoolDirError> {
    create_dir_durably(dir).map_err(io_error(dir))?;
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
            return Err(SpoolDirError::Locked {
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
        let cut = offset < file_len;
        if cut {
            reader.file.set_len(offset).map_err(io_error(&path))?;
        }
        if cut || newest {
            // A crash may have left frames that were written but never fsynced. They count as
            // records from now on, and this segment is sealed (new records go to the next):
            // made durable here, so a power loss cannot tear it afterwards.
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
) -> Result<(), SpoolDirError> {
    if on_damage == OnDamage::Refuse {
        return Err(SpoolDirError::Damaged {
            path: path.to_owned(),
            offset,
            what,
        });
    }
    let quarantine = dir.join(QUARANTINE);
    create_dir_durably(&quarantine).map_err(io_error(&quarantine))?;
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
