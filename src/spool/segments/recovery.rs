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
    let lock = lock_dir(dir)?;
    let segments = segment_numbers(dir)?;
    let mut start = read_checkpoint(dir)
        .unwrap_or_else(|| Position::start_of(segments.first().copied().unwrap_or(0)));
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
        let from = (segment == start.segment).then_some(start.offset);
        let newest = Some(&segment) == segments.last();
        let Some(kept) = check_segment(dir, &path, from, newest, on_damage, &mut recovered)? else {
            removed = true;
            continue;
        };
        if segment == start.segment && start.offset > kept {
            // The checkpoint points past what is readable: nothing there to resume.
            start.offset = kept;
        }
        recovered.bytes += kept;
    }
    if removed {
        sync_dir(dir).map_err(io_error(dir))?;
    }
    recovered.start = start;
    // Never below where forwarding resumes: a record written there would never be read.
    recovered.next_segment = recovered.next_segment.max(start.segment + 1);
    Ok(recovered)
}

/// Takes the directory's lock for this process, or says another holds it.
fn lock_dir(dir: &Path) -> Result<File, SpoolDirError> {
    let lock_path = dir.join(LOCK);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_error(&lock_path))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => Err(SpoolDirError::Locked {
            dir: dir.to_owned(),
        }),
        Err(std::fs::TryLockError::Error(error)) => Err(io_error(&lock_path)(error)),
    }
}

/// The numbers of the segment files in `dir`, oldest first.
fn segment_numbers(dir: &Path) -> Result<Vec<u64>, SpoolDirError> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let name = entry.map_err(io_error(dir))?.file_name();
        let number = name
            .to_str()
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u64>().ok());
        segments.extend(number);
    }
    segments.sort_unstable();
    Ok(segments)
}

/// Reads one segment from `from` (its checkpoint, or its first record), counting its records
/// into `recovered`, cutting a torn or zeroed tail of the newest one, and handling damage as
/// `on_damage` says. Returns the bytes kept, or `None` when the file held no header and went.
fn check_segment(
    dir: &Path,
    path: &Path,
    from: Option<u64>,
    newest: bool,
    on_damage: OnDamage,
    recovered: &mut Recovered,
) -> Result<Option<u64>, SpoolDirError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_error(path))?;
    if !check_header(path, &mut file)? {
        // Shorter than a header: it never held a record.
        drop(file);
        std::fs::remove_file(path).map_err(io_error(path))?;
        return Ok(None);
    }
    let file_len = file.metadata().map_err(io_error(path))?.len();
    let mut reader = FrameReader::new(file);
    // Records before the checkpoint were forwarded: reading starts where forwarding does.
    let start = from.map_or(HEADER_LEN, |at| {
        at.clamp(HEADER_LEN, file_len.max(HEADER_LEN))
    });
    let (offset, damage) = scan(&mut reader, path, start, file_len, newest, recovered)?;
    if let Some(what) = damage {
        set_aside_or_refuse(dir, path, &reader.file, offset, what, on_damage)?;
        recovered.set_aside_segments += 1;
    }
    let cut = offset < file_len;
    if cut {
        reader.file.set_len(offset).map_err(io_error(path))?;
    }
    if cut || newest {
        // A crash may have left frames that were written but never fsynced. They count as
        // records from now on, and this segment is sealed (new records go to the next):
        // made durable here, so a power loss cannot tear it afterwards.
        reader.file.sync_all().map_err(io_error(path))?;
    }
    Ok(Some(offset))
}

/// Counts the frames from `offset` to where they end; returns that end and the damage met
/// there, if any. Only the newest segment may end torn or zeroed (never acknowledged).
fn scan(
    reader: &mut FrameReader,
    path: &Path,
    mut offset: u64,
    file_len: u64,
    newest: bool,
    recovered: &mut Recovered,
) -> Result<(u64, Option<&'static str>), SpoolDirError> {
    let mut topics = Vec::new();
    loop {
        let found = reader
            .frame_at(offset, file_len, &mut topics)
            .map_err(io_error(path))?;
        let damage = match found {
            Found::Frame(_, len) => {
                recovered.records += 1;
                offset += len;
                continue;
            }
            Found::End => None,
            // A crash mid-write leaves a partial frame, only ever in the newest segment.
            Found::Torn if newest => {
                tracing::warn!(
                    segment = %path.display(),
                    valid_bytes = offset,
                    cut_bytes = file_len - offset,
                    "Spool segment ends in a partial record (a crash mid-write, never acknowledged); cut it off"
                );
                recovered.cut_bytes += file_len - offset;
                None
            }
            Found::Torn => Some("a partial record at the end of a sealed segment"),
            // Space a power loss extended but no fsync completed for: never acknowledged.
            Found::Zeros if newest && reader.zeros_from(offset).map_err(io_error(path))? => {
                tracing::debug!(segment = %path.display(), "Trimmed a zero-filled tail");
                None
            }
            Found::Zeros => Some("zeros where a record should be"),
            Found::Corrupt(what) => Some(what),
        };
        return Ok((offset, damage));
    }
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
