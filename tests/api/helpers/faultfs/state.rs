//! The volume's contents: current and durable, as the kernel's requests change them.
//!
//! Inodes are never freed while mounted: an unlinked file can still be named by a durable
//! directory entry, and a power loss brings it back with its durable bytes.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::time::SystemTime;

use fuser::Errno;

pub(super) type Ino = u64;

pub(super) const ROOT: Ino = 1;

/// What a write or truncate did since the file's last fsync.
#[derive(Debug, Clone)]
pub(super) enum FileOp {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

impl FileOp {
    pub(super) fn apply(&self, data: &mut Vec<u8>) {
        match self {
            FileOp::Write { offset, bytes } => write_into(data, *offset, bytes),
            FileOp::SetLen(len) => data.resize(to_usize(*len), 0),
        }
    }
}

pub(super) fn write_into(data: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let start = to_usize(offset);
    let end = start + bytes.len();
    if data.len() < end {
        data.resize(end, 0);
    }
    data[start..end].copy_from_slice(bytes);
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

#[derive(Debug)]
pub(super) struct FileNode {
    pub(super) data: Vec<u8>,
    pub(super) durable: Vec<u8>,
    /// Since `durable`, oldest first; op number `synced + i` is `pending[i]`.
    pub(super) pending: Vec<FileOp>,
    pub(super) synced: u64,
    pub(super) nlink: u32,
    pub(super) open: u32,
}

#[derive(Debug)]
pub(super) struct DirNode {
    pub(super) entries: BTreeMap<OsString, Ino>,
    pub(super) durable: BTreeMap<OsString, Ino>,
    /// Bumped by every change of `entries`; `durable` is as of `durable_version`.
    pub(super) version: u64,
    pub(super) durable_version: u64,
    pub(super) parent: Ino,
}

#[derive(Debug)]
pub(super) enum Body {
    File(FileNode),
    Dir(DirNode),
}

#[derive(Debug)]
pub(super) struct Node {
    pub(super) body: Body,
    pub(super) perm: u16,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) mtime: SystemTime,
}

#[derive(Debug)]
pub(super) struct State {
    pub(super) nodes: BTreeMap<Ino, Node>,
    next_ino: Ino,
    /// Bytes of file data the volume holds; `None` is unlimited.
    pub(super) capacity: Option<u64>,
}

impl State {
    /// A volume whose files are `files` (ino -> bytes) and directories `dirs` (ino ->
    /// entries), all of it durable; `ROOT` must be among `dirs`.
    pub(super) fn new(
        files: BTreeMap<Ino, Vec<u8>>,
        dirs: BTreeMap<Ino, BTreeMap<OsString, Ino>>,
        owner: (u32, u32),
    ) -> Self {
        let mut parents = BTreeMap::new();
        let mut links = BTreeMap::<Ino, u32>::new();
        for (&ino, entries) in &dirs {
            for &child in entries.values() {
                parents.insert(child, ino);
                *links.entry(child).or_default() += 1;
            }
        }
        let now = SystemTime::now();
        let node = |body, perm| Node {
            body,
            perm,
            uid: owner.0,
            gid: owner.1,
            mtime: now,
        };
        let mut nodes = BTreeMap::new();
        for (ino, data) in files {
            let file = FileNode {
                durable: data.clone(),
                data,
                pending: Vec::new(),
                synced: 0,
                nlink: links.get(&ino).copied().unwrap_or(0),
                open: 0,
            };
            nodes.insert(ino, node(Body::File(file), 0o644));
        }
        for (ino, entries) in dirs {
            let dir = DirNode {
                durable: entries.clone(),
                entries,
                version: 0,
                durable_version: 0,
                parent: parents.get(&ino).copied().unwrap_or(ROOT),
            };
            nodes.insert(ino, node(Body::Dir(dir), 0o755));
        }
        let next_ino = nodes.keys().next_back().map_or(ROOT, |&i| i) + 1;
        Self {
            nodes,
            next_ino,
            capacity: None,
        }
    }

