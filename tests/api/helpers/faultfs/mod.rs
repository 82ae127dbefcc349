//! A FUSE volume in memory that misbehaves on demand: it stalls fsyncs, fills up, fails
//! fsyncs, and on a power loss keeps only what fsyncs covered (directory entries included).
//! Mounted with mount(2) as root; a test that cannot mount it fails.

mod image;
mod kernel;
mod shared;
mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use image::View;
pub use image::{Image, PowerLoss};
use shared::Shared;
use state::{ROOT, State};

/// A mounted volume; dropping it unmounts it. Its methods work from any thread while the
/// bridge runs.
pub struct FaultFs {
    mountpoint: PathBuf,
    /// The kernel's number for this FUSE connection (its device's minor number), for
    /// aborting it through fusectl.
    connection: u64,
    shared: Arc<Shared>,
    session: Option<fuser::BackgroundSession>,
    timer: Option<JoinHandle<()>>,
}

const _: fn() = || {
    fn from_any_thread<T: Send + Sync>() {}
    from_any_thread::<FaultFs>();
};

impl std::fmt::Debug for FaultFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultFs")
            .field("mountpoint", &self.mountpoint)
            .finish_non_exhaustive()
    }
}

impl FaultFs {
    /// An empty volume at a fresh directory under the target's tmp dir.
    pub fn mount() -> Self {
        static MOUNTS: AtomicU64 = AtomicU64::new(0);
        static SWEPT: Once = Once::new();
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("faultfs");
        SWEPT.call_once(|| {
            mount_fusectl();
            sweep_stale(&root);
        });
        let n = MOUNTS.fetch_add(1, Ordering::Relaxed);
        let mountpoint = root.join(format!("{}-{n}", std::process::id()));
        let dirs = BTreeMap::from([(ROOT, BTreeMap::new())]);
        Self::mount_at(mountpoint, BTreeMap::new(), dirs)
    }

    /// What survived a power loss, mounted again where it was (a fresh mount: nothing the
    /// kernel cached survives either).
    pub fn mount_image(image: Image) -> Self {
        Self::mount_at(image.mountpoint, image.files, image.dirs)
    }

