//! What TFTP may serve: the built-in iPXE binaries and regular files inside the root, and
//! nothing else.
//!
//! A requested name is cleaned first: backslashes count as slashes (some PXE configurations
//! carry DOS-style paths), leading slashes are dropped (PXE clients often send `/file`, which
//! means "in the root"), empty and `.` components are skipped, and any `..` is refused. The
//! joined path is then canonicalised — resolving every symlink — and must still lie inside the
//! canonical root; the final open uses `O_NOFOLLOW`. A file in the root shadows a built-in of
//! the same name, so an operator can serve their own iPXE build.

use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The Debian `ipxe` package binaries served by name from the iPXE directory.
pub const BUILT_INS: [&str; 3] = ["undionly.kpxe", "ipxe.efi", "snponly.efi"];

/// Why a name cannot be served.
#[derive(Debug)]
pub enum FileError {
    /// Nothing by that name.
    NotFound,
    /// The name tries to leave the root, or names something that is not a readable file.
    AccessViolation(&'static str),
    /// Any other I/O failure.
    Io(io::Error),
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileError::NotFound => write!(f, "file not found"),
            FileError::AccessViolation(why) => write!(f, "access violation: {why}"),
            FileError::Io(e) => write!(f, "I/O error: {e}"),
        }
    }
}

/// The file tree TFTP serves.
#[derive(Debug, Clone)]
pub struct Files {
    root: PathBuf,
    ipxe_dir: PathBuf,
}

/// The components of a requested name inside the root, or why it is refused.
pub fn clean_name(name: &str) -> Result<Vec<&str>, FileError> {
    if name.contains('\0') {
        return Err(FileError::AccessViolation("NUL in file name"));
    }
    let mut parts = Vec::new();
    for part in name.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => return Err(FileError::AccessViolation("'..' in file name")),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(FileError::AccessViolation("no file name"));
    }
    Ok(parts)
}

impl Files {
    /// Serve `root` (canonicalised now; it must exist) plus the built-ins from `ipxe_dir`.
    pub fn new(root: &Path, ipxe_dir: &Path) -> io::Result<Files> {
        Ok(Files {
            root: root.canonicalize()?,
            ipxe_dir: ipxe_dir.to_path_buf(),
        })
    }

    /// Open `name` for reading: the file and its size. Blocking (call from `spawn_blocking`).
    pub fn open(&self, name: &str) -> Result<(File, u64), FileError> {
        let (path, in_root) = self.resolve(name)?;
        open_regular(&path, in_root)
    }

    /// The real path `name` stands for, checked as [`Files::open`] checks it, and whether it lies
    /// in the root (`false`: a built-in from the iPXE directory). Blocking.
    pub fn resolve(&self, name: &str) -> Result<(PathBuf, bool), FileError> {
        let parts = clean_name(name)?;
        let mut path = self.root.clone();
        path.extend(&parts);
        match path.canonicalize() {
            Ok(real) => {
                if !real.starts_with(&self.root) {
                    return Err(FileError::AccessViolation("path leads outside the root"));
                }
                return Ok((real, true));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // A dangling symlink is still a symlink: refuse it rather than call it missing.
                if std::fs::symlink_metadata(&path).is_ok() {
                    return Err(FileError::AccessViolation("dangling symlink"));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                return Err(FileError::AccessViolation("permission denied"))
            }
            Err(e) if e.raw_os_error() == Some(20) => return Err(FileError::NotFound), // ENOTDIR
            Err(e) => return Err(FileError::Io(e)),
        }
        if let [one] = parts.as_slice() {
            if BUILT_INS.contains(one) {
                // Operator-configured directory: its own symlinks (Debian's ipxe.efi is one) are trusted.
                return Ok((self.ipxe_dir.join(one), false));
            }
        }
        Err(FileError::NotFound)
    }
}

fn open_regular(path: &Path, no_follow: bool) -> Result<(File, u64), FileError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    if no_follow {
        opts.custom_flags(nix::libc::O_NOFOLLOW);
    }
    let file = opts.open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => FileError::NotFound,
        io::ErrorKind::PermissionDenied => FileError::AccessViolation("permission denied"),
        _ if e.raw_os_error() == Some(nix::libc::ELOOP) => FileError::AccessViolation("symlink"),
        _ => FileError::Io(e),
    })?;
    let meta = file.metadata().map_err(FileError::Io)?;
    if !meta.is_file() {
        return Err(FileError::AccessViolation("not a regular file"));
    }
    Ok((file, meta.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cleaned_and_dotdot_refused() {
        assert_eq!(clean_name("/a//b/./c").unwrap(), vec!["a", "b", "c"]);
        assert_eq!(
            clean_name("\\pxe\\undionly.kpxe").unwrap(),
            vec!["pxe", "undionly.kpxe"]
        );
        for bad in ["../x", "a/../../x", "..", "/", "", ".\\..\\x", "./."] {
            assert!(
                matches!(clean_name(bad), Err(FileError::AccessViolation(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn root_files_built_ins_and_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let ipxe = dir.path().join("ipxe");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(&ipxe).unwrap();
        std::fs::write(root.join("sub/f"), b"inside").unwrap();
        std::fs::write(ipxe.join("ipxe.efi"), b"builtin").unwrap();
        std::fs::write(ipxe.join("other.bin"), b"not a built-in").unwrap();
        std::fs::write(dir.path().join("secret"), b"outside").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("out")).unwrap();
        std::os::unix::fs::symlink("sub/f", root.join("in")).unwrap();
        std::os::unix::fs::symlink("/nonexistent/x", root.join("dangling")).unwrap();
        let files = Files::new(&root, &ipxe).unwrap();
        let read = |n: &str| {
            let (mut f, size) = files.open(n)?;
            let mut s = String::new();
            io::Read::read_to_string(&mut f, &mut s).unwrap();
            assert_eq!(size as usize, s.len());
            Ok::<_, FileError>(s)
        };
        assert_eq!(read("sub/f").unwrap(), "inside");
        assert_eq!(read("/sub/f").unwrap(), "inside");
        assert_eq!(
            read("in").unwrap(),
            "inside",
            "a symlink staying inside is fine"
        );
        assert_eq!(read("/ipxe.efi").unwrap(), "builtin");
        assert!(matches!(read("other.bin"), Err(FileError::NotFound)));
        assert!(matches!(read("nope"), Err(FileError::NotFound)));
        assert!(matches!(read("sub/f/x"), Err(FileError::NotFound)));
        assert!(matches!(read("out"), Err(FileError::AccessViolation(_))));
        assert!(matches!(
            read("dangling"),
            Err(FileError::AccessViolation(_))
        ));
        assert!(matches!(read("sub"), Err(FileError::AccessViolation(_))));
        assert!(matches!(
            read("../secret"),
            Err(FileError::AccessViolation(_))
        ));
        // An operator's own build in the root shadows the built-in.
        std::fs::write(root.join("ipxe.efi"), b"custom").unwrap();
        assert_eq!(read("ipxe.efi").unwrap(), "custom");
    }
}