    pub(super) fn node(&self, ino: Ino) -> Result<&Node, Errno> {
        self.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn node_mut(&mut self, ino: Ino) -> Result<&mut Node, Errno> {
        self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    pub(super) fn dir(&self, ino: Ino) -> Result<&DirNode, Errno> {
        match &self.node(ino)?.body {
            Body::Dir(d) => Ok(d),
            Body::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn dir_mut(&mut self, ino: Ino) -> Result<&mut DirNode, Errno> {
        match &mut self.node_mut(ino)?.body {
            Body::Dir(d) => Ok(d),
            Body::File(_) => Err(Errno::ENOTDIR),
        }
    }

    pub(super) fn file(&self, ino: Ino) -> Result<&FileNode, Errno> {
        match &self.node(ino)?.body {
            Body::File(f) => Ok(f),
            Body::Dir(_) => Err(Errno::EISDIR),
        }
    }

    pub(super) fn file_mut(&mut self, ino: Ino) -> Result<&mut FileNode, Errno> {
        match &mut self.node_mut(ino)?.body {
            Body::File(f) => Ok(f),
            Body::Dir(_) => Err(Errno::EISDIR),
        }
    }

    /// Bytes of the files that are named or open.
    pub(super) fn used(&self) -> u64 {
        self.nodes
            .values()
            .filter_map(|n| match &n.body {
                Body::File(f) if f.nlink > 0 || f.open > 0 => Some(f.data.len() as u64),
                _ => None,
            })
            .sum()
    }

    fn check_room(&self, old_len: usize, new_len: u64) -> Result<(), Errno> {
        let Some(capacity) = self.capacity else {
            return Ok(());
        };
        let grows = new_len.saturating_sub(old_len as u64);
        match self.used().saturating_add(grows) > capacity {
            true => Err(Errno::ENOSPC),
            false => Ok(()),
        }
    }

    pub(super) fn is_full(&self) -> bool {
        self.capacity.is_some_and(|c| self.used() >= c)
    }

    pub(super) fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Ino, Errno> {
        self.dir(parent)?
            .entries
            .get(name)
            .copied()
            .ok_or(Errno::ENOENT)
    }

    /// A new file or directory `name` in `parent`.
    pub(super) fn create(
        &mut self,
        parent: Ino,
        name: &OsStr,
        dir: bool,
        perm: u16,
        owner: (u32, u32),
    ) -> Result<Ino, Errno> {
        if self.dir(parent)?.entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        if self.is_full() {
            return Err(Errno::ENOSPC);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let body = match dir {
            true => Body::Dir(DirNode {
                entries: BTreeMap::new(),
                durable: BTreeMap::new(),
                version: 0,
                durable_version: 0,
                parent,
            }),
            false => Body::File(FileNode {
                data: Vec::new(),
                durable: Vec::new(),
                pending: Vec::new(),
                synced: 0,
                nlink: 1,
                open: 0,
            }),
        };
        let node = Node {
            body,
            perm,
            uid: owner.0,
            gid: owner.1,
            mtime: SystemTime::now(),
        };
        self.nodes.insert(ino, node);
        self.link(parent, name, ino)?;
        Ok(ino)
    }

    fn link(&mut self, parent: Ino, name: &OsStr, ino: Ino) -> Result<(), Errno> {
        let dir = self.dir_mut(parent)?;
        dir.entries.insert(name.to_owned(), ino);
        dir.version += 1;
        self.node_mut(parent)?.mtime = SystemTime::now();
        Ok(())
    }

    /// Takes `name` out of `parent`; the inode it named loses that name.
    fn unlink_entry(&mut self, parent: Ino, name: &OsStr) -> Result<Ino, Errno> {
        let dir = self.dir_mut(parent)?;
        let ino = dir.entries.remove(name).ok_or(Errno::ENOENT)?;
        dir.version += 1;
        self.node_mut(parent)?.mtime = SystemTime::now();
        if let Body::File(f) = &mut self.node_mut(ino)?.body {
            f.nlink = f.nlink.saturating_sub(1);
        }
        Ok(ino)
    }

    pub(super) fn unlink(&mut self, parent: Ino, name: &OsStr) -> Result<(), Errno> {
        self.file(self.lookup(parent, name)?)?;
        self.unlink_entry(parent, name).map(drop)
    }

    pub(super) fn rmdir(&mut self, parent: Ino, name: &OsStr) -> Result<(), Errno> {
        if !self.dir(self.lookup(parent, name)?)?.entries.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        self.unlink_entry(parent, name).map(drop)
    }

    pub(super) fn rename(
        &mut self,
        from: (Ino, &OsStr),
        to: (Ino, &OsStr),
        noreplace: bool,
    ) -> Result<(), Errno> {
        let ino = self.lookup(from.0, from.1)?;
        let is_dir = self.dir(ino).is_ok();
        self.dir(to.0)?;
        if let Ok(existing) = self.lookup(to.0, to.1) {
            if existing == ino {
                return Ok(());
            }
            if noreplace {
                return Err(Errno::EEXIST);
            }
            match (is_dir, self.dir(existing)) {
                (true, Ok(d)) if !d.entries.is_empty() => return Err(Errno::ENOTEMPTY),
                (true, Err(_)) => return Err(Errno::ENOTDIR),
                (false, Ok(_)) => return Err(Errno::EISDIR),
                _ => {}
            }
        }
        if is_dir {
            // Not into itself or its own subtree.
            let mut up = to.0;
            loop {
                if up == ino {
                    return Err(Errno::EINVAL);
                }
                if up == ROOT {
                    break;
                }
                up = self.dir(up)?.parent;
            }
        }
        if self.lookup(to.0, to.1).is_ok() {
            self.unlink_entry(to.0, to.1)?;
        }
        self.unlink_entry(from.0, from.1)?;
        self.link(to.0, to.1, ino)?;
        match &mut self.node_mut(ino)?.body {
            Body::File(f) => f.nlink += 1,
            Body::Dir(d) => d.parent = to.0,
        }
        Ok(())
    }

    pub(super) fn write(&mut self, ino: Ino, offset: u64, bytes: &[u8]) -> Result<(), Errno> {
        let old_len = self.file(ino)?.data.len();
        self.check_room(old_len, offset + bytes.len() as u64)?;
        let op = FileOp::Write {
            offset,
            bytes: bytes.to_vec(),
        };
        self.change(ino, op)
    }

    pub(super) fn set_len(&mut self, ino: Ino, len: u64) -> Result<(), Errno> {
        let old_len = self.file(ino)?.data.len();
        self.check_room(old_len, len)?;
        self.change(ino, FileOp::SetLen(len))
    }

    fn change(&mut self, ino: Ino, op: FileOp) -> Result<(), Errno> {
        let node = self.node_mut(ino)?;
        node.mtime = SystemTime::now();
        let Body::File(file) = &mut node.body else {
            return Err(Errno::EISDIR);
        };
        op.apply(&mut file.data);
        file.pending.push(op);
        Ok(())
    }

    /// The op number an fsync arriving now makes durable up to.
    pub(super) fn fsync_target(&self, ino: Ino) -> Result<u64, Errno> {
        let file = self.file(ino)?;
        Ok(file.synced + file.pending.len() as u64)
    }

    /// An fsync answered: the ops before `target` are on the disk.
    pub(super) fn fsynced(&mut self, ino: Ino, target: u64) {
        let Ok(file) = self.file_mut(ino) else {
            return;
        };
        let n = usize::try_from(target.saturating_sub(file.synced)).unwrap_or(0);
        for op in file.pending.drain(..n.min(file.pending.len())) {
            op.apply(&mut file.durable);
        }
        file.synced = file.synced.max(target);
    }

    /// An fsyncdir answered: `entries`, as they were at `version`, are on the disk.
    pub(super) fn dir_fsynced(&mut self, ino: Ino, version: u64, entries: BTreeMap<OsString, Ino>) {
        if let Ok(dir) = self.dir_mut(ino)
            && version > dir.durable_version
        {
            dir.durable = entries;
            dir.durable_version = version;
        }
    }

    pub(super) fn opened(&mut self, ino: Ino, by: i32) {
        if let Ok(file) = self.file_mut(ino) {
            file.open = file.open.saturating_add_signed(by);
        }
    }

    pub(super) fn set_perm(&mut self, ino: Ino, perm: u16) -> Result<(), Errno> {
        self.node_mut(ino)?.perm = perm;
        Ok(())
    }

    pub(super) fn set_owner(
        &mut self,
        ino: Ino,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<(), Errno> {
        let node = self.node_mut(ino)?;
        node.uid = uid.unwrap_or(node.uid);
        node.gid = gid.unwrap_or(node.gid);
        Ok(())
    }

    pub(super) fn set_mtime(&mut self, ino: Ino, mtime: SystemTime) -> Result<(), Errno> {
        self.node_mut(ino)?.mtime = mtime;
        Ok(())
    }
}
