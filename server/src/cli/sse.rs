//! A server-sent events reader: turns the bytes of a `text/event-stream` into frames, as they
//! arrive in chunks of any size.

/// One dispatched event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frame {
    /// The `id:` field, when the event had one.
    pub id: Option<String>,
    /// The `event:` field (`message` when absent).
    pub event: Option<String>,
    /// The `data:` lines joined by newlines.
    pub data: String,
}

/// Longest line accepted; a stream sending more without a newline is not an event stream.
pub const MAX_LINE: usize = 1 << 20;

/// Why a stream could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    /// A line longer than [`MAX_LINE`].
    #[error("an event-stream line is longer than {MAX_LINE} bytes")]
    LineTooLong,
}

/// Incremental parser state.
#[derive(Debug, Default)]
pub struct SseReader {
    line: Vec<u8>,
    frame: Frame,
    has_data: bool,
}

impl SseReader {
    /// Feed the next chunk; the frames it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Frame>, SseError> {
        let mut out = Vec::new();
        for &b in chunk {
            if b != b'\n' {
                if self.line.len() >= MAX_LINE {
                    return Err(SseError::LineTooLong);
                }
                self.line.push(b);
                continue;
            }
            if self.line.last() == Some(&b'\r') {
                self.line.pop();
            }
            let line = std::mem::take(&mut self.line);
            self.field(&String::from_utf8_lossy(&line), &mut out);
        }
        Ok(out)
    }

    fn field(&mut self, line: &str, out: &mut Vec<Frame>) {
        if line.is_empty() {
            let frame = std::mem::take(&mut self.frame);
            if std::mem::take(&mut self.has_data) {
                out.push(frame);
            }
            return;
        }
        if line.starts_with(':') {
            return; // a comment: keep-alive
        }
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value).to_string();
        match name {
            "id" => self.frame.id = Some(value),
            "event" => self.frame.event = Some(value),
            "data" => {
                if self.has_data {
                    self.frame.data.push('\n');
                }
                self.frame.data.push_str(&value);
                self.has_data = true;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_anywhere_read_the_same() {
        let text = b": keep-alive\n\nid: 7-1\nevent: run_phase\ndata: {\"a\":1}\n\n\
                     id:7-2\r\nevent:reset\r\ndata: x\r\ndata: y\r\n\r\n";
        let want = vec![
            Frame {
                id: Some("7-1".into()),
                event: Some("run_phase".into()),
                data: "{\"a\":1}".into(),
            },
            Frame {
                id: Some("7-2".into()),
                event: Some("reset".into()),
                data: "x\ny".into(),
            },
        ];
        for split in 0..text.len() {
            let mut r = SseReader::default();
            let mut got = r.push(&text[..split]).unwrap();
            got.extend(r.push(&text[split..]).unwrap());
            assert_eq!(got, want, "split at {split}");
        }
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut r = SseReader::default();
        assert_eq!(
            r.push(&vec![b'a'; MAX_LINE + 1]),
            Err(SseError::LineTooLong)
        );
    }
}
