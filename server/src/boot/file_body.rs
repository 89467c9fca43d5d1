//! A whole file as an HTTP response body, read in large chunks on the blocking pool with one
//! chunk read ahead.
//!
//! Why not tower-http's `ServeFile` for this case: it reads through `tokio::fs::File` in 64 KiB
//! pieces, so every 64 KiB costs a hop to the blocking pool and a second copy (tokio's own
//! buffer, then the stream's). Profiling 50 clients fetching a 64 MB kernel showed that copy
//! and the hops' wake-ups as much of the server's CPU; on a 2-core machine that CPU is what the
//! clients lack. Here each chunk is read straight into the buffer that becomes the body frame,
//! and the next read runs while hyper writes the current one. The file is never loaded whole:
//! at most two chunks per response are in memory. Range, HEAD and conditional requests still
//! go to `ServeFile` (see `artifacts`).

use std::fs::File;
use std::io::Read;
use std::path::Path;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use tokio::task::JoinHandle;

/// Bytes per read: hops and socket writes are paid once per 256 KiB, and 50 clients hold
/// about 25 MiB (two chunks each).
const CHUNK: u64 = 256 * 1024;

type Read1 = JoinHandle<std::io::Result<(File, Vec<u8>)>>;

/// Read up to `want` bytes of `f` on the blocking pool.
fn read_next(mut f: File, want: u64) -> Read1 {
    tokio::task::spawn_blocking(move || {
        // read_to_end fills the spare capacity without zeroing it first.
        let mut buf = Vec::with_capacity(want as usize);
        (&mut f).take(want).read_to_end(&mut buf)?;
        Ok((f, buf))
    })
}

/// `200 OK` with the whole file at `path`: Content-Length, Content-Type (by extension, as
/// `ServeFile` guesses it), Last-Modified and `Accept-Ranges: bytes`.
pub async fn whole_file(path: &Path) -> std::io::Result<Response> {
    let p = path.to_path_buf();
    let (file, meta) = tokio::task::spawn_blocking(move || {
        let f = File::open(&p)?;
        let m = f.metadata()?;
        Ok::<_, std::io::Error>((f, m))
    })
    .await
    .map_err(std::io::Error::other)??;
    let len = meta.len();
    let first = (len > 0).then(|| read_next(file, len.min(CHUNK)));
    let body = futures::stream::try_unfold((first, len), |(pending, left)| async move {
        let Some(pending) = pending else {
            return Ok(None);
        };
        let (f, buf) = pending.await.map_err(std::io::Error::other)??;
        if buf.is_empty() {
            // The file shrank since we sent its length: end the response short (the client
            // sees a truncated body) rather than pad it.
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "artifact shrank while being served",
            ));
        }
        let left = left - buf.len() as u64;
        let next = (left > 0).then(|| read_next(f, left.min(CHUNK)));
        Ok::<_, std::io::Error>(Some((Bytes::from(buf), (next, left))))
    });
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let mut res = Response::new(Body::from_stream(body));
    *res.status_mut() = StatusCode::OK;
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(mime.as_ref()) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(modified) = meta.modified() {
        if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(modified)) {
            h.insert(header::LAST_MODIFIED, v);
        }
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn streams_every_byte_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        for size in [0usize, 1, CHUNK as usize, CHUNK as usize * 2 + 17] {
            let p = dir.path().join("vmlinuz");
            let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            std::fs::write(&p, &data).unwrap();
            let res = whole_file(&p).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(
                res.headers()[header::CONTENT_LENGTH],
                size.to_string().as_str()
            );
            assert_eq!(
                res.headers()[header::CONTENT_TYPE],
                "application/octet-stream"
            );
            assert!(res.headers().contains_key(header::LAST_MODIFIED));
            let body = axum::body::to_bytes(res.into_body(), usize::MAX)
                .await
                .unwrap();
            assert_eq!(body.len(), size);
            assert!(body[..] == data[..], "size {size}: same bytes");
        }
    }
}
