//! Reading files under a sysroot: "/" on a real machine, a captured fixture tree in tests.
//!
//! Symlinks are resolved here, one component at a time, against the sysroot rather than by the
//! operating system, so an absolute link target in a fixture means "inside the fixture" and a
//! run of `..` can never climb out of it.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::path::{Component, Path, PathBuf};

use super::CollectError;

/// Symlink hops allowed while resolving one path (Linux's own limit).
const MAX_HOPS: u32 = 40;

/// A directory tree standing in for `/`.
#[derive(Debug, Clone)]
pub struct Root {
    base: PathBuf,
}

impl Root {
    /// A sysroot at `base`.
    pub fn new(base: impl Into<PathBuf>) -> Self {
        Self { base: base.into() }
    }

    /// Whether this is the running machine's own root (live-only facts such as addresses apply).
    pub fn is_host(&self) -> bool {
        self.base == Path::new("/")
    }

    /// Resolves every symlink in `path` (absolute, as seen inside the sysroot) the way `realpath`
    /// would, but confined to the sysroot. Components that do not exist are kept as they are.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        let mut out: Vec<OsString> = Vec::new();
        let mut pending: VecDeque<OsString> = components(path).collect();
        let mut hops = 0;
        while let Some(part) = pending.pop_front() {
            if part == ".." {
                out.pop();
                continue;
            }
            out.push(part);
            let real = self.base.join(out.iter().collect::<PathBuf>());
            if let Ok(target) = fs::read_link(&real) {
                hops += 1;
                if hops > MAX_HOPS {
                    // A loop: leave the path unresolved; reading it will fail and say so.
                    break;
                }
                out.pop();
                if target.is_absolute() {
                    out.clear();
                }
                let mut next: VecDeque<OsString> = components(&target).collect();
                next.extend(pending);
                pending = next;
            }
        }
        let mut resolved = PathBuf::from("/");
        resolved.extend(out);
        resolved
    }

    /// The host path of `path` after resolving it inside the sysroot.
    pub fn real(&self, path: &Path) -> PathBuf {
        let resolved = self.resolve(path);
        match resolved.strip_prefix("/") {
            Ok(rel) => self.base.join(rel),
            Err(_) => self.base.join(resolved),
        }
    }

    /// Reads a file's bytes.
    pub fn read_bytes(&self, path: impl AsRef<Path>) -> Result<Vec<u8>, CollectError> {
        let path = path.as_ref();
        fs::read(self.real(path)).map_err(|source| CollectError::io(path, source))
    }

    /// Reads a text file, trimmed of surrounding whitespace.
    pub fn read_string(&self, path: impl AsRef<Path>) -> Result<String, CollectError> {
        let bytes = self.read_bytes(path)?;
        Ok(String::from_utf8_lossy(&bytes).trim().to_string())
    }

    /// A trimmed text attribute; `None` when it is missing, unreadable (sysfs answers EINVAL for
    /// some attributes of a down link) or empty.
    pub fn attr(&self, path: impl AsRef<Path>) -> Option<String> {
        self.read_string(path).ok().filter(|s| !s.is_empty())
    }

    /// A decimal attribute.
    pub fn attr_u64(&self, path: impl AsRef<Path>) -> Option<u64> {
        self.attr(path).and_then(|s| s.parse().ok())
    }

    /// Names in a directory, sorted so that output is stable.
    pub fn list_dir(&self, path: impl AsRef<Path>) -> Result<Vec<String>, CollectError> {
        let path = path.as_ref();
        let entries =
            fs::read_dir(self.real(path)).map_err(|source| CollectError::io(path, source))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| CollectError::io(path, source))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    /// Whether `path` is a symlink (not followed) inside the sysroot.
    pub fn is_link(&self, path: impl AsRef<Path>) -> bool {
        let path = path.as_ref();
        let parent = path.parent().map(|p| self.real(p));
        match (parent, path.file_name()) {
            (Some(dir), Some(name)) => fs::symlink_metadata(dir.join(name))
                .map(|m| m.file_type().is_symlink())
                .unwrap_or(false),
            _ => false,
        }
    }

    /// Whether `path` exists inside the sysroot.
    pub fn exists(&self, path: impl AsRef<Path>) -> bool {
        fs::symlink_metadata(self.real(path.as_ref())).is_ok()
    }

    /// Last component of where the symlink `path` points (e.g. a driver's name), if it is one.
    pub fn link_name(&self, path: impl AsRef<Path>) -> Option<String> {
        let path = path.as_ref();
        if !self.is_link(path) {
            return None;
        }
        self.resolve(path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
    }
}

/// The normal components of a path, with `..` kept as a marker and `.` and `/` dropped.
fn components(path: &Path) -> impl Iterator<Item = OsString> + '_ {
    path.components().filter_map(|c| match c {
        Component::Normal(s) => Some(s.to_os_string()),
        Component::ParentDir => Some(OsString::from("..")),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn resolves_relative_links_through_linked_directories() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        fs::create_dir_all(base.join("sys/devices/pci0000:00/0000:00:03.0/virtio0/net/eth0"))
            .unwrap();
        fs::create_dir_all(base.join("sys/class/net")).unwrap();
        symlink(
            "../../devices/pci0000:00/0000:00:03.0/virtio0/net/eth0",
            base.join("sys/class/net/eth0"),
        )
        .unwrap();
        symlink(
            "../../../virtio0",
            base.join("sys/devices/pci0000:00/0000:00:03.0/virtio0/net/eth0/device"),
        )
        .unwrap();
        let root = Root::new(base);
        assert_eq!(
            root.resolve(Path::new("/sys/class/net/eth0/device")),
            PathBuf::from("/sys/devices/pci0000:00/0000:00:03.0/virtio0")
        );
        assert_eq!(
            root.link_name("/sys/class/net/eth0/device").as_deref(),
            Some("virtio0")
        );
    }

    #[test]
    fn absolute_and_climbing_links_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        fs::create_dir_all(base.join("a")).unwrap();
        fs::write(base.join("secret"), "inside").unwrap();
        symlink("/secret", base.join("a/abs")).unwrap();
        symlink("../../../../../../secret", base.join("a/up")).unwrap();
        let root = Root::new(base);
        assert_eq!(root.read_string("/a/abs").unwrap(), "inside");
        assert_eq!(root.read_string("/a/up").unwrap(), "inside");
        assert_eq!(root.real(Path::new("/a/abs")), base.join("secret"));
    }

    #[test]
    fn link_loops_end() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        symlink("b", base.join("a")).unwrap();
        symlink("a", base.join("b")).unwrap();
        let root = Root::new(base);
        assert!(root.read_string("/a").is_err());
    }
}
