//! The quarantine (`quarantine/` in the spool directory): where records go that Kafka refused
//! for good and the dead-letter topic refused too, and where recovery copies damaged segments.
//!
//! Set-aside records are dead letters (the webhook body exactly as received, headers saying
//! why) in segment files of the spool's own format, `<n>.seg`. Damaged segments sit beside
//! them as `damaged-at-<offset>-<segment>.seg`, for inspection only: the records before the
//! damage stayed in the spool, so they are never re-driven from here.
//!
//! The quarantine's files count against `BRIDGE_SPOOL_MAX_BYTES`: a quarantine that keeps
//! growing fills the spool instead of the volume. The running bridge re-drives it on request
//! (`POST /quarantine/redrive` on the admin port): each body is normalized again and what
//! normalizes is appended to the spool (fsynced) before its dead letter leaves the
//! quarantine, so a crash in between re-drives it twice, under the same event id.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::segments::{self, AppendError, Entry, Position, SegmentReader, SegmentWriter};
use super::{Shared, Spool, lock};
use crate::event::Normalizer;
use crate::publish::{PublishError, Publisher, Record};
use crate::redrive::{Summary, refusal_code, renormalize};

/// Why the quarantine could not take or give up records.
#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    #[error("the quarantine at {} cannot be created: {source}", .path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the quarantine at {} cannot be written: {source}", .path.display())]
    Write { path: PathBuf, source: AppendError },
    #[error("{} cannot be removed: {source}", .path.display())]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A re-drive stopped: the spool took no more for now.
    #[error("the spool took no more: {0}")]
    SpoolTookNoMore(PublishError),
}

/// A quarantine file rolls to the next past this size: a re-drive holds one file's records in
/// memory at a time, so this bounds what it holds (a spool may quarantine up to its limit).
const SEGMENT_BYTES: u64 = 16 << 20;

#[derive(Debug)]
pub(super) struct Quarantine {
    dir: PathBuf,
    files: Mutex<Files>,
    shared: Arc<Shared>,
    /// One re-drive at a time: two would re-drive the same files twice.
    redriving: tokio::sync::Mutex<()>,
}

/// The quarantine's files as set-asides and re-drives see them.
#[derive(Debug, Default)]
struct Files {
    /// The file records are appended to; closed by a re-drive, so that it handles only files
    /// nothing writes to any more.
    writer: Option<SegmentWriter>,
    /// Where the next writer starts: past every file a re-drive listed, so a set-aside never
    /// appends to a file a re-drive is reading and will remove.
    next: u64,
}

impl Quarantine {
    pub(super) fn new(spool_dir: &Path, shared: Arc<Shared>) -> Self {
        Self {
            dir: spool_dir.join(segments::QUARANTINE),
            files: Mutex::new(Files::default()),
            shared,
            redriving: tokio::sync::Mutex::new(()),
        }
    }

    /// Appends `letters` durably, each with when the spool accepted it.
    pub(super) fn append(&self, letters: &[(&Record, u64)]) -> Result<(), QuarantineError> {
        let mut files = lock(&self.files);
        let files = &mut *files;
        let writer = match &mut files.writer {
            Some(writer) => writer,
            None => {
                segments::create_dir_durably(&self.dir).map_err(|source| {
                    QuarantineError::Create {
                        path: self.dir.clone(),
                        source,
                    }
                })?;
                let first = files.next.max(next_segment(&self.dir));
                files
                    .writer
                    .insert(SegmentWriter::new(&self.dir, first, SEGMENT_BYTES))
            }
        };
        let frames: Vec<u8> = letters
            .iter()
            .flat_map(|(letter, accepted_ms)| segments::encode(letter, *accepted_ms))
            .collect();
        let (_, grown) = writer
            .append(&frames)
            .map_err(|source| QuarantineError::Write {
                path: self.dir.clone(),
                source,
            })?;
        self.shared.grow_quarantine(grown);
        Ok(())
    }

