//! The fault-injecting volume itself, through a real mount: what a power loss keeps, a full
//! volume, stalled and failing fsyncs, locks, and a child process writing to it. No broker.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::helpers::faultfs::{FaultFs, Image, PowerLoss};

const MODES: [PowerLoss; 3] = [
    PowerLoss::DropUnsynced,
    PowerLoss::TornPrefix,
    PowerLoss::ZerosForUnsynced,
];

fn sync_dir(dir: &Path) {
    File::open(dir)
        .expect("open dir")
        .sync_all()
        .expect("fsync dir");
}

fn write_synced(path: &Path, bytes: &[u8]) {
    let mut file = File::create(path).expect("create");
    file.write_all(bytes).expect("write");
    file.sync_all().expect("fsync");
}

fn append(path: &Path, bytes: &[u8]) {
    let mut file = OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open to append");
    file.write_all(bytes).expect("append");
}

fn paths(names: &[&str]) -> Vec<PathBuf> {
    names.iter().map(PathBuf::from).collect()
}

/// Remounted, the file reads back as the image says (the image is checked against the real
/// mount, so the assertions on it hold for what a restarted bridge would read).
fn remount_reads(image: Image, name: &str) -> Option<Vec<u8>> {
    let expected = image.read(name);
    let fs = FaultFs::mount_image(image);
    let read = match std::fs::read(fs.path().join(name)) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => panic!("read {name}: {e}"),
    };
    assert_eq!(read, expected, "the remounted volume reads as the image");
    read
}

#[test]
fn a_synced_file_in_a_synced_directory_survives_every_power_loss() {
    for mode in MODES {
        let fs = FaultFs::mount();
        let dir = fs.path().join("spool");
        std::fs::create_dir(&dir).expect("mkdir");
        sync_dir(fs.path());
        let bytes: Vec<u8> = (0..10_000u32).map(|n| (n % 251) as u8).collect();
        write_synced(&dir.join("seg"), &bytes);
        sync_dir(&dir);
        assert_eq!(
            fs.durable_paths(),
            paths(&["spool", "spool/seg"]).into_iter().collect()
        );

        let image = fs.power_loss(mode, 7);
        assert!(image.is_dir("spool"));
        assert_eq!(remount_reads(image, "spool/seg"), Some(bytes), "{mode:?}");
    }
}

#[test]
fn a_synced_file_whose_entry_was_never_synced_is_lost() {
    let fs = FaultFs::mount();
    write_synced(&fs.path().join("orphan"), b"synced data, unsynced name");
    assert_eq!(fs.fsyncs(), 1);
    assert_eq!(fs.fsyncdirs(), 0);
    assert!(fs.read_durable("orphan").is_none());
    assert_eq!(
        remount_reads(fs.power_loss(PowerLoss::DropUnsynced, 0), "orphan"),
        None
    );

    // The directory's own entry in the root was never synced: it vanishes with its file,
    // though both the file and the directory were synced.
    let fs = FaultFs::mount();
    let sub = fs.path().join("sub");
    std::fs::create_dir(&sub).expect("mkdir");
    write_synced(&sub.join("seg"), b"deep");
    sync_dir(&sub);
    assert_eq!(fs.paths(), paths(&["sub", "sub/seg"]).into_iter().collect());
    assert!(fs.durable_paths().is_empty());
    let image = fs.power_loss(PowerLoss::ZerosForUnsynced, 0);
    assert!(image.paths().is_empty(), "{:?}", image.paths());
    assert!(!image.is_dir("sub"));
    let fs = FaultFs::mount_image(image);
    assert_eq!(
        std::fs::read_dir(fs.path()).expect("readdir").count(),
        0,
        "the root is empty after the power loss"
    );
}

/// A file "seg" with a synced header and `appends` unsynced appends, its entry synced.
fn with_unsynced_appends(mode: PowerLoss, seed: u64) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let fs = FaultFs::mount();
    let seg = fs.path().join("seg");
    let header = b"HEADER--".to_vec();
    write_synced(&seg, &header);
    sync_dir(fs.path());
    let mut full = header.clone();
    for n in 0..6u8 {
        let chunk = vec![b'a' + n; 100];
        append(&seg, &chunk);
        full.extend_from_slice(&chunk);
    }
    assert_eq!(fs.read("seg"), Some(full.clone()));
    assert_eq!(fs.read_durable("seg"), Some(header.clone()));
    let survived = remount_reads(fs.power_loss(mode, seed), "seg").expect("seg survives");
    (header, full, survived)
}

