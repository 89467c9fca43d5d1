//! The master key: a local 256-bit secret that seals the CA key (and any other secret) before it
//! is written to the store, so a copied database alone does not yield the CA.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use rand::RngCore;

use super::PkiError;

/// Version tag of the sealed format; bump it if the algorithm or layout ever changes.
const SEALED_PREFIX: &str = "v1:";
/// XChaCha20's 192-bit nonce: large enough to pick at random without counting.
const NONCE_LEN: usize = 24;
/// Poly1305 tag length.
const TAG_LEN: usize = 16;

/// Symmetric key that seals secrets (the CA key) before they go into the store.
pub struct MasterKey {
    key: [u8; 32],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    /// Read the key from `path` (64 hex chars), or create it (random) with file mode 0600 (create the file with mode 0600 from the start, not chmod afterwards). Refuse (error) to use an existing file that is group- or world-readable.
    ///
    /// Any group/other permission bit (mode & 0o077) is refused, not only read bits: a writable
    /// key file could be swapped. A missing parent directory is created with mode 0700.
    pub fn load_or_create(path: &Path) -> Result<MasterKey, PkiError> {
        match Self::load(path) {
            Err(PkiError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {}
            other => return other,
        }
        let key = Self::random();
        match key.create_file(path) {
            Ok(()) => Ok(key),
            // Another process created it between our look and our create: use theirs.
            Err(PkiError::Io { source, .. }) if source.kind() == ErrorKind::AlreadyExists => {
                Self::load(path)
            }
            Err(e) => Err(e),
        }
    }

    /// Parse a key from exactly 64 hex characters.
    pub fn from_hex(hex: &str) -> Result<MasterKey, PkiError> {
        if hex.len() != 64 {
            return Err(PkiError::MasterKey(format!(
                "expected 64 hex characters, got {}",
                hex.len()
            )));
        }
        let mut key = [0u8; 32];
        hex::decode_to_slice(hex, &mut key)
            .map_err(|e| PkiError::MasterKey(format!("not hex: {e}")))?;
        Ok(MasterKey { key })
    }

    /// XChaCha20-Poly1305 with a random 192-bit nonce; output "v1:" + base64(nonce || ciphertext). `aad` binds the secret to its purpose (e.g. b"ca-key").
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<String, PkiError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher()
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| PkiError::Seal("encryption failed".into()))?;
        let mut blob = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&ciphertext);
        Ok(format!(
            "{SEALED_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(blob)
        ))
    }

    /// Open what [`MasterKey::seal`] produced with the same `aad`; errors on wrong key, wrong
    /// purpose, tampering or a malformed blob.
    pub fn open(&self, sealed: &str, aad: &[u8]) -> Result<Vec<u8>, PkiError> {
        let b64 = sealed.strip_prefix(SEALED_PREFIX).ok_or_else(|| {
            PkiError::Seal(format!(
                "unknown sealed format (want prefix {SEALED_PREFIX:?})"
            ))
        })?;
        let blob = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| PkiError::Seal(format!("sealed data is not base64: {e}")))?;
        if blob.len() < NONCE_LEN + TAG_LEN {
            return Err(PkiError::Seal(format!(
                "sealed data too short ({} bytes)",
                blob.len()
            )));
        }
        let (nonce, ciphertext) = blob.split_at(NONCE_LEN);
        self.cipher()
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| {
                // AEAD cannot tell these apart, so name them all.
                PkiError::Seal(
                    "authentication failed: wrong master key, wrong purpose, or tampered data"
                        .into(),
                )
            })
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(Key::from_slice(&self.key))
    }

    fn random() -> MasterKey {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        MasterKey { key }
    }

    /// Read an existing key file, refusing one that others could read or change.
    fn load(path: &Path) -> Result<MasterKey, PkiError> {
        let mut file = File::open(path).map_err(io_err("opening master key", path))?;
        // Check the opened file itself, not the path, so a swap in between changes nothing.
        let meta = file
            .metadata()
            .map_err(io_err("inspecting master key", path))?;
        if !meta.is_file() {
            return Err(PkiError::MasterKey(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(PkiError::InsecureKeyFile {
                path: path.to_path_buf(),
                mode,
            });
        }
        let mut text = String::new();
        file.read_to_string(&mut text)
            .map_err(io_err("reading master key", path))?;
        Self::from_hex(text.trim()).map_err(|e| match e {
            PkiError::MasterKey(msg) => PkiError::MasterKey(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// Write the key to a fresh 0600 temporary file, then hard-link it into place: the key file
    /// appears complete or not at all, and an existing one is never overwritten.
    fn create_file(&self, path: &Path) -> Result<(), PkiError> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err("creating directory for master key", &dir))?;
        let name = path
            .file_name()
            .ok_or_else(|| PkiError::MasterKey(format!("{} has no file name", path.display())))?;
        let mut suffix = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut suffix);
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            name.to_string_lossy(),
            hex::encode(suffix)
        ));

        let result = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io_err("creating master key", &tmp))?;
            file.write_all(format!("{}\n", hex::encode(self.key)).as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(io_err("writing master key", &tmp))?;
            fs::hard_link(&tmp, path).map_err(io_err("installing master key", path))
        })();
        // The temporary name is only a staging area; drop it whether or not the link worked.
        let _ = fs::remove_file(&tmp);
        result
    }
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PkiError {
    let path = path.to_path_buf();
    move |source| PkiError::Io { what, path, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> MasterKey {
        MasterKey::from_hex(&hex::encode([byte; 32])).unwrap()
    }

    #[test]
    fn seal_open_round_trip() {
        let k = key(7);
        let sealed = k.seal(b"secret CA key", b"ca-key").unwrap();
        assert!(sealed.starts_with("v1:"), "{sealed}");
        assert!(!sealed.contains("secret"));
        assert_eq!(k.open(&sealed, b"ca-key").unwrap(), b"secret CA key");
        // Random nonces: sealing twice never gives the same text.
        assert_ne!(sealed, k.seal(b"secret CA key", b"ca-key").unwrap());
    }

    #[test]
    fn open_with_wrong_aad_fails() {
        let k = key(7);
        let sealed = k.seal(b"secret", b"ca-key").unwrap();
        assert!(matches!(k.open(&sealed, b"other"), Err(PkiError::Seal(_))));
    }

    #[test]
    fn open_with_wrong_key_fails() {
        let sealed = key(7).seal(b"secret", b"ca-key").unwrap();
        assert!(matches!(
            key(8).open(&sealed, b"ca-key"),
            Err(PkiError::Seal(_))
        ));
    }

    #[test]
    fn open_tampered_fails() {
        let k = key(7);
        let sealed = k.seal(b"secret", b"ca-key").unwrap();
        let mut blob = base64::engine::general_purpose::STANDARD
            .decode(&sealed[3..])
            .unwrap();
        for i in [0, NONCE_LEN, blob.len() - 1] {
            blob[i] ^= 0x01;
            let tampered = format!(
                "v1:{}",
                base64::engine::general_purpose::STANDARD.encode(&blob)
            );
            assert!(
                matches!(k.open(&tampered, b"ca-key"), Err(PkiError::Seal(_))),
                "byte {i}"
            );
            blob[i] ^= 0x01;
        }
        assert!(k.open("v2:AAAA", b"ca-key").is_err());
        assert!(k.open("v1:AAAA", b"ca-key").is_err());
        assert!(k.open("v1:!!", b"ca-key").is_err());
    }

    #[test]
    fn from_hex_validates() {
        assert!(MasterKey::from_hex(&"ab".repeat(32)).is_ok());
        assert!(MasterKey::from_hex(&"ab".repeat(31)).is_err());
        assert!(MasterKey::from_hex(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn load_or_create_makes_0600_file_and_reloads_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("master.key");
        let k1 = MasterKey::load_or_create(&path).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim().len(), 64);
        let k2 = MasterKey::load_or_create(&path).unwrap();
        assert_eq!(k1.key, k2.key);
        let sealed = k1.seal(b"x", b"ca-key").unwrap();
        assert_eq!(k2.open(&sealed, b"ca-key").unwrap(), b"x");
        // No staging files left behind.
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn load_or_create_refuses_group_readable_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        fs::write(&path, "ab".repeat(32)).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = MasterKey::load_or_create(&path).unwrap_err();
        assert!(
            matches!(err, PkiError::InsecureKeyFile { mode: 0o644, .. }),
            "{err}"
        );
        // The file is left alone, not silently replaced or fixed.
        assert_eq!(fs::read_to_string(&path).unwrap(), "ab".repeat(32));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let k = MasterKey::load_or_create(&path).unwrap();
        assert_eq!(k.key, [0xab; 32]);
    }

    #[test]
    fn load_or_create_rejects_garbage_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        fs::write(&path, "not a key").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            MasterKey::load_or_create(&path),
            Err(PkiError::MasterKey(_))
        ));
    }
}
