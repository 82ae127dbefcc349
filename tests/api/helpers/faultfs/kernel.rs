//! The kernel's requests, answered from the shared state. Zero TTLs and direct I/O keep the
//! kernel from answering anything from its caches.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use super::shared::{Deferred, Durable, Handle, Held, Inner, Shared};
use super::state::{Body, Ino, State};

const TTL: Duration = Duration::ZERO;
const BLOCK: u64 = 4096;
/// What statfs reports as the size of an unlimited volume.
const UNLIMITED: u64 = 1 << 40;
// Linux open(2) flags (fuser passes them raw).
const O_EXCL: i32 = 0o200;
const O_TRUNC: i32 = 0o1000;

#[derive(Debug)]
pub(super) struct Kernel(pub(super) Arc<Shared>);

impl Kernel {
    /// Runs `f` unless the volume is dead (then EIO).
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> Result<R, Errno>) -> Result<R, Errno> {
        let mut inner = self.0.lock();
        match inner.dead {
            true => Err(Errno::EIO),
            false => f(&mut inner),
        }
    }

    /// Answers an fsync or fsyncdir now, or stashes it as the faults say.
    fn sync(&self, ino: Ino, dir: bool, reply: ReplyEmpty) {
        let mut reply = Some(reply);
        let done = self.with(|inner| {
            match dir {
                true => inner.fsyncdirs += 1,
                false => inner.fsyncs += 1,
            }
            if inner.faults.fail_fsyncs {
                return Err(Errno::EIO);
            }
            let durable = match dir {
                true => {
                    let d = inner.state.dir(ino)?;
                    Durable::Dir {
                        ino,
                        version: d.version,
                        entries: d.entries.clone(),
                    }
                }
                false => Durable::File {
                    ino,
                    target: inner.state.fsync_target(ino)?,
                },
            };
            let due = match (inner.faults.hold_fsyncs, inner.faults.stall_fsyncs) {
                (true, _) => None,
                (false, Some(delay)) => Some(Instant::now() + delay),
                (false, None) => {
                    durable.apply(&mut inner.state);
                    return Ok(());
                }
            };
            if let Some(reply) = reply.take() {
                let request = Deferred::Sync(durable, reply);
                inner.held.push_back(Held { due, request });
            }
            self.0.changed.notify_all();
            Ok(())
        });
        if let Some(reply) = reply {
            match done {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        }
    }

    fn open_handle(inner: &mut Inner, handle: Handle) -> FileHandle {
        let fh = inner.next_handle;
        inner.next_handle += 1;
        if let Handle::File(ino) = handle {
            inner.state.opened(ino, 1);
        }
        inner.handles.insert(fh, handle);
        FileHandle(fh)
    }
}