#[test]
fn unsynced_appends_are_lost_zeroed_or_torn() {
    let (header, _, survived) = with_unsynced_appends(PowerLoss::DropUnsynced, 0);
    assert_eq!(survived, header);

    let (header, full, survived) = with_unsynced_appends(PowerLoss::ZerosForUnsynced, 0);
    assert_eq!(survived.len(), full.len(), "the size reached the disk");
    assert_eq!(&survived[..header.len()], &header[..]);
    assert!(survived[header.len()..].iter().all(|&b| b == 0));

    let mut lengths = std::collections::BTreeSet::new();
    for seed in 0..8 {
        let (header, full, survived) = with_unsynced_appends(PowerLoss::TornPrefix, seed);
        assert!(
            survived.len() >= header.len(),
            "seed {seed}: the synced part stays"
        );
        assert_eq!(
            survived,
            full[..survived.len()],
            "seed {seed}: a prefix of what was written"
        );
        lengths.insert(survived.len());
    }
    assert!(lengths.len() > 1, "seeds tear differently: {lengths:?}");
    let (_, _, once) = with_unsynced_appends(PowerLoss::TornPrefix, 3);
    let (_, _, again) = with_unsynced_appends(PowerLoss::TornPrefix, 3);
    assert_eq!(once, again, "a seed tears the same way every time");
}

#[test]
fn a_truncate_below_the_synced_size_frees_what_was_there() {
    let fs = FaultFs::mount();
    let path = fs.path().join("seg");
    write_synced(&path, &[7u8; 100]);
    sync_dir(fs.path());
    let file = OpenOptions::new().write(true).open(&path).expect("open");
    file.set_len(10).expect("cut");
    file.write_all_at(&[9u8; 50], 10).expect("rewrite");
    file.write_all_at(b"xy", 0).expect("overwrite in place");
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), 60);
    let image = fs.power_loss(PowerLoss::ZerosForUnsynced, 0);
    let survived = remount_reads(image, "seg").expect("seg");
    // The in-place overwrite never reached the disk; the bytes the cut freed read as zeros.
    let mut expected = vec![7u8; 10];
    expected.resize(60, 0);
    assert_eq!(survived, expected);
}