    /// Closes the file being written and lists the set-aside files, oldest first. Listed
    /// under the lock, so no set-aside can start a file that the list holds.
    fn seal(&self) -> Vec<(u64, PathBuf)> {
        let mut files = lock(&self.files);
        files.writer = None;
        let mut sealed: Vec<(u64, PathBuf)> = segments(&self.dir).collect();
        sealed.sort_unstable();
        if let Some((newest, _)) = sealed.last() {
            files.next = files.next.max(newest + 1);
        }
        sealed
    }

    /// Removes `path`, whose records are re-driven or appended again.
    fn remove(&self, path: &Path) -> Result<(), QuarantineError> {
        let bytes = std::fs::metadata(path).map_or(0, |m| m.len());
        std::fs::remove_file(path).map_err(|source| QuarantineError::Remove {
            path: path.to_owned(),
            source,
        })?;
        let _ = segments::sync_dir(&self.dir);
        self.shared.shrink_quarantine(bytes);
        Ok(())
    }

    /// Marks `path` as damaged at `offset`: kept for inspection, never read again.
    fn set_damaged(&self, path: &Path, segment: u64, offset: u64) {
        let to = self
            .dir
            .join(format!("damaged-at-{offset}-{segment:020}.seg"));
        // Synced: a rename a power loss undid would have the next re-drive read it again.
        if let Err(error) = std::fs::rename(path, &to).and_then(|()| segments::sync_dir(&self.dir))
        {
            tracing::error!(error = %error, file = %path.display(), "Cannot mark a damaged quarantine file");
        }
    }
}

/// Bytes of every file in the quarantine under `spool_dir`.
pub(super) fn bytes_on_disk(spool_dir: &Path) -> u64 {
    std::fs::read_dir(spool_dir.join(segments::QUARANTINE))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.metadata().ok())
        .filter(|metadata| metadata.is_file())
        .map(|metadata| metadata.len())
        .sum()
}

/// The set-aside segment files in `dir`, by number.
fn segments(dir: &Path) -> impl Iterator<Item = (u64, PathBuf)> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let number = entry
                .file_name()
                .to_str()?
                .strip_suffix(".seg")?
                .parse::<u64>()
                .ok()?;
            Some((number, entry.path()))
        })
}

/// One past the newest quarantine segment, so a restart never appends to an old one.
fn next_segment(dir: &Path) -> u64 {
    segments(dir)
        .map(|(n, _)| n)
        .max()
        .map_or(0, |newest| newest + 1)
}

/// The records of one quarantine file, and where it is damaged if it is. A torn tail is
/// damage too here: the set-aside it belonged to never finished, so the forwarder sets that
/// record aside again.
fn read(dir: &Path, segment: u64, path: &Path) -> (Vec<Entry>, Option<u64>) {
    let len = std::fs::metadata(path).map_or(0, |m| m.len());
    let end = Position {
        segment,
        offset: len,
    };
    let mut reader = SegmentReader::new(dir, Position::start_of(segment));
    let mut entries = Vec::new();
    loop {
        match reader.next(end) {
            Ok(Some((entry, _))) => entries.push(entry),
            Ok(None) => return (entries, None),
            Err(_) => return (entries, Some(reader.position().offset)),
        }
    }
}