    fn mount_at(
        mountpoint: PathBuf,
        files: BTreeMap<u64, Vec<u8>>,
        dirs: BTreeMap<u64, BTreeMap<std::ffi::OsString, u64>>,
    ) -> Self {
        std::fs::create_dir_all(&mountpoint)
            .unwrap_or_else(|e| panic!("faultfs: create {}: {e}", mountpoint.display()));
        let below = std::fs::metadata(&mountpoint).expect("faultfs: stat the mountpoint");
        let state = State::new(files, dirs, (below.uid(), below.gid()));
        let shared = Shared::new(state);
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("faultfs".to_owned()),
            fuser::MountOption::Subtype("faultfs".to_owned()),
        ];
        let session = fuser::Session::new(kernel::Kernel(shared.clone()), &mountpoint, &config)
            .and_then(fuser::Session::spawn)
            .unwrap_or_else(|e| {
                panic!(
                    "faultfs: cannot mount at {}: {e} (needs root and /dev/fuse)",
                    mountpoint.display()
                )
            });
        let timer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("faultfs-timer".to_owned())
                .spawn(move || shared.run_timer())
                .expect("faultfs: spawn the stall timer")
        };
        let mounted = std::fs::metadata(&mountpoint).expect("faultfs: stat the mount");
        let fs = FaultFs {
            connection: minor(mounted.dev()),
            mountpoint,
            shared,
            session: Some(session),
            timer: Some(timer),
        };
        let mounted = std::fs::metadata(&fs.mountpoint).expect("faultfs: stat the mount");
        assert_ne!(
            mounted.dev(),
            below.dev(),
            "faultfs: {} is not a mount after mounting",
            fs.mountpoint.display()
        );
        fs
    }

    /// The mountpoint.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Bytes of file data the volume holds (`None`: unlimited, the default). A write or
    /// truncate past it fails ENOSPC having changed nothing; so does creating a file or
    /// directory once nothing is free.
    pub fn set_capacity(&self, capacity: Option<u64>) {
        self.shared.lock().state.capacity = capacity;
    }

    /// Full: the capacity is what is used now.
    pub fn fill(&self) {
        let mut inner = self.shared.lock();
        inner.state.capacity = Some(inner.state.used());
    }

    /// Unlimited again.
    pub fn unfill(&self) {
        self.set_capacity(None);
    }

    /// Bytes of file data held now (named or open files).
    pub fn used(&self) -> u64 {
        self.shared.lock().state.used()
    }

    /// From now on fsyncs and fsyncdirs get no answer until `release_fsyncs`; the volume
    /// serves everything else meanwhile.
    pub fn hold_fsyncs(&self) {
        self.shared.lock().faults.hold_fsyncs = true;
    }

    /// Every fsync and fsyncdir arriving from now on is answered `delay` after it arrived.
    pub fn stall_fsyncs_for(&self, delay: Duration) {
        self.shared.lock().faults.stall_fsyncs = Some(delay);
        self.shared.changed.notify_all();
    }

    /// Ends `hold_fsyncs` and `stall_fsyncs_for`, answering (and making durable) every fsync
    /// waiting now.
    pub fn release_fsyncs(&self) {
        self.shared.release(shared::Deferred::is_fsync, |faults| {
            faults.hold_fsyncs = false;
            faults.stall_fsyncs = None;
        });
    }

    /// From now on writes get no answer (and change nothing) until `release_writes`.
    pub fn hold_writes(&self) {
        self.shared.lock().faults.hold_writes = true;
    }

    /// Ends `hold_writes`, doing and answering every held write in order.
    pub fn release_writes(&self) {
        self.shared
            .release(|d| !d.is_fsync(), |faults| faults.hold_writes = false);
    }

    /// While on, fsyncs and fsyncdirs answer EIO and make nothing durable.
    pub fn fail_fsyncs(&self, fail: bool) {
        self.shared.lock().faults.fail_fsyncs = fail;
    }

    /// Fsync (and fdatasync) requests received, held and failed ones included.
    pub fn fsyncs(&self) -> u64 {
        self.shared.lock().fsyncs
    }

    /// Fsyncdir requests received, held and failed ones included.
    pub fn fsyncdirs(&self) -> u64 {
        self.shared.lock().fsyncdirs
    }

    /// Fsyncs and fsyncdirs waiting for an answer now.
    pub fn held_fsyncs(&self) -> usize {
        let inner = self.shared.lock();
        inner.held.iter().filter(|h| h.request.is_fsync()).count()
    }

    /// Writes waiting for an answer now.
    pub fn held_writes(&self) -> usize {
        let inner = self.shared.lock();
        inner.held.iter().filter(|h| !h.request.is_fsync()).count()
    }

    /// Waits until at least `n` fsyncs are held; false if `within` passed first.
    pub fn wait_held_fsyncs(&self, n: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut inner = self.shared.lock();
        loop {
            if inner.held.iter().filter(|h| h.request.is_fsync()).count() >= n {
                return true;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            inner = self
                .shared
                .changed
                .wait_timeout(inner, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Every file and directory now, relative to the root.
    pub fn paths(&self) -> BTreeSet<PathBuf> {
        self.image(View::Current).paths()
    }

    /// Every file and directory a power loss now would keep.
    pub fn durable_paths(&self) -> BTreeSet<PathBuf> {
        self.image(View::Lost(PowerLoss::DropUnsynced, 0)).paths()
    }

    /// A file's bytes now (`path` relative to the root, or under the mountpoint).
    pub fn read(&self, path: impl AsRef<Path>) -> Option<Vec<u8>> {
        self.image(View::Current).read(path)
    }

    /// A file's bytes as a power loss now would keep them (`DropUnsynced`).
    pub fn read_durable(&self, path: impl AsRef<Path>) -> Option<Vec<u8>> {
        self.image(View::Lost(PowerLoss::DropUnsynced, 0))
            .read(path)
    }

    fn image(&self, view: View) -> Image {
        Image::of(&self.shared.lock().state, view, &self.mountpoint)
    }

    /// Cuts the power: kill the bridge first. Held requests fail (EIO, not durable), the
    /// volume is unmounted, and what survived (as `mode` and `seed` say) is returned. A
    /// process blocked in a held fsync dies only once it is answered: wait for it after this.
    pub fn power_loss(mut self, mode: PowerLoss, seed: u64) -> Image {
        let image = {
            let mut inner = self.shared.lock();
            inner.dead = true;
            Image::of(&inner.state, View::Lost(mode, seed), &self.mountpoint)
        };
        self.unmount();
        image
    }

    /// Fails what is held, unmounts (lazily when busy: then the session thread is left to
    /// end once the last file on the volume is closed) and joins what can be joined.
    fn unmount(&mut self) {
        self.shared.kill();
        if let Some(timer) = self.timer.take() {
            let _ = timer.join();
        }
        let Some(session) = self.session.take() else {
            return;
        };
        if session.umount_and_join().is_err() {
            // Busy: something still has a file open. Detach it, and abort the connection:
            // a thread of this process left in a request on it would otherwise hold the
            // process's exit forever once the session thread is gone (the kernel waits for an
            // answer only this process could give).
            lazy_umount(&self.mountpoint);
            let abort = Path::new(FUSECTL)
                .join(self.connection.to_string())
                .join("abort");
            let _ = std::fs::write(abort, b"1");
        }
        let _ = std::fs::remove_dir(&self.mountpoint);
    }
}

/// Unmounts what test processes that died left mounted (their mounts answer ENOTCONN), so
/// that the target directory can still be removed.
fn sweep_stale(root: &Path) {
    const ENOTCONN: i32 = 107;
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let path = entry.path();
        if std::fs::metadata(&path).is_err_and(|e| e.raw_os_error() == Some(ENOTCONN)) {
            lazy_umount(&path);
            let _ = std::fs::remove_dir(&path);
        }
    }
}

/// Where the kernel's FUSE control filesystem is mounted.
const FUSECTL: &str = "/sys/fs/fuse/connections";

/// Mounts fusectl when it is not, so connections can be aborted.
fn mount_fusectl() {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if !mounts.lines().any(|l| l.contains(" - fusectl ")) {
        let _ = std::process::Command::new("mount")
            .args(["-t", "fusectl", "none", FUSECTL])
            .status();
    }
}

/// The minor number of a Linux `dev_t`.
fn minor(dev: u64) -> u64 {
    (dev & 0xff) | ((dev >> 12) & 0xfff00)
}

fn lazy_umount(path: &Path) {
    let _ = std::process::Command::new("umount")
        .arg("--lazy")
        .arg(path)
        .status();
}

impl Drop for FaultFs {
    fn drop(&mut self) {
        self.unmount();
    }
}
