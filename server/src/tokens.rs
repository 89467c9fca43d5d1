//! Secrets for API and bootstrap tokens: generated here, stored only as SHA-256 hashes.

use anneal_shared::api::Role;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::store::ApiTokenRecord;

/// Prefix of operator API tokens (recognisable by secret scanners).
pub const API_PREFIX: &str = "anl_api_";
/// Prefix of bootstrap (enrollment) tokens.
pub const BOOTSTRAP_PREFIX: &str = "anl_boot_";

/// A fresh random secret with a prefix: 256 bits, URL-safe, no padding.
pub fn new_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Hex SHA-256 of a secret: what the store keeps and looks up by.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A short public id derived from the hash (safe to show and log).
pub fn public_id(hash: &str) -> String {
    hash.chars().take(12).collect()
}

/// A new operator API token: the secret (show once) and the record to store.
pub fn new_api_token(role: Role, name: &str, now: OffsetDateTime) -> (String, ApiTokenRecord) {
    let secret = new_secret(API_PREFIX);
    let hash = hash_secret(&secret);
    let record = ApiTokenRecord {
        id: public_id(&hash),
        hash,
        role,
        name: name.to_string(),
        created_at: now,
    };
    (secret, record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_unique_prefixed_and_hashed() {
        let a = new_secret(BOOTSTRAP_PREFIX);
        let b = new_secret(BOOTSTRAP_PREFIX);
        assert_ne!(a, b);
        assert!(a.starts_with(BOOTSTRAP_PREFIX));
        assert_eq!(a.len(), BOOTSTRAP_PREFIX.len() + 43);
        assert_eq!(hash_secret(&a).len(), 64);
        assert_eq!(hash_secret(&a), hash_secret(&a.clone()));
    }
}
