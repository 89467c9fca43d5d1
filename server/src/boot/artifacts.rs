//! Boot artifacts (kernels, initrds) under content-addressed URLs:
//! `/artifacts/<sha256>/<name>`, cacheable forever (`immutable`).
//!
//! A file's hash is computed once (streaming) and cached by path, size and modification time;
//! when the file changes, the next script links the new hash and the old URL stops resolving.
//! Files are streamed, never loaded into memory: a plain GET of the whole file by
//! [`super::file_body`] (large reads, one ahead), anything else — Range, HEAD, conditional
//! requests — by tower-http's `ServeFile`.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use tower::ServiceExt;
use tower_http::services::ServeFile;

/// Cache-Control of content-addressed URLs: the bytes behind one never change.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";

#[derive(Clone)]
struct Hashed {
    size: u64,
    mtime: Option<SystemTime>,
    sha256: String,
}

/// Hashes of the files the server has linked, and the way back from a hash to its file.
#[derive(Default)]
pub struct Artifacts {
    by_path: Mutex<HashMap<PathBuf, Hashed>>,
    by_hash: Mutex<HashMap<String, PathBuf>>,
}

impl Artifacts {
    /// The file's SHA-256 (hex), from the cache when its size and mtime are unchanged.
    pub async fn sha256(&self, path: &Path) -> std::io::Result<String> {
        let meta = tokio::fs::metadata(path).await?;
        if !meta.is_file() {
            return Err(std::io::Error::other("not a regular file"));
        }
        let (size, mtime) = (meta.len(), meta.modified().ok());
        if let Some(h) = self.lock_paths().get(path) {
            if h.size == size && h.mtime == mtime {
                return Ok(h.sha256.clone());
            }
        }
        let p = path.to_path_buf();
        let sha256 = tokio::task::spawn_blocking(move || hash_file(&p))
            .await
            .map_err(std::io::Error::other)??;
        self.lock_paths().insert(
            path.to_path_buf(),
            Hashed {
                size,
                mtime,
                sha256: sha256.clone(),
            },
        );
        self.by_hash
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(sha256.clone(), path.to_path_buf());
        Ok(sha256)
    }

    fn lock_paths(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Hashed>> {
        self.by_path.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The file behind `sha256` named `name`, if it still has that content.
    pub(super) async fn resolve(&self, sha256: &str, name: &str) -> Option<PathBuf> {
        let path = self
            .by_hash
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(sha256)
            .cloned()?;
        if path.file_name()?.to_str()? != name {
            return None;
        }
        // Re-check: a changed file gets a new hash, and the old URL must not serve new bytes.
        (self.sha256(&path).await.ok()?.as_str() == sha256).then_some(path)
    }

    /// Serve `/artifacts/<sha256>/<name>`.
    pub async fn serve(&self, sha256: &str, name: &str, req: Request) -> Response {
        let Some(path) = self.resolve(sha256, name).await else {
            metrics::counter!("anneal_boot_artifacts_total", "result" => "not_found").increment(1);
            return (
                StatusCode::NOT_FOUND,
                "no such artifact (the file changed or was never linked): fetch the boot script again\n",
            )
                .into_response();
        };
        let mut res = if is_plain_get(&req) {
            match super::file_body::whole_file(&path).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "reading an artifact failed");
                    StatusCode::INTERNAL_SERVER_ERROR.into_response()
                }
            }
        } else {
            match ServeFile::new(&path).oneshot(req).await {
                Ok(r) => r.map(Body::new),
                Err(e) => match e {},
            }
        };
        if res.status().is_success() || res.status() == StatusCode::NOT_MODIFIED {
            res.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
        }
        metrics::counter!("anneal_boot_artifacts_total", "result" => res.status().as_str().to_string())
            .increment(1);
        res
    }
}

/// A GET of the whole file, with nothing for `ServeFile`'s Range and conditional handling to do.
fn is_plain_get(req: &Request) -> bool {
    req.method() == Method::GET
        && ![
            header::RANGE,
            header::IF_RANGE,
            header::IF_MODIFIED_SINCE,
            header::IF_UNMODIFIED_SINCE,
            header::IF_MATCH,
            header::IF_NONE_MATCH,
        ]
        .iter()
        .any(|h| req.headers().contains_key(h))
}

fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_is_cached_and_follows_changes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vmlinuz");
        std::fs::write(&p, b"kernel v1").unwrap();
        let a = Artifacts::default();
        let h1 = a.sha256(&p).await.unwrap();
        assert_eq!(h1, hex::encode(Sha256::digest(b"kernel v1")));
        assert_eq!(a.resolve(&h1, "vmlinuz").await, Some(p.clone()));
        assert_eq!(a.resolve(&h1, "other").await, None);
        std::fs::write(&p, b"kernel v2, longer").unwrap();
        assert_eq!(a.resolve(&h1, "vmlinuz").await, None, "stale hash");
        let h2 = a.sha256(&p).await.unwrap();
        assert_ne!(h1, h2);
        assert_eq!(a.resolve(&h2, "vmlinuz").await, Some(p));
    }
}