fn empty(reply: ReplyEmpty, done: Result<(), Errno>) {
    match done {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn entry(reply: ReplyEntry, done: Result<FileAttr, Errno>) {
    match done {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn perm(mode: u32, umask: u32) -> u16 {
    (mode & !umask & 0o7777) as u16
}

impl Filesystem for Kernel {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        entry(
            reply,
            self.with(|i| attr(&i.state, i.state.lookup(parent.0, name)?)),
        );
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.with(|i| attr(&i.state, ino.0)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let done = self.with(|i| {
            let state = &mut i.state;
            if let Some(size) = size {
                state.set_len(ino.0, size)?;
            }
            if let Some(mode) = mode {
                state.set_perm(ino.0, perm(mode, 0))?;
            }
            state.set_owner(ino.0, uid, gid)?;
            match mtime {
                Some(TimeOrNow::SpecificTime(t)) => state.set_mtime(ino.0, t)?,
                Some(TimeOrNow::Now) => state.set_mtime(ino.0, SystemTime::now())?,
                None => {}
            }
            attr(state, ino.0)
        });
        match done {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let owner = (req.uid(), req.gid());
        entry(
            reply,
            self.with(|i| {
                let ino = i
                    .state
                    .create(parent.0, name, true, perm(mode, umask), owner)?;
                attr(&i.state, ino)
            }),
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let owner = (req.uid(), req.gid());
        let done = self.with(|i| {
            // Created meanwhile by someone else: O_CREAT without O_EXCL opens it.
            let ino = match i.state.lookup(parent.0, name) {
                Ok(_) if flags & O_EXCL != 0 => return Err(Errno::EEXIST),
                Ok(ino) => {
                    i.state.file(ino)?;
                    if flags & O_TRUNC != 0 {
                        i.state.set_len(ino, 0)?;
                    }
                    ino
                }
                Err(_) => i
                    .state
                    .create(parent.0, name, false, perm(mode, umask), owner)?,
            };
            let fh = Self::open_handle(i, Handle::File(ino));
            Ok((attr(&i.state, ino)?, fh))
        });
        match done {
            Ok((attr, fh)) => {
                reply.created(&TTL, &attr, Generation(0), fh, FopenFlags::FOPEN_DIRECT_IO)
            }
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let done = self.with(|i| {
            i.state.file(ino.0)?;
            if flags.0 & O_TRUNC != 0 {
                i.state.set_len(ino.0, 0)?;
            }
            Ok(Self::open_handle(i, Handle::File(ino.0)))
        });
        match done {
            Ok(fh) => reply.opened(fh, FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let done = self.with(|i| {
            let data = &i.state.file(ino.0)?.data;
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(data.len());
            let end = start.saturating_add(size as usize).min(data.len());
            Ok(data[start..end].to_vec())
        });
        match done {
            Ok(bytes) => reply.data(&bytes),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut reply = Some(reply);
        let done = self.with(|i| {
            if !i.faults.hold_writes {
                return i.state.write(ino.0, offset, data);
            }
            i.state.file(ino.0)?;
            if let Some(reply) = reply.take() {
                let request = Deferred::Write {
                    ino: ino.0,
                    offset,
                    bytes: data.to_vec(),
                    reply,
                };
                i.held.push_back(Held { due: None, request });
            }
            self.0.changed.notify_all();
            Ok(())
        });
        if let Some(reply) = reply {
            match done {
                Ok(()) => reply.written(data.len() as u32),
                Err(e) => reply.error(e),
            }
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // Even when dead: the open count only matters for space.
        let mut inner = self.0.lock();
        if let Some(Handle::File(ino)) = inner.handles.remove(&fh.0) {
            inner.state.opened(ino, -1);
        }
        drop(inner);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.sync(ino.0, false, reply);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let done = self.with(|i| {
            let dir = i.state.dir(ino.0)?;
            let mut entries = vec![
                (".".into(), ino.0, FileType::Directory),
                ("..".into(), dir.parent, FileType::Directory),
            ];
            for (name, &child) in &dir.entries {
                let kind = match i.state.dir(child) {
                    Ok(_) => FileType::Directory,
                    Err(_) => FileType::RegularFile,
                };
                entries.push((name.clone(), child, kind));
            }
            Ok(Self::open_handle(i, Handle::Dir(entries)))
        });
        match done {
            Ok(fh) => reply.opened(fh, FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let inner = self.0.lock();
        let Some(Handle::Dir(entries)) = inner.handles.get(&fh.0) else {
            drop(inner);
            return reply.error(Errno::EBADF);
        };
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (n, (name, child, kind)) in entries.iter().enumerate().skip(skip) {
            if reply.add(INodeNo(*child), n as u64 + 1, *kind, name) {
                break;
            }
        }
        drop(inner);
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.0.lock().handles.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.sync(ino.0, true, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.with(|i| i.state.unlink(parent.0, name)));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.with(|i| i.state.rmdir(parent.0, name)));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
            return reply.error(Errno::EINVAL);
        }
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        empty(
            reply,
            self.with(|i| {
                i.state
                    .rename((parent.0, name), (newparent.0, newname), noreplace)
            }),
        );
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let (capacity, used) = {
            let inner = self.0.lock();
            let capacity = inner.state.capacity.unwrap_or(UNLIMITED);
            (capacity, inner.state.used())
        };
        let blocks = capacity.div_ceil(BLOCK);
        let free = capacity.saturating_sub(used) / BLOCK;
        let files = 1 << 20;
        reply.statfs(
            blocks,
            free,
            free,
            files,
            files,
            BLOCK as u32,
            255,
            BLOCK as u32,
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }
}

fn attr(state: &State, ino: Ino) -> Result<FileAttr, Errno> {
    let node = state.node(ino)?;
    let (kind, size, nlink) = match &node.body {
        Body::File(f) => (FileType::RegularFile, f.data.len() as u64, f.nlink),
        Body::Dir(d) => {
            let subdirs = d.entries.values().filter(|&&c| state.dir(c).is_ok());
            (FileType::Directory, 0, 2 + subdirs.count() as u32)
        }
    };
    Ok(FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: node.mtime,
        mtime: node.mtime,
        ctime: node.mtime,
        crtime: node.mtime,
        kind,
        perm: node.perm,
        nlink,
        uid: node.uid,
        gid: node.gid,
        rdev: 0,
        blksize: BLOCK as u32,
        flags: 0,
    })
}
