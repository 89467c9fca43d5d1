//! The token in a boot environment's per-boot file URLs: `/boot/files/<token>/<name>`.
//!
//! A file may hold secrets (an installer's root password hash) and the boot listener is plain
//! HTTP that anyone on the network can ask, so the token is all that keeps a file to its
//! machine. It is minted into the one script served to the booting machine and names that
//! machine, its run, the content version and the environment the script was rendered from, and
//! the booting MAC; it expires after [`FILE_URL_TTL_SECS`]; and it is signed (HMAC-SHA256) with
//! a key derived from the CA's private key. So it cannot be guessed or altered, every server
//! sharing the database (and so the CA) accepts it, and it survives a restart without being
//! stored. A random nonce makes every boot's URL a new one.

use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use uuid::Uuid;

use anneal_shared::MachineId;

/// How long a file URL works after its script was served: long enough for an installer that
/// fetches a file late (a post-install script at the end of a slow install).
pub const FILE_URL_TTL_SECS: i64 = 6 * 3600;

/// Layout version, the first byte of every token.
const FORMAT: u8 = 1;
/// Bytes of the signature appended to the payload.
const TAG_LEN: usize = 32;
/// Fixed part of the payload: format, machine, run, content version, expiry, MAC, nonce.
const FIXED_LEN: usize = 1 + 16 + 16 + 8 + 8 + 6 + 8;

type HmacSha256 = Hmac<Sha256>;

/// What a file URL grants: the files of `env`, as rendered for `machine` in this boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileGrant {
    /// The machine.
    pub machine: MachineId,
    /// Its run when the script was served (`Uuid::nil()` when it had none).
    pub run: Uuid,
    /// The content version the environment's definition was read at.
    pub content_version: i64,
    /// The boot environment.
    pub env: String,
    /// The booting MAC, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// Unix seconds after which the URL no longer works.
    pub expires: i64,
}

/// Why a token was refused. The client is told only "no such file".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token this server makes (wrong length, encoding or layout).
    #[error("malformed")]
    Malformed,
    /// The signature does not match: forged or altered.
    #[error("bad signature")]
    BadSignature,
    /// Past its expiry.
    #[error("expired")]
    Expired,
}

/// Mints and checks file tokens with one key.
pub struct FileTokens {
    key: [u8; 32],
}

impl FileTokens {
    /// Tokens keyed from the CA's private key (PEM), so that servers sharing a CA share the key.
    pub fn new(ca_key_pem: &str) -> FileTokens {
        // HMAC as the key derivation: the derived key reveals nothing of the CA key.
        let mut kdf = HmacSha256::new_from_slice(ca_key_pem.as_bytes())
            .expect("HMAC takes keys of any length");
        kdf.update(b"anneal boot file URLs v1");
        FileTokens {
            key: kdf.finalize().into_bytes().into(),
        }
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length")
    }

    /// A token for `grant` (URL-safe base64, no padding). `None` if the MAC is not six
    /// hex-and-colon bytes (the boot service only has normalized ones).
    pub fn mint(&self, grant: &FileGrant) -> Option<String> {
        let mac = parse_mac(&grant.mac)?;
        let mut nonce = [0u8; 8];
        rand::thread_rng().fill_bytes(&mut nonce);
        let mut payload = Vec::with_capacity(FIXED_LEN + grant.env.len() + TAG_LEN);
        payload.push(FORMAT);
        payload.extend_from_slice(grant.machine.as_bytes());
        payload.extend_from_slice(grant.run.as_bytes());
        payload.extend_from_slice(&grant.content_version.to_be_bytes());
        payload.extend_from_slice(&grant.expires.to_be_bytes());
        payload.extend_from_slice(&mac);
        payload.extend_from_slice(&nonce);
        payload.extend_from_slice(grant.env.as_bytes());
        let mut m = self.mac();
        m.update(&payload);
        payload.extend_from_slice(&m.finalize().into_bytes());
        Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload))
    }

    /// The grant of `token`, if it is ours, unaltered and not expired at `now` (Unix seconds).
    pub fn open(&self, token: &str, now: i64) -> Result<FileGrant, TokenError> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| TokenError::Malformed)?;
        if bytes.len() < FIXED_LEN + TAG_LEN || bytes[0] != FORMAT {
            return Err(TokenError::Malformed);
        }
        let (payload, tag) = bytes.split_at(bytes.len() - TAG_LEN);
        let mut m = self.mac();
        m.update(payload);
        // Constant-time comparison.
        m.verify_slice(tag).map_err(|_| TokenError::BadSignature)?;
        let uuid = |at: usize| Uuid::from_slice(&payload[at..at + 16]);
        let int = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&payload[at..at + 8]);
            i64::from_be_bytes(b)
        };
        let mac = payload[49..55]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        let grant = FileGrant {
            machine: uuid(1).map_err(|_| TokenError::Malformed)?,
            run: uuid(17).map_err(|_| TokenError::Malformed)?,
            content_version: int(33),
            expires: int(41),
            mac,
            env: String::from_utf8(payload[FIXED_LEN..].to_vec())
                .map_err(|_| TokenError::Malformed)?,
        };
        if now > grant.expires {
            return Err(TokenError::Expired);
        }
        Ok(grant)
    }
}

fn parse_mac(mac: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = mac.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> FileGrant {
        FileGrant {
            machine: Uuid::from_u128(7),
            run: Uuid::from_u128(9),
            content_version: 3,
            env: "debian-installer".into(),
            mac: "52:54:00:aa:00:01".into(),
            expires: 1_000,
        }
    }

    #[test]
    fn a_token_opens_to_its_grant_until_it_expires() {
        let t = FileTokens::new("key one");
        let token = t.mint(&grant()).unwrap();
        assert_eq!(t.open(&token, 1_000), Ok(grant()));
        assert_eq!(t.open(&token, 1_001), Err(TokenError::Expired));
        assert_ne!(
            t.mint(&grant()).unwrap(),
            token,
            "every boot gets a new URL"
        );
    }

    #[test]
    fn altered_forged_and_foreign_tokens_are_refused() {
        let t = FileTokens::new("key one");
        let token = t.mint(&grant()).unwrap();
        // Another server's key (another CA).
        let other = FileTokens::new("key two");
        assert_eq!(other.open(&token, 0), Err(TokenError::BadSignature));
        // Each byte flipped in turn: never accepted.
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&token)
            .unwrap();
        for i in 0..raw.len() {
            let mut b = raw.clone();
            b[i] ^= 0x01;
            let altered = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
            assert!(
                t.open(&altered, 0).is_err(),
                "byte {i} altered and accepted"
            );
        }
        for junk in ["", "x", "not base64 !", &token[..20]] {
            assert_eq!(t.open(junk, 0), Err(TokenError::Malformed), "{junk:?}");
        }
        let mut bad = grant();
        bad.mac = "not a mac".into();
        assert_eq!(t.mint(&bad), None);
    }
}
