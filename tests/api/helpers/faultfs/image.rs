//! What a volume holds after a power loss, modelled as LazyFS and ALICE do: a file keeps what
//! its fsyncs covered, a directory the entries its fsyncdirs covered.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use super::state::{Body, FileNode, FileOp, Ino, ROOT, State};

/// How the writes no fsync covered are lost. Directory entries no fsyncdir covered are lost
/// in every mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerLoss {
    /// Every file is as of its last fsync.
    DropUnsynced,
    /// Per file, a random (seeded) prefix of its unsynced writes and truncates reached the
    /// disk, and of the one after them a random prefix of its bytes.
    TornPrefix,
    /// Every file keeps its current size, but each byte no fsync covered reads as zeros: the
    /// size reached the disk, the data did not.
    ZerosForUnsynced,
}

/// The surviving contents of a volume: mount it again with `FaultFs::mount_image`.
#[derive(Debug, Clone)]
pub struct Image {
    pub(super) mountpoint: PathBuf,
    pub(super) files: BTreeMap<Ino, Vec<u8>>,
    pub(super) dirs: BTreeMap<Ino, BTreeMap<OsString, Ino>>,
}

/// Which entries and bytes of a mounted volume an image takes.
#[derive(Debug, Clone, Copy)]
pub(super) enum View {
    Current,
    Lost(PowerLoss, u64),
}

impl Image {
    pub(super) fn of(state: &State, view: View, mountpoint: &Path) -> Self {
        let mut image = Image {
            mountpoint: mountpoint.to_owned(),
            files: BTreeMap::new(),
            dirs: BTreeMap::new(),
        };
        // A directory survives only under one name reached from the root; a second one
        // (possible when the durable entries of two directories disagree) is dropped.
        let mut queue = VecDeque::from([ROOT]);
        while let Some(ino) = queue.pop_front() {
            let Some(Body::Dir(dir)) = state.nodes.get(&ino).map(|n| &n.body) else {
                continue;
            };
            let entries = match view {
                View::Current => &dir.entries,
                View::Lost(..) => &dir.durable,
            };
            let mut kept = BTreeMap::new();
            for (name, &child) in entries {
                match state.nodes.get(&child).map(|n| &n.body) {
                    Some(Body::Dir(_)) if child == ROOT || image.dirs.contains_key(&child) => {
                        continue;
                    }
                    Some(Body::Dir(_)) if queue.contains(&child) => continue,
                    Some(Body::Dir(_)) => queue.push_back(child),
                    Some(Body::File(file)) => {
                        image
                            .files
                            .entry(child)
                            .or_insert_with(|| survivor(file, view, child));
                    }
                    None => continue,
                }
                kept.insert(name.clone(), child);
            }
            image.dirs.insert(ino, kept);
        }
        image
    }

    /// Every file and directory, relative to the root (which is left out).
    pub fn paths(&self) -> BTreeSet<PathBuf> {
        let mut paths = BTreeSet::new();
        let mut queue = VecDeque::from([(ROOT, PathBuf::new())]);
        while let Some((ino, path)) = queue.pop_front() {
            for (name, &child) in self.dirs.get(&ino).into_iter().flatten() {
                let path = path.join(name);
                if self.dirs.contains_key(&child) {
                    queue.push_back((child, path.clone()));
                }
                paths.insert(path);
            }
        }
        paths
    }

    /// The bytes of the file at `path` (relative to the root, or under the mountpoint).
    pub fn read(&self, path: impl AsRef<Path>) -> Option<Vec<u8>> {
        let ino = self.resolve(path.as_ref())?;
        self.files.get(&ino).cloned()
    }

    /// Whether `path` is a directory.
    pub fn is_dir(&self, path: impl AsRef<Path>) -> bool {
        self.resolve(path.as_ref())
            .is_some_and(|ino| self.dirs.contains_key(&ino))
    }

    fn resolve(&self, path: &Path) -> Option<Ino> {
        let path = path.strip_prefix(&self.mountpoint).unwrap_or(path);
        let mut ino = ROOT;
        for part in path.components() {
            match part {
                Component::Normal(name) => ino = *self.dirs.get(&ino)?.get(name)?,
                Component::CurDir | Component::RootDir => {}
                Component::ParentDir | Component::Prefix(_) => return None,
            }
        }
        Some(ino)
    }
}

/// The bytes of `file` after a power loss of `view`.
fn survivor(file: &FileNode, view: View, ino: Ino) -> Vec<u8> {
    match view {
        View::Current => file.data.clone(),
        View::Lost(PowerLoss::DropUnsynced, _) => file.durable.clone(),
        View::Lost(PowerLoss::ZerosForUnsynced, _) => {
            // A truncate below the durable size freed what was there.
            let kept = file
                .pending
                .iter()
                .filter_map(|op| match op {
                    FileOp::SetLen(len) => Some(*len),
                    FileOp::Write { .. } => None,
                })
                .chain([file.durable.len() as u64, file.data.len() as u64])
                .min()
                .unwrap_or(0);
            let kept = usize::try_from(kept).unwrap_or(usize::MAX);
            let mut bytes = file.durable[..kept].to_vec();
            bytes.resize(file.data.len(), 0);
            bytes
        }
        View::Lost(PowerLoss::TornPrefix, seed) => {
            let mut rng = SplitMix(seed ^ ino.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let whole = rng.below(file.pending.len() as u64 + 1) as usize;
            let mut bytes = file.durable.clone();
            for op in &file.pending[..whole] {
                op.apply(&mut bytes);
            }
            // A torn truncate is one that did not happen.
            if let Some(FileOp::Write {
                offset,
                bytes: written,
            }) = file.pending.get(whole)
            {
                let torn = rng.below(written.len() as u64) as usize;
                if torn > 0 {
                    let torn = FileOp::Write {
                        offset: *offset,
                        bytes: written[..torn].to_vec(),
                    };
                    torn.apply(&mut bytes);
                }
            }
            bytes
        }
    }
}

/// A small seeded generator (SplitMix64): the same seed tears the same way.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform enough in `0..n`; 0 when `n` is 0.
    fn below(&mut self, n: u64) -> u64 {
        match n {
            0 => 0,
            n => self.next() % n,
        }
    }
}
