//! TFTP packets (RFC 1350) with option extension (RFC 2347): pure parsing and serialisation.
//!
//! Nothing here panics on input: every read is bounds-checked and every malformation is a
//! [`ParseError`].

use std::fmt;

/// Largest block size RFC 2348 allows.
pub const MAX_BLKSIZE: u16 = 65_464;
/// Smallest block size RFC 2348 allows.
pub const MIN_BLKSIZE: u16 = 8;
/// Block size without negotiation (RFC 1350).
pub const DEFAULT_BLKSIZE: u16 = 512;

/// Opcodes.
pub const OP_RRQ: u16 = 1;
/// Write request.
pub const OP_WRQ: u16 = 2;
/// Data.
pub const OP_DATA: u16 = 3;
/// Acknowledgement.
pub const OP_ACK: u16 = 4;
/// Error.
pub const OP_ERROR: u16 = 5;
/// Option acknowledgement (RFC 2347).
pub const OP_OACK: u16 = 6;

/// TFTP error codes (RFC 1350, RFC 2347).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// Not defined, see message.
    NotDefined = 0,
    /// File not found.
    FileNotFound = 1,
    /// Access violation.
    AccessViolation = 2,
    /// Disk full.
    DiskFull = 3,
    /// Illegal TFTP operation.
    IllegalOperation = 4,
    /// Unknown transfer ID.
    UnknownTid = 5,
    /// File already exists.
    FileExists = 6,
    /// No such user.
    NoSuchUser = 7,
    /// Option negotiation refused (RFC 2347).
    OptionRefused = 8,
}

/// Transfer mode of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `netascii`.
    Netascii,
    /// `octet`.
    Octet,
    /// `mail` (obsolete).
    Mail,
}

/// A read or write request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The file name exactly as sent.
    pub filename: String,
    /// The transfer mode.
    pub mode: Mode,
    /// Options in the order sent; names lower-cased, values as sent.
    pub options: Vec<(String, String)>,
}

/// One parsed packet. `Data` borrows its payload from the input buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Read request.
    Rrq(Request),
    /// Write request.
    Wrq(Request),
    /// A data block.
    Data {
        /// Block number.
        block: u16,
        /// Payload.
        data: &'a [u8],
    },
    /// Acknowledgement of a block.
    Ack(u16),
    /// An error.
    Error {
        /// Error code (any value; unknown codes are kept).
        code: u16,
        /// Message.
        message: String,
    },
    /// Option acknowledgement.
    Oack(Vec<(String, String)>),
}

/// Why a packet could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Fewer than two bytes.
    TooShort,
    /// An opcode outside 1..=6.
    UnknownOpcode(u16),
    /// A string field without its terminating NUL.
    Unterminated(&'static str),
    /// A string field that is not UTF-8.
    NotUtf8(&'static str),
    /// A mode other than netascii, octet or mail.
    BadMode(String),
    /// An empty file name.
    EmptyFilename,
    /// An option name without a value.
    OptionWithoutValue(String),
    /// The same option twice.
    DuplicateOption(String),
    /// A DATA/ACK packet of the wrong length.
    BadLength(&'static str),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::TooShort => write!(f, "packet shorter than an opcode"),
            ParseError::UnknownOpcode(op) => write!(f, "unknown opcode {op}"),
            ParseError::Unterminated(what) => write!(f, "{what} is not NUL-terminated"),
            ParseError::NotUtf8(what) => write!(f, "{what} is not UTF-8"),
            ParseError::BadMode(m) => write!(f, "unknown transfer mode {m:?}"),
            ParseError::EmptyFilename => write!(f, "empty file name"),
            ParseError::OptionWithoutValue(o) => write!(f, "option {o:?} has no value"),
            ParseError::DuplicateOption(o) => write!(f, "option {o:?} given twice"),
            ParseError::BadLength(what) => write!(f, "{what} packet has a bad length"),
        }
    }
}

impl std::error::Error for ParseError {}

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    let b = buf.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([*b.first()?, *b.get(1)?]))
}

/// Split off one NUL-terminated UTF-8 string.
fn take_str<'a>(rest: &'a [u8], what: &'static str) -> Result<(String, &'a [u8]), ParseError> {
    let nul = rest
        .iter()
        .position(|&b| b == 0)
        .ok_or(ParseError::Unterminated(what))?;
    let (s, tail) = rest.split_at(nul);
    let s = std::str::from_utf8(s).map_err(|_| ParseError::NotUtf8(what))?;
    Ok((s.to_string(), tail.get(1..).unwrap_or_default()))
}