#[test]
fn renames_and_unlinks_revert_unless_their_directory_was_synced() {
    for synced in [false, true] {
        let fs = FaultFs::mount();
        let (a, b, c) = (
            fs.path().join("a"),
            fs.path().join("b"),
            fs.path().join("c"),
        );
        write_synced(&a, b"A");
        write_synced(&b, b"B");
        sync_dir(fs.path());
        std::fs::rename(&a, &c).expect("rename");
        std::fs::remove_file(&b).expect("unlink");
        if synced {
            sync_dir(fs.path());
        }
        let image = fs.power_loss(PowerLoss::DropUnsynced, 0);
        let expected = match synced {
            true => paths(&["c"]),
            false => paths(&["a", "b"]),
        };
        assert_eq!(
            image.paths(),
            expected.into_iter().collect(),
            "synced: {synced}"
        );
        let fs = FaultFs::mount_image(image);
        let mut names: Vec<_> = std::fs::read_dir(fs.path())
            .expect("readdir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        names.sort();
        let expected: Vec<_> = match synced {
            true => vec!["c"],
            false => vec!["a", "b"],
        };
        assert_eq!(names, expected);
    }
}

#[test]
fn a_rename_across_directories_is_durable_per_directory() {
    let fs = FaultFs::mount();
    let (from, to) = (fs.path().join("from"), fs.path().join("to"));
    std::fs::create_dir(&from).expect("mkdir");
    std::fs::create_dir(&to).expect("mkdir");
    sync_dir(fs.path());
    write_synced(&from.join("x"), b"moved");
    sync_dir(&from);
    std::fs::rename(from.join("x"), to.join("x")).expect("rename across");
    sync_dir(&to);
    // Only the target was synced: the old entry is still durable too (two names, one file).
    let image = fs.power_loss(PowerLoss::DropUnsynced, 0);
    assert_eq!(image.read("from/x"), Some(b"moved".to_vec()));
    assert_eq!(remount_reads(image, "to/x"), Some(b"moved".to_vec()));
}

#[test]
fn files_read_back_what_was_written_at_offsets() {
    let fs = FaultFs::mount();
    let dir = fs.path().join("a/b");
    std::fs::create_dir_all(&dir).expect("create_dir_all");
    let path = dir.join("f");
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .expect("create");
    file.write_all_at(b"hello world", 0).expect("write");
    file.write_all_at(b"WORLD", 6).expect("overwrite");
    file.write_all_at(b"!", 20).expect("extend past the end");
    let mut expected = b"hello WORLD".to_vec();
    expected.resize(20, 0);
    expected.push(b'!');
    assert_eq!(std::fs::read(&path).expect("read"), expected);
    file.set_len(5).expect("cut");
    assert_eq!(std::fs::read(&path).expect("read"), b"hello");
    let mut buf = [0u8; 3];
    file.read_exact_at(&mut buf, 1).expect("pread");
    assert_eq!(&buf, b"ell");
    let meta = std::fs::metadata(&path).expect("stat");
    assert!(meta.is_file() && meta.len() == 5);
    assert!(std::fs::metadata(&dir).expect("stat").is_dir());
    // Reopened with truncate, it is empty.
    drop(File::create(&path).expect("truncate"));
    assert_eq!(fs.read("a/b/f"), Some(Vec::new()));
    // Enough entries that readdir takes several requests.
    for n in 0..300 {
        File::create(dir.join(format!("entry-with-a-longish-name-{n:04}"))).expect("create");
    }
    assert_eq!(std::fs::read_dir(&dir).expect("readdir").count(), 301);
    std::fs::remove_dir_all(fs.path().join("a")).expect("remove_dir_all");
    assert!(fs.paths().is_empty());
}

/// Free blocks as statfs reports them (coreutils' `stat -f`).
fn free_blocks(path: &Path) -> u64 {
    let out = Command::new("stat")
        .args(["-f", "-c", "%a"])
        .arg(path)
        .output()
        .expect("stat -f");
    assert!(out.status.success(), "stat -f: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("free blocks")
}

#[test]
fn a_full_volume_refuses_growth_with_enospc_and_changes_nothing() {
    let fs = FaultFs::mount();
    let path = fs.path().join("seg");
    write_synced(&path, &[1u8; 1000]);
    assert_eq!(fs.used(), 1000);
    fs.fill();
    assert_eq!(free_blocks(fs.path()), 0);

    let file = OpenOptions::new().write(true).open(&path).expect("open");
    let error = file
        .write_all_at(b"more", 1000)
        .expect_err("no space to grow");
    assert_eq!(error.kind(), ErrorKind::StorageFull);
    assert_eq!(error.raw_os_error(), Some(28));
    let error = file.set_len(5000).expect_err("no space to grow");
    assert_eq!(error.kind(), ErrorKind::StorageFull);
    assert_eq!(fs.read("seg"), Some(vec![1u8; 1000]), "nothing changed");
    let error = File::create(fs.path().join("new")).expect_err("no space for a file");
    assert_eq!(error.kind(), ErrorKind::StorageFull);
    let error = std::fs::create_dir(fs.path().join("dir")).expect_err("no space for a dir");
    assert_eq!(error.kind(), ErrorKind::StorageFull);
    assert_eq!(fs.paths(), paths(&["seg"]).into_iter().collect());
    // Overwriting in place takes no space.
    file.write_all_at(b"22", 0).expect("overwrite in place");

    fs.set_capacity(Some(1000 + 3 * 4096));
    assert_eq!(free_blocks(fs.path()), 3);
    fs.unfill();
    file.write_all_at(b"more", 1000).expect("room again");
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), 1004);
    assert!(free_blocks(fs.path()) > 1 << 20);
}

