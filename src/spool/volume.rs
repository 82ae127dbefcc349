//! What kind of filesystem holds the spool. A spool in memory (tmpfs, such as a Kubernetes
//! `emptyDir` with `medium: Memory`) keeps its records through a crash of the process, but not
//! through a restart of the pod or the node, which the spool's 202 promises to survive.

use std::path::{Component, Path, PathBuf};

/// Filesystems that keep their files in memory only.
const IN_MEMORY: &[&str] = &["tmpfs", "ramfs"];

/// The in-memory filesystem type holding `dir`, if it is one (Linux; elsewhere `None`).
pub fn in_memory(dir: &Path) -> Option<String> {
    let dir = dir.canonicalize().ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    filesystem_of(&mountinfo, &dir)
        .filter(|fstype| IN_MEMORY.contains(fstype))
        .map(str::to_owned)
}

/// The filesystem type of the mount holding `path`, from `/proc/self/mountinfo`: the longest
/// mount point above it, the later of two at one point (the one mounted over the other).
fn filesystem_of<'a>(mountinfo: &'a str, path: &Path) -> Option<&'a str> {
    let mut found: Option<(usize, &str)> = None;
    for line in mountinfo.lines() {
        // `id parent major:minor root mount-point options [optional...] - fstype source ...`
        let mut fields = line.split(' ');
        let Some(mount_point) = fields.nth(4) else {
            continue;
        };
        let Some(fstype) = fields.skip_while(|f| *f != "-").nth(1) else {
            continue;
        };
        let mount_point = unescape(mount_point);
        if !path.starts_with(&mount_point) {
            continue;
        }
        let depth = mount_point
            .components()
            .filter(|c| *c != Component::RootDir)
            .count();
        if found.is_none_or(|(deepest, _)| depth >= deepest) {
            found = Some((depth, fstype));
        }
    }
    found.map(|(_, fstype)| fstype)
}

/// Mount points escape space, tab, newline and backslash as octal (`\040`).
fn unescape(field: &str) -> PathBuf {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let code = rest.get(at + 1..at + 4);
        match code.and_then(|c| u8::from_str_radix(c, 8).ok()) {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[at + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    PathBuf::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,size=12334524k
25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24684096k
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
40 27 0:40 / /var/spool/bridge rw,relatime shared:12 - tmpfs tmpfs rw
41 27 254:1 / /data rw,relatime - xfs /dev/vdb rw
42 40 254:2 / /var/spool/bridge rw,relatime - ext4 /dev/vdc rw
43 27 0:41 / /mnt/my\\040volume rw - tmpfs tmpfs rw
";

    #[test]
    fn the_deepest_and_latest_mount_above_a_path_names_its_filesystem() {
        let of = |path: &str| filesystem_of(MOUNTINFO, Path::new(path));
        assert_eq!(of("/dev/shm/spool"), Some("tmpfs"));
        assert_eq!(
            of("/dev/shmem"),
            Some("devtmpfs"),
            "a prefix of a name is no parent"
        );
        assert_eq!(of("/data/spool"), Some("xfs"));
        assert_eq!(of("/var/lib/spool"), Some("ext4"));
        assert_eq!(
            of("/var/spool/bridge"),
            Some("ext4"),
            "mounted over the tmpfs"
        );
        assert_eq!(of("/mnt/my volume/spool"), Some("tmpfs"));
        assert_eq!(filesystem_of("", Path::new("/x")), None);
    }

    #[test]
    fn reads_this_machines_mounts() {
        // Where /dev/shm is the usual tmpfs (as on Linux machines and in containers), a spool
        // there is found to be in memory.
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        if filesystem_of(&mountinfo, Path::new("/dev/shm")) == Some("tmpfs") {
            assert_eq!(in_memory(Path::new("/dev/shm")).as_deref(), Some("tmpfs"));
        }
    }
}
