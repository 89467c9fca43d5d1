//! A job's output on its way to the server: secrets redacted before anything is kept, bytes
//! buffered (bounded) until the server has acknowledged them, sent by byte offset so a retried
//! upload neither loses nor repeats a byte.
//!
//! While the server is unreachable the buffer grows to its cap; past it the oldest unsent
//! bytes are dropped and a visible marker line takes their place, so the log says what is
//! missing instead of silently skipping it.

/// Replacement for a secret value in a log.
pub const REDACTED: &[u8] = b"********";

/// Redacts secret values from a byte stream, also across chunk boundaries.
#[derive(Debug, Default)]
pub struct Redactor {
    secrets: Vec<Vec<u8>>,
    /// Bytes held back: a secret may continue in the next chunk.
    pending: Vec<u8>,
}

impl Redactor {
    /// Redact these values (empty ones are ignored; longest first, so a secret containing
    /// another is replaced whole).
    pub fn new(secrets: &[String]) -> Redactor {
        let mut secrets: Vec<Vec<u8>> = secrets
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| s.as_bytes().to_vec())
            .collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Redactor {
            secrets,
            pending: Vec::new(),
        }
    }

    /// Take `data`; return what can be released now.
    pub fn push(&mut self, data: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(data);
        self.replace_all();
        let hold = self
            .secrets
            .iter()
            .map(|s| s.len() - 1)
            .max()
            .unwrap_or(0)
            .min(self.pending.len());
        let keep = self.pending.split_off(self.pending.len() - hold);
        std::mem::replace(&mut self.pending, keep)
    }

    /// The end of the stream: release everything held back.
    pub fn finish(&mut self) -> Vec<u8> {
        self.replace_all();
        std::mem::take(&mut self.pending)
    }

    fn replace_all(&mut self) {
        for s in &self.secrets {
            let mut out = Vec::with_capacity(self.pending.len());
            let mut i = 0;
            while i < self.pending.len() {
                if self.pending[i..].starts_with(s) {
                    out.extend_from_slice(REDACTED);
                    i += s.len();
                } else {
                    out.push(self.pending[i]);
                    i += 1;
                }
            }
            self.pending = out;
        }
    }
}

/// Unacknowledged log bytes and where they start in the server's log.
#[derive(Debug)]
pub struct LogBuffer {
    /// Offset of `buf[0]` in the log.
    base: u64,
    buf: Vec<u8>,
    cap: usize,
    /// Bytes dropped because the buffer was full.
    pub dropped: u64,
}

impl LogBuffer {
    /// An empty log, buffering at most `cap` unsent bytes.
    pub fn new(cap: usize) -> LogBuffer {
        LogBuffer {
            base: 0,
            buf: Vec::new(),
            cap: cap.max(1024),
            dropped: 0,
        }
    }

    /// Add output (already redacted).
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        if self.buf.len() > self.cap {
            // Keep the newest half; say how much is gone where it was.
            let drop = self.buf.len() - self.cap / 2;
            self.buf.drain(..drop);
            self.dropped += drop as u64;
            let marker = format!(
                "\n[anneal-agent: {drop} bytes of output dropped here: the server was unreachable and the buffer was full]\n"
            );
            self.buf.splice(0..0, marker.into_bytes());
        }
    }

    /// The next chunk to send (at most `max` bytes) and its offset.
    pub fn chunk(&self, max: usize) -> (u64, &[u8]) {
        (self.base, &self.buf[..self.buf.len().min(max)])
    }

    /// The server's log is `len` bytes long now: forget what it has.
    pub fn acknowledged(&mut self, len: u64) {
        if len <= self.base {
            return;
        }
        let n = ((len - self.base) as usize).min(self.buf.len());
        self.buf.drain(..n);
        self.base += n as u64;
        if len > self.base {
            // The server has more than this buffer ever held (an earlier agent of this
            // attempt): continue after it.
            self.base = len;
        }
    }

    /// Bytes not yet acknowledged.
    pub fn unsent(&self) -> usize {
        self.buf.len()
    }

    /// The log's total length once everything is sent.
    pub fn end(&self) -> u64 {
        self.base + self.buf.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_even_when_split_across_chunks() {
        let mut r = Redactor::new(&["hunter2".into(), String::new()]);
        let mut out = r.push(b"password is hun");
        out.extend(r.push(b"ter2, again: hunter2!"));
        out.extend(r.finish());
        assert_eq!(out, b"password is ********, again: ********!");
    }

    #[test]
    fn without_secrets_everything_passes_at_once() {
        let mut r = Redactor::new(&[]);
        assert_eq!(r.push(b"abc"), b"abc");
        assert!(r.finish().is_empty());
    }

    #[test]
    fn acknowledged_bytes_leave_and_offsets_follow() {
        let mut b = LogBuffer::new(4096);
        b.push(b"hello world");
        assert_eq!(b.chunk(5), (0, &b"hello"[..]));
        b.acknowledged(5);
        assert_eq!(b.chunk(100), (5, &b" world"[..]));
        b.acknowledged(3); // stale: nothing changes
        assert_eq!(b.chunk(100).0, 5);
        b.acknowledged(11);
        assert_eq!((b.unsent(), b.end()), (0, 11));
    }

    #[test]
    fn a_full_buffer_drops_the_oldest_with_a_marker() {
        let mut b = LogBuffer::new(1024);
        b.push(&[b'a'; 1000]);
        b.push(&[b'b'; 100]);
        assert!(b.dropped > 0);
        let (_, text) = b.chunk(usize::MAX);
        let text = String::from_utf8_lossy(text);
        assert!(text.contains("bytes of output dropped here"), "{text}");
        assert!(text.ends_with(&"b".repeat(100)));
        assert!(b.unsent() <= 1024);
    }
}