#[test]
fn a_held_fsync_returns_only_when_released_while_the_volume_still_serves() {
    let fs = FaultFs::mount();
    let path = fs.path().join("seg");
    write_synced(&path, b"old");
    sync_dir(fs.path());
    fs.hold_fsyncs();
    let (done, finished) = mpsc::channel();
    let writer = {
        let path = path.clone();
        std::thread::spawn(move || {
            let file = OpenOptions::new().write(true).open(&path).expect("open");
            file.write_all_at(b"new", 0).expect("write");
            let _ = done.send(file.sync_data());
        })
    };
    assert!(
        fs.wait_held_fsyncs(1, Duration::from_secs(5)),
        "the fsync arrives"
    );
    assert!(
        finished.recv_timeout(Duration::from_millis(300)).is_err(),
        "the fsync is still blocked"
    );
    // Reads and stats (of the same file too) and other files keep working meanwhile.
    assert_eq!(std::fs::read(&path).expect("read"), b"new");
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), 3);
    std::fs::write(fs.path().join("other"), b"x").expect("another file");
    assert_eq!(fs.held_fsyncs(), 1);
    assert_eq!(
        fs.read_durable("seg"),
        Some(b"old".to_vec()),
        "not durable while held"
    );

    fs.release_fsyncs();
    let synced = finished
        .recv_timeout(Duration::from_secs(5))
        .expect("the fsync returns once released");
    synced.expect("and succeeds");
    writer.join().expect("writer");
    assert_eq!(fs.read_durable("seg"), Some(b"new".to_vec()));
    assert_eq!(fs.held_fsyncs(), 0);
    let start = Instant::now();
    File::open(&path).expect("open").sync_all().expect("fsync");
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn stalled_fsyncs_are_each_answered_after_the_delay() {
    let fs = FaultFs::mount();
    let path = fs.path().join("seg");
    write_synced(&path, b"x");
    let delay = Duration::from_millis(500);
    fs.stall_fsyncs_for(delay);
    for _ in 0..2 {
        let start = Instant::now();
        File::open(&path).expect("open").sync_all().expect("fsync");
        let took = start.elapsed();
        assert!(took >= delay && took < delay * 10, "took {took:?}");
    }
    let start = Instant::now();
    sync_dir(fs.path());
    assert!(start.elapsed() >= delay, "fsyncdir is stalled too");
    fs.release_fsyncs();
    let start = Instant::now();
    File::open(&path).expect("open").sync_all().expect("fsync");
    assert!(start.elapsed() < delay, "no stall once released");
}

#[test]
fn a_failing_fsync_answers_eio_and_makes_nothing_durable() {
    let fs = FaultFs::mount();
    let path = fs.path().join("seg");
    write_synced(&path, b"");
    sync_dir(fs.path());
    fs.fail_fsyncs(true);
    let file = OpenOptions::new().write(true).open(&path).expect("open");
    file.write_all_at(b"lost", 0).expect("write");
    let error = file.sync_data().expect_err("fsync fails");
    assert_eq!(error.raw_os_error(), Some(5), "EIO: {error}");
    let error = File::open(fs.path())
        .expect("open dir")
        .sync_all()
        .expect_err("fsyncdir fails");
    assert_eq!(error.raw_os_error(), Some(5));
    assert_eq!(fs.read_durable("seg"), Some(Vec::new()));
    assert_eq!((fs.fsyncs(), fs.fsyncdirs()), (2, 2));
    assert_eq!(
        remount_reads(fs.power_loss(PowerLoss::DropUnsynced, 0), "seg"),
        Some(Vec::new())
    );

    let fs = FaultFs::mount();
    fs.fail_fsyncs(true);
    fs.fail_fsyncs(false);
    write_synced(&fs.path().join("seg"), b"kept");
    assert_eq!(fs.read_durable("seg"), None, "its entry is not durable yet");
    sync_dir(fs.path());
    assert_eq!(fs.read_durable("seg"), Some(b"kept".to_vec()));
}

#[test]
fn a_held_lock_excludes_another_open_and_another_process() {
    let fs = FaultFs::mount();
    let path = fs.path().join("lock");
    let first = File::create(&path).expect("create");
    let second = File::open(&path).expect("open again");
    first.try_lock().expect("the first lock");
    assert!(matches!(
        second.try_lock(),
        Err(std::fs::TryLockError::WouldBlock)
    ));
    let other = Command::new("flock")
        .args(["--nonblock", "--conflict-exit-code", "9"])
        .arg(&path)
        .arg("true")
        .status()
        .expect("flock(1)");
    assert_eq!(other.code(), Some(9), "another process cannot take it");
    first.unlock().expect("unlock");
    second.try_lock().expect("free once unlocked");
}

