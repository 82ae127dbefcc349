//! What the session thread and the test share: the volume, its faults, and the requests
//! answered later (fsyncs held for a stall, writes held for a stalled volume). The session
//! thread stashes such a reply and goes on serving; whoever releases it answers it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::OsString;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use fuser::{Errno, ReplyEmpty, ReplyWrite};

use super::state::{Ino, State};

#[derive(Debug)]
pub(super) struct Shared {
    inner: Mutex<Inner>,
    pub(super) changed: Condvar,
}

#[derive(Debug)]
pub(super) struct Inner {
    pub(super) state: State,
    pub(super) faults: Faults,
    pub(super) held: VecDeque<Held>,
    pub(super) fsyncs: u64,
    pub(super) fsyncdirs: u64,
    /// Power lost or unmounting: every request fails, nothing changes any more.
    pub(super) dead: bool,
    pub(super) handles: HashMap<u64, Handle>,
    pub(super) next_handle: u64,
}

#[derive(Debug, Default)]
pub(super) struct Faults {
    pub(super) hold_fsyncs: bool,
    pub(super) stall_fsyncs: Option<Duration>,
    pub(super) fail_fsyncs: bool,
    pub(super) hold_writes: bool,
}

#[derive(Debug)]
pub(super) enum Handle {
    File(Ino),
    /// The entries as of opendir, so that offsets stay put while the directory changes.
    Dir(Vec<(OsString, Ino, fuser::FileType)>),
}

#[derive(Debug)]
pub(super) struct Held {
    /// When the stall timer answers it; `None` waits for a release.
    pub(super) due: Option<Instant>,
    pub(super) request: Deferred,
}

#[derive(Debug)]
pub(super) enum Deferred {
    Sync(Durable, ReplyEmpty),
    Write {
        ino: Ino,
        offset: u64,
        bytes: Vec<u8>,
        reply: ReplyWrite,
    },
}

/// What an fsync or fsyncdir makes durable, fixed when it arrives.
#[derive(Debug)]
pub(super) enum Durable {
    File {
        ino: Ino,
        target: u64,
    },
    Dir {
        ino: Ino,
        version: u64,
        entries: BTreeMap<OsString, Ino>,
    },
}

impl Durable {
    pub(super) fn apply(self, state: &mut State) {
        match self {
            Durable::File { ino, target } => state.fsynced(ino, target),
            Durable::Dir {
                ino,
                version,
                entries,
            } => state.dir_fsynced(ino, version, entries),
        }
    }
}

/// A reply to send once the lock is released.
#[derive(Debug)]
pub(super) enum Answer {
    Empty(ReplyEmpty, Result<(), Errno>),
    Written(ReplyWrite, Result<u32, Errno>),
}

impl Answer {
    pub(super) fn send(self) {
        match self {
            Answer::Empty(reply, Ok(())) => reply.ok(),
            Answer::Written(reply, Ok(n)) => reply.written(n),
            Answer::Empty(reply, Err(e)) => reply.error(e),
            Answer::Written(reply, Err(e)) => reply.error(e),
        }
    }
}

impl Deferred {
    pub(super) fn is_fsync(&self) -> bool {
        !matches!(self, Deferred::Write { .. })
    }

    /// Does it now: a held fsync's data becomes durable only when it is answered.
    pub(super) fn finish(self, state: &mut State) -> Answer {
        match self {
            Deferred::Sync(durable, reply) => {
                durable.apply(state);
                Answer::Empty(reply, Ok(()))
            }
            Deferred::Write {
                ino,
                offset,
                bytes,
                reply,
            } => {
                let done = state.write(ino, offset, &bytes);
                Answer::Written(reply, done.map(|()| bytes.len() as u32))
            }
        }
    }

    /// Answers EIO having done nothing (the power went, or the volume is unmounting).
    pub(super) fn fail(self) -> Answer {
        match self {
            Deferred::Sync(_, reply) => Answer::Empty(reply, Err(Errno::EIO)),
            Deferred::Write { reply, .. } => Answer::Written(reply, Err(Errno::EIO)),
        }
    }
}

impl Shared {
    pub(super) fn new(state: State) -> Arc<Self> {
        Arc::new(Shared {
            inner: Mutex::new(Inner {
                state,
                faults: Faults::default(),
                held: VecDeque::new(),
                fsyncs: 0,
                fsyncdirs: 0,
                dead: false,
                handles: HashMap::new(),
                next_handle: 1,
            }),
            changed: Condvar::new(),
        })
    }

    /// A panic elsewhere must not take the session thread down with it.
    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Finishes the held requests `which` picks (after `then` changed the faults, under the
    /// same lock) and answers them.
    pub(super) fn release(&self, which: fn(&Deferred) -> bool, then: impl FnOnce(&mut Faults)) {
        let answers = {
            let mut inner = self.lock();
            then(&mut inner.faults);
            let held = std::mem::take(&mut inner.held);
            let (go, stay): (VecDeque<Held>, VecDeque<Held>) =
                held.into_iter().partition(|h| which(&h.request));
            inner.held = stay;
            let state = &mut inner.state;
            go.into_iter()
                .map(|h| h.request.finish(state))
                .collect::<Vec<_>>()
        };
        self.changed.notify_all();
        answers.into_iter().for_each(Answer::send);
    }

    /// The stall timer: answers each held request at its due time, until the volume dies.
    pub(super) fn run_timer(&self) {
        let mut inner = self.lock();
        while !inner.dead {
            let now = Instant::now();
            let (go, stay): (VecDeque<Held>, VecDeque<Held>) = std::mem::take(&mut inner.held)
                .into_iter()
                .partition(|h| h.due.is_some_and(|due| due <= now));
            inner.held = stay;
            if !go.is_empty() {
                let state = &mut inner.state;
                let answers: Vec<Answer> =
                    go.into_iter().map(|h| h.request.finish(state)).collect();
                drop(inner);
                self.changed.notify_all();
                answers.into_iter().for_each(Answer::send);
                inner = self.lock();
                continue;
            }
            let next = inner.held.iter().filter_map(|h| h.due).min();
            inner = match next {
                Some(due) => {
                    self.changed
                        .wait_timeout(inner, due.saturating_duration_since(now))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => self
                    .changed
                    .wait(inner)
                    .unwrap_or_else(PoisonError::into_inner),
            };
        }
    }

    /// Stops every change and fails what is held (EIO, nothing made durable).
    pub(super) fn kill(&self) {
        let held = {
            let mut inner = self.lock();
            inner.dead = true;
            std::mem::take(&mut inner.held)
        };
        self.changed.notify_all();
        held.into_iter().for_each(|h| h.request.fail().send());
    }
}