impl Spool {
    /// Re-drives the quarantine: every body that normalizes today goes into the spool (and on
    /// to Kafka, in order behind what is already spooled); what still fails stays in the
    /// quarantine. A dry run changes nothing and counts what would happen. Stops at the first
    /// record the spool cannot take for now (full), keeping it and everything after it.
    pub async fn redrive_quarantine(
        &self,
        normalizer: &Normalizer,
        dry_run: bool,
    ) -> (Summary, Result<(), QuarantineError>) {
        let quarantine = &self.quarantine;
        let _one = quarantine.redriving.lock().await;
        let mut summary = Summary::default();
        for (segment, path) in quarantine.seal() {
            let (entries, damaged) = read(&quarantine.dir, segment, &path);
            let mut kept: Vec<Entry> = Vec::new();
            let mut stopped = None;
            for entry in entries {
                if stopped.is_some() {
                    kept.push(entry);
                    continue;
                }
                summary.read += 1;
                let accepted = super::forward::accepted_at(&entry);
                match renormalize(normalizer, &entry.record, accepted) {
                    Err(rejection) => {
                        summary.fail(rejection.code().to_owned());
                        kept.push(entry);
                    }
                    Ok(_) if dry_run => {
                        summary.redriven += 1;
                    }
                    Ok(event) => match self.publish(event).await {
                        Ok(_) => summary.redriven += 1,
                        Err(error) => match refusal_code(&error) {
                            Some(code) => {
                                summary.fail(code);
                                kept.push(entry);
                            }
                            None => {
                                summary.read -= 1;
                                stopped = Some(QuarantineError::SpoolTookNoMore(error));
                                kept.push(entry);
                            }
                        },
                    },
                }
            }
            if dry_run {
                continue;
            }
            if let Some(offset) = damaged {
                tracing::error!(
                    file = %path.display(),
                    offset,
                    "Quarantine file damaged; the records before the damage were re-driven or kept, the file is kept for inspection"
                );
            }
            let rest: Vec<(&Record, u64)> =
                kept.iter().map(|e| (&e.record, e.accepted_ms)).collect();
            let result = match rest.is_empty() {
                true => Ok(()),
                false => quarantine.append(&rest),
            };
            let result = result.and_then(|()| match damaged {
                Some(offset) => {
                    quarantine.set_damaged(&path, segment, offset);
                    Ok(())
                }
                None => quarantine.remove(&path),
            });
            if let Err(error) = result {
                return (summary, Err(error));
            }
            if let Some(error) = stopped {
                return (summary, Err(error));
            }
        }
        (summary, Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::Header;
    use crate::spool::segments::Recovered;

    fn letter(n: u64) -> Record {
        Record {
            topic: "dlq".into(),
            key: n.to_string(),
            headers: vec![(Header::Borrowed("ce_id"), Header::Owned(n.to_string()))],
            value: vec![b'x'; 200],
        }
    }

    /// Set-asides keep coming while a re-drive seals and empties the quarantine: every letter
    /// is either read by a re-drive or still in the quarantine, never removed unread.
    #[test]
    fn a_set_aside_during_a_seal_is_never_removed_unread() {
        let dir = std::env::temp_dir().join(format!("omnichat-quarantine-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let recovered = Recovered {
            lock: std::fs::File::create(dir.join("lock")).expect("lock"),
            start: Position::start_of(0),
            records: 0,
            bytes: 0,
            next_segment: 0,
            cut_bytes: 0,
            set_aside_segments: 0,
        };
        let shared = Arc::new(Shared::new(
            u64::MAX,
            0,
            &recovered,
            Position::start_of(0),
            Arc::default(),
        ));
        let quarantine = Arc::new(Quarantine::new(&dir, shared));
        const LETTERS: u64 = 3_000;
        let appender = {
            let quarantine = quarantine.clone();
            std::thread::spawn(move || {
                for n in 0..LETTERS {
                    quarantine.append(&[(&letter(n), n)]).expect("append");
                }
            })
        };
        let mut read = 0;
        loop {
            let done = appender.is_finished();
            for (segment, path) in quarantine.seal() {
                let (entries, damaged) = super::read(&quarantine.dir, segment, &path);
                assert_eq!(damaged, None, "{}", path.display());
                read += entries.len() as u64;
                quarantine.remove(&path).expect("remove");
            }
            if done {
                break;
            }
        }
        appender.join().expect("appender");
        assert_eq!(read, LETTERS, "letters removed before they were read");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