#[test]
fn held_writes_wait_for_release_and_change_nothing_until_then() {
    let fs = FaultFs::mount();
    let path = fs.path().join("seg");
    std::fs::write(&path, b"before").expect("write");
    fs.hold_writes();
    let writer = {
        let path = path.clone();
        std::thread::spawn(move || std::fs::write(&path, b"after"))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while fs.held_writes() == 0 {
        assert!(Instant::now() < deadline, "the write arrives");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The truncate of `fs::write` went through; the write waits.
    assert_eq!(fs.read("seg"), Some(Vec::new()));
    fs.release_writes();
    writer.join().expect("writer").expect("write once released");
    assert_eq!(std::fs::read(&path).expect("read"), b"after");
}

/// Runs `script` with `sh -c` and the mountpoint as `$1`.
fn sh(script: &str, mount: &Path) -> std::process::Child {
    Command::new("sh")
        .args(["-c", script, "sh"])
        .arg(mount)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sh")
}

fn wait_exit(mut child: std::process::Child, within: Duration) -> std::process::Output {
    let deadline = Instant::now() + within;
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "the child did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("output")
}

#[test]
fn a_child_process_writes_syncs_renames_and_lists() {
    let fs = FaultFs::mount();
    let script = r#"set -e
        mkdir -p "$1/spool"
        sync "$1"
        printf 'header' > "$1/spool/tmp"
        dd if=/dev/zero of="$1/spool/tmp" bs=1 count=4 seek=6 conv=notrunc,fsync status=none
        mv "$1/spool/tmp" "$1/spool/seg"
        sync "$1/spool"
        printf 'unsynced' >> "$1/spool/seg"
        rm -f "$1/spool/missing"
        ls "$1/spool""#;
    let out = wait_exit(sh(script, fs.path()), Duration::from_secs(10));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "seg");
    assert!(
        fs.fsyncs() >= 1 && fs.fsyncdirs() >= 2,
        "{} {}",
        fs.fsyncs(),
        fs.fsyncdirs()
    );
    let image = fs.power_loss(PowerLoss::DropUnsynced, 0);
    assert_eq!(
        remount_reads(image, "spool/seg"),
        Some(b"header\0\0\0\0".to_vec())
    );
}

#[test]
fn a_child_killed_in_a_held_fsync_loses_it_and_the_volume_still_unmounts() {
    let fs = FaultFs::mount();
    sync_dir(fs.path());
    write_synced(&fs.path().join("seg"), b"durable");
    sync_dir(fs.path());
    fs.hold_fsyncs();
    let script = r#"printf 'lost' >> "$1/seg" && exec sync "$1/seg""#;
    let mut child = sh(script, fs.path());
    assert!(
        fs.wait_held_fsyncs(1, Duration::from_secs(5)),
        "the child's fsync is held"
    );
    child.kill().expect("kill");
    // The child dies only once its fsync is answered (the kernel waits for the answer to a
    // request it sent, even for a killed process): the power loss answers it.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        child.try_wait().expect("wait").is_none(),
        "still in its fsync"
    );
    let image = fs.power_loss(PowerLoss::DropUnsynced, 0);
    let out = wait_exit(child, Duration::from_secs(10));
    assert!(!out.status.success());
    assert_eq!(remount_reads(image, "seg"), Some(b"durable".to_vec()));
}

#[test]
fn dropping_the_volume_with_a_file_still_open_does_not_hang() {
    let fs = FaultFs::mount();
    let path = fs.path().join("open");
    let file = File::create(&path).expect("create");
    let (done, dropped) = mpsc::channel();
    std::thread::spawn(move || {
        drop(fs);
        let _ = done.send(());
    });
    dropped
        .recv_timeout(Duration::from_secs(10))
        .expect("the drop returns though a file is open");
    assert!(file.write_all_at(b"x", 0).is_err(), "the volume is gone");
    drop(file);
    assert!(!path.exists());
}