/// Parse `name\0value\0` pairs until the input ends.
fn parse_options(mut rest: &[u8]) -> Result<Vec<(String, String)>, ParseError> {
    let mut options: Vec<(String, String)> = Vec::new();
    while !rest.is_empty() {
        let (name, tail) = take_str(rest, "option name")?;
        if tail.is_empty() {
            return Err(ParseError::OptionWithoutValue(name));
        }
        let (value, tail) = take_str(tail, "option value")?;
        let name = name.to_ascii_lowercase();
        if options.iter().any(|(n, _)| *n == name) {
            return Err(ParseError::DuplicateOption(name));
        }
        options.push((name, value));
        rest = tail;
    }
    Ok(options)
}

fn parse_request(body: &[u8]) -> Result<Request, ParseError> {
    let (filename, rest) = take_str(body, "file name")?;
    if filename.is_empty() {
        return Err(ParseError::EmptyFilename);
    }
    let (mode, rest) = take_str(rest, "mode")?;
    let mode = match mode.to_ascii_lowercase().as_str() {
        "netascii" => Mode::Netascii,
        "octet" => Mode::Octet,
        "mail" => Mode::Mail,
        _ => return Err(ParseError::BadMode(mode)),
    };
    let options = parse_options(rest)?;
    Ok(Request {
        filename,
        mode,
        options,
    })
}

/// Parse one datagram.
pub fn parse(buf: &[u8]) -> Result<Packet<'_>, ParseError> {
    let op = u16_at(buf, 0).ok_or(ParseError::TooShort)?;
    let body = buf.get(2..).unwrap_or_default();
    match op {
        OP_RRQ => Ok(Packet::Rrq(parse_request(body)?)),
        OP_WRQ => Ok(Packet::Wrq(parse_request(body)?)),
        OP_DATA => {
            let block = u16_at(buf, 2).ok_or(ParseError::BadLength("DATA"))?;
            let data = buf.get(4..).unwrap_or_default();
            if data.len() > MAX_BLKSIZE as usize {
                return Err(ParseError::BadLength("DATA"));
            }
            Ok(Packet::Data { block, data })
        }
        OP_ACK => {
            // Some clients pad; RFC 1350 says exactly 4 bytes, and we hold to it.
            if buf.len() != 4 {
                return Err(ParseError::BadLength("ACK"));
            }
            Ok(Packet::Ack(
                u16_at(buf, 2).ok_or(ParseError::BadLength("ACK"))?,
            ))
        }
        OP_ERROR => {
            let code = u16_at(buf, 2).ok_or(ParseError::BadLength("ERROR"))?;
            let rest = buf.get(4..).unwrap_or_default();
            // Be lenient about the message: lossy UTF-8, missing NUL tolerated.
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            let message = String::from_utf8_lossy(rest.get(..end).unwrap_or_default()).into_owned();
            Ok(Packet::Error { code, message })
        }
        OP_OACK => Ok(Packet::Oack(parse_options(body)?)),
        other => Err(ParseError::UnknownOpcode(other)),
    }
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// Serialise a request (used by test clients and the bench client).
pub fn request(op: u16, filename: &str, mode: &str, options: &[(&str, &str)]) -> Vec<u8> {
    let mut out = op.to_be_bytes().to_vec();
    push_str(&mut out, filename);
    push_str(&mut out, mode);
    for (n, v) in options {
        push_str(&mut out, n);
        push_str(&mut out, v);
    }
    out
}

/// Serialise a DATA packet into `out` (cleared first), so one buffer can be reused.
pub fn data_into(out: &mut Vec<u8>, block: u16, data: &[u8]) {
    out.clear();
    out.extend_from_slice(&OP_DATA.to_be_bytes());
    out.extend_from_slice(&block.to_be_bytes());
    out.extend_from_slice(data);
}

/// Serialise an ACK.
pub fn ack(block: u16) -> [u8; 4] {
    let [a, b] = OP_ACK.to_be_bytes();
    let [c, d] = block.to_be_bytes();
    [a, b, c, d]
}

/// Serialise an ERROR. The message is cut at any NUL it contains.
pub fn error(code: ErrorCode, message: &str) -> Vec<u8> {
    let mut out = OP_ERROR.to_be_bytes().to_vec();
    out.extend_from_slice(&(code as u16).to_be_bytes());
    let msg = message.split('\0').next().unwrap_or_default();
    push_str(&mut out, msg);
    out
}

