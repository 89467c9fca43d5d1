//! The boot storm's hot path: a plain `GET /artifacts/<sha256>/<name>` (a kernel or initrd,
//! fetched whole by every machine of a rack) is answered with `sendfile(2)`, so the bytes go
//! from the page cache to the socket without passing through user space. Measured against
//! nginx (`scripts/bench-http`), the buffered path through hyper reached about half of nginx's
//! throughput; the copy in and out of user space was the difference.
//!
//! Only the simplest request takes this path: HTTP/1.1 `GET`, no body, no `Range` and no
//! conditional headers, an artifact we know. Anything else — a HEAD, a Range request, a
//! script, an unknown artifact (its 404 text comes from the router) — goes to hyper and the
//! router unchanged, with the bytes already read handed over first (see `listener`).

use std::fs::File;
use std::io;

use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;

use super::artifacts::IMMUTABLE;

/// The most header bytes the fast path looks at before handing the request to hyper.
pub const MAX_HEAD: usize = 8192;

/// A request head the fast path can serve.
#[derive(Debug, PartialEq, Eq)]
pub struct ArtifactGet {
    /// Bytes of the head (request line to the blank line).
    pub head_len: usize,
    /// Content address.
    pub sha256: String,
    /// File name.
    pub name: String,
    /// The client asked to close after this response.
    pub close: bool,
}

/// What the bytes read so far say.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    /// The head is not complete yet.
    Partial,
    /// A plain artifact GET.
    Artifact(ArtifactGet),
    /// Anything else: hyper's job.
    Other,
}

/// Classify the start of `buf` (never panics on any input).
pub fn classify(buf: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Head::Partial,
        // Too long, too many headers or malformed: hyper gives the proper error.
        _ => return Head::Other,
    };
    if req.method != Some("GET") || req.version != Some(1) {
        return Head::Other;
    }
    let mut close = false;
    for h in req.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        match name.as_str() {
            "range"
            | "if-range"
            | "if-match"
            | "if-none-match"
            | "if-modified-since"
            | "if-unmodified-since"
            | "content-length"
            | "transfer-encoding"
            | "expect"
            | "upgrade" => return Head::Other,
            "connection" => {
                close = String::from_utf8_lossy(h.value)
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("close"))
            }
            _ => {}
        }
    }
    let Some(path) = req.path else {
        return Head::Other;
    };
    let Some(rest) = path.strip_prefix("/artifacts/") else {
        return Head::Other;
    };
    let Some((sha256, name)) = rest.split_once('/') else {
        return Head::Other;
    };
    // Exactly what the router's `{sha256}/{name}` would take, without percent-decoding: a
    // name needing decoding (or a query) goes the general way.
    let plain = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    };
    if !plain(sha256) || !plain(name) {
        return Head::Other;
    }
    Head::Artifact(ArtifactGet {
        head_len,
        sha256: sha256.to_string(),
        name: name.to_string(),
        close,
    })
}

/// Send `file` (of `len` bytes) as a 200 response. An error (or the file shrinking under us)
/// means the response is incomplete and the connection must be closed.
pub async fn send(stream: &mut TcpStream, file: &File, len: u64, close: bool) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {len}\r\n\
         accept-ranges: bytes\r\ncache-control: {IMMUTABLE}\r\n{}\r\n",
        if close { "connection: close\r\n" } else { "" }
    );
    stream.write_all(head.as_bytes()).await?;
    let mut offset: i64 = 0;
    let total = i64::try_from(len).map_err(io::Error::other)?;
    while offset < total {
        // At most 1 MiB per call, so one transfer never holds the task for long.
        let chunk = usize::try_from((total - offset).min(1 << 20)).unwrap_or(1 << 20);
        let sent = stream
            .async_io(Interest::WRITABLE, || {
                nix::sys::sendfile::sendfile64(&*stream, file, Some(&mut offset), chunk)
                    .map_err(io::Error::from)
            })
            .await;
        match sent {
            Ok(0) => return Err(io::Error::other("the file shrank while it was being sent")),
            Ok(_) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "ab12cd34";

    #[test]
    fn plain_artifact_gets_take_the_fast_path() {
        let req = format!("GET /artifacts/{SHA}/vmlinuz HTTP/1.1\r\nHost: x\r\n\r\nrest");
        assert_eq!(
            classify(req.as_bytes()),
            Head::Artifact(ArtifactGet {
                head_len: req.len() - 4,
                sha256: SHA.into(),
                name: "vmlinuz".into(),
                close: false
            })
        );
        let close =
            format!("GET /artifacts/{SHA}/initrd.img HTTP/1.1\r\nConnection: Close\r\n\r\n");
        assert!(matches!(classify(close.as_bytes()), Head::Artifact(a) if a.close));
    }

    #[test]
    fn everything_else_goes_to_hyper() {
        for req in [
            format!("HEAD /artifacts/{SHA}/vmlinuz HTTP/1.1\r\n\r\n"),
            format!("GET /artifacts/{SHA}/vmlinuz HTTP/1.0\r\n\r\n"),
            format!("GET /artifacts/{SHA}/vmlinuz HTTP/1.1\r\nRange: bytes=0-9\r\n\r\n"),
            format!("GET /artifacts/{SHA}/vmlinuz HTTP/1.1\r\nIf-None-Match: x\r\n\r\n"),
            format!("GET /artifacts/{SHA}/vmlinuz?x=1 HTTP/1.1\r\n\r\n"),
            format!("GET /artifacts/{SHA}/a%20b HTTP/1.1\r\n\r\n"),
            format!("GET /artifacts/{SHA}/../x HTTP/1.1\r\n\r\n"),
            format!("GET /artifacts/{SHA} HTTP/1.1\r\n\r\n"),
            "GET /boot.ipxe HTTP/1.1\r\n\r\n".to_string(),
            "garbage\r\n\r\n".to_string(),
            format!("GET /x HTTP/1.1\r\n{}\r\n", "a: b\r\n".repeat(40)),
        ] {
            assert_eq!(classify(req.as_bytes()), Head::Other, "{req}");
        }
        assert_eq!(
            classify(b"GET /artifacts/ab/c HTTP/1.1\r\nHo"),
            Head::Partial
        );
        assert_eq!(classify(&[b'x'; MAX_HEAD + 1]), Head::Other);
    }

    #[test]
    fn classify_survives_garbage() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let len = (x % 300) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    if x.is_multiple_of(3) {
                        b"GET /artifacts/ HTTP/1.1\r\n:"[(x % 27) as usize]
                    } else {
                        x as u8
                    }
                })
                .collect();
            let _ = classify(&bytes);
        }
    }
}