/// Serialise an OACK.
pub fn oack(options: &[(String, String)]) -> Vec<u8> {
    let mut out = OP_OACK.to_be_bytes().to_vec();
    for (n, v) in options {
        push_str(&mut out, n);
        push_str(&mut out, v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rrq_with_options() {
        let raw = request(
            OP_RRQ,
            "/undionly.kpxe",
            "OCTET",
            &[("BlkSize", "1468"), ("tsize", "0"), ("windowsize", "16")],
        );
        let Packet::Rrq(r) = parse(&raw).unwrap() else {
            panic!("not an RRQ")
        };
        assert_eq!(r.filename, "/undionly.kpxe");
        assert_eq!(r.mode, Mode::Octet);
        assert_eq!(
            r.options,
            vec![
                ("blksize".to_string(), "1468".to_string()),
                ("tsize".into(), "0".into()),
                ("windowsize".into(), "16".into())
            ]
        );
    }

    #[test]
    fn wrq_and_modes() {
        let raw = request(OP_WRQ, "x", "netascii", &[]);
        let Packet::Wrq(r) = parse(&raw).unwrap() else {
            panic!("not a WRQ")
        };
        assert_eq!((r.filename.as_str(), r.mode), ("x", Mode::Netascii));
        assert!(r.options.is_empty());
        let raw = request(OP_RRQ, "x", "mail", &[]);
        assert!(matches!(
            parse(&raw),
            Ok(Packet::Rrq(Request {
                mode: Mode::Mail,
                ..
            }))
        ));
        let raw = request(OP_RRQ, "x", "binary", &[]);
        assert_eq!(parse(&raw), Err(ParseError::BadMode("binary".into())));
    }

    #[test]
    fn data_ack_error_oack_round_trip() {
        let mut buf = Vec::new();
        data_into(&mut buf, 7, b"hello");
        assert_eq!(
            parse(&buf).unwrap(),
            Packet::Data {
                block: 7,
                data: b"hello"
            }
        );
        data_into(&mut buf, 65535, b"");
        assert_eq!(
            parse(&buf).unwrap(),
            Packet::Data {
                block: 65535,
                data: b""
            }
        );
        assert_eq!(parse(&ack(513)).unwrap(), Packet::Ack(513));
        let e = error(ErrorCode::FileNotFound, "nope\0hidden");
        assert_eq!(
            parse(&e).unwrap(),
            Packet::Error {
                code: 1,
                message: "nope".into()
            }
        );
        let o = oack(&[
            ("blksize".into(), "1468".into()),
            ("tsize".into(), "42".into()),
        ]);
        assert_eq!(
            parse(&o).unwrap(),
            Packet::Oack(vec![
                ("blksize".into(), "1468".into()),
                ("tsize".into(), "42".into())
            ])
        );
        assert_eq!(parse(&oack(&[])).unwrap(), Packet::Oack(vec![]));
    }

    #[test]
    fn malformed_inputs_are_errors() {
        assert_eq!(parse(b""), Err(ParseError::TooShort));
        assert_eq!(parse(b"\x00"), Err(ParseError::TooShort));
        assert_eq!(parse(b"\x00\x09"), Err(ParseError::UnknownOpcode(9)));
        assert_eq!(parse(b"\x00\x00"), Err(ParseError::UnknownOpcode(0)));
        assert_eq!(
            parse(b"\x00\x01file"),
            Err(ParseError::Unterminated("file name"))
        );
        assert_eq!(
            parse(b"\x00\x01\x00octet\x00"),
            Err(ParseError::EmptyFilename)
        );
        assert_eq!(
            parse(b"\x00\x01f\x00octet"),
            Err(ParseError::Unterminated("mode"))
        );
        assert_eq!(
            parse(b"\x00\x01f\x00octet\x00blksize\x00"),
            Err(ParseError::OptionWithoutValue("blksize".into()))
        );
        assert_eq!(
            parse(b"\x00\x01f\x00octet\x00blksize\x00512"),
            Err(ParseError::Unterminated("option value"))
        );
        assert_eq!(
            parse(b"\x00\x01f\x00octet\x00a\x001\x00A\x002\x00"),
            Err(ParseError::DuplicateOption("a".into()))
        );
        assert_eq!(
            parse(b"\x00\x01\xff\xfe\x00octet\x00"),
            Err(ParseError::NotUtf8("file name"))
        );
        assert_eq!(parse(b"\x00\x04\x00"), Err(ParseError::BadLength("ACK")));
        assert_eq!(
            parse(b"\x00\x04\x00\x01\x00"),
            Err(ParseError::BadLength("ACK"))
        );
        assert_eq!(parse(b"\x00\x03\x00"), Err(ParseError::BadLength("DATA")));
        assert_eq!(parse(b"\x00\x05\x00"), Err(ParseError::BadLength("ERROR")));
        let big = vec![0u8; 4 + MAX_BLKSIZE as usize + 1];
        let mut big = big;
        big[1] = 3;
        assert_eq!(parse(&big), Err(ParseError::BadLength("DATA")));
        // An ERROR without its NUL, or with invalid UTF-8, is still understood.
        assert_eq!(
            parse(b"\x00\x05\x00\x02bad\xff").unwrap(),
            Packet::Error {
                code: 2,
                message: "bad\u{fffd}".into()
            }
        );
    }
}
