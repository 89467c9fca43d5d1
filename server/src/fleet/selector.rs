//! The selector language: which machines a listing, a bulk assignment or a rule is for.
//!
//! ```text
//! selector := term ( "," term )*          every term must hold (comma = AND)
//! term     := key op value                spaces around each part are ignored
//! op       := "=" | "!=" | "~" | "!~" | ">" | ">=" | "<" | "<="
//! ```
//!
//! | key | what | operators |
//! |---|---|---|
//! | `tag` | any of the machine's tags | `=` `!=` `~` `!~` |
//! | `mac` | any physical NIC's MAC | `=` `!=` `~` `!~` |
//! | `id`, `hostname`, `manufacturer`, `product`, `serial` | the record and inventory | `=` `!=` `~` `!~` |
//! | `site`, `row`, `rack`, `slot` | the location | `=` `!=` `~` `!~` |
//! | `state` | `pending` or `discovered` | `=` `!=` |
//! | `claim` | `operator`, `new` or `none` | `=` `!=` |
//! | `cpus`, `disks`, `nics` | counts (`nics`: physical NICs' MACs) | `=` `!=` `>` `>=` `<` `<=` |
//! | `memory` | bytes; `K`, `M`, `G`, `T` (also `KiB`…) are powers of 1024 | `=` `!=` `>` `>=` `<` `<=` |
//!
//! Text compares without regard to ASCII case; `~` means "contains". A negated term (`!=`,
//! `!~`) matches exactly the machines its positive form does not, including those that lack
//! the field (no inventory yet, no rack set). A value runs to the next comma, so it cannot
//! contain one. The fields are those of [`MachineSummary`], what `anneal machines ls` shows.

use std::fmt;

use anneal_shared::api::MachineSummary;

/// Longest selector accepted (bytes).
pub const MAX_LEN: usize = 4096;
/// Most terms in one selector.
pub const MAX_TERMS: usize = 64;

/// A parsed selector: all of its terms must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    terms: Vec<Term>,
}

/// Why a selector does not parse: which term (from 1; 0 for the selector as a whole), its text,
/// and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SelectorError {
    /// The term's position, from 1; 0 when the problem is the whole selector.
    pub term: usize,
    /// The term as written.
    pub text: String,
    /// What is wrong with it.
    pub problem: String,
}

impl fmt::Display for SelectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.term == 0 {
            write!(f, "{}", self.problem)
        } else {
            write!(f, "term {} `{}`: {}", self.term, self.text, self.problem)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Tag,
    Mac,
    Id,
    Hostname,
    Manufacturer,
    Product,
    Serial,
    Site,
    Row,
    Rack,
    Slot,
    State,
    Claim,
    Cpus,
    Disks,
    Nics,
    Memory,
}

/// What values a key holds, which decides its operators and how its value parses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Text,
    Choice(&'static [&'static str]),
    Count,
    Bytes,
}

const KEYS: [(&str, Key); 17] = [
    ("tag", Key::Tag),
    ("mac", Key::Mac),
    ("id", Key::Id),
    ("hostname", Key::Hostname),
    ("manufacturer", Key::Manufacturer),
    ("product", Key::Product),
    ("serial", Key::Serial),
    ("site", Key::Site),
    ("row", Key::Row),
    ("rack", Key::Rack),
    ("slot", Key::Slot),
    ("state", Key::State),
    ("claim", Key::Claim),
    ("cpus", Key::Cpus),
    ("disks", Key::Disks),
    ("nics", Key::Nics),
    ("memory", Key::Memory),
];

/// The text a key or operator is written as, from its table.
fn written<T: PartialEq>(table: &[(&'static str, T)], v: T) -> &'static str {
    table
        .iter()
        .find(|(_, t)| *t == v)
        .map(|(n, _)| *n)
        .unwrap_or("?")
}

impl Key {
    fn name(self) -> &'static str {
        written(&KEYS, self)
    }

    fn shape(self) -> Shape {
        match self {
            Key::State => Shape::Choice(&["pending", "discovered"]),
            Key::Claim => Shape::Choice(&["operator", "new", "none"]),
            Key::Cpus | Key::Disks | Key::Nics => Shape::Count,
            Key::Memory => Shape::Bytes,
            _ => Shape::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Like,
    NotLike,
    Gt,
    Ge,
    Lt,
    Le,
}

/// Two-character operators first, so `>=` is not read as `>` and a value `=…`.
const OPS: [(&str, Op); 8] = [
    ("!=", Op::Ne),
    ("!~", Op::NotLike),
    (">=", Op::Ge),
    ("<=", Op::Le),
    ("=", Op::Eq),
    ("~", Op::Like),
    (">", Op::Gt),
    ("<", Op::Lt),
];

impl Op {
    fn as_str(self) -> &'static str {
        written(&OPS, self)
    }

    fn allowed(shape: Shape) -> &'static [Op] {
        match shape {
            Shape::Text => &[Op::Eq, Op::Ne, Op::Like, Op::NotLike],
            Shape::Choice(_) => &[Op::Eq, Op::Ne],
            Shape::Count | Shape::Bytes => &[Op::Eq, Op::Ne, Op::Gt, Op::Ge, Op::Lt, Op::Le],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Text(String),
    Number(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Term {
    key: Key,
    op: Op,
    value: Value,
}

impl Selector {
    /// Parse `text`; the error names the term and what is wrong with it.
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        let whole = |problem: String| SelectorError {
            term: 0,
            text: String::new(),
            problem,
        };
        if text.len() > MAX_LEN {
            return Err(whole(format!(
                "the selector is {} bytes long; at most {MAX_LEN} are allowed",
                text.len()
            )));
        }
        if text.trim().is_empty() {
            return Err(whole(
                "the selector is empty: give at least one term, e.g. `tag=web`".into(),
            ));
        }
        let raw: Vec<&str> = text.split(',').collect();
        if raw.len() > MAX_TERMS {
            return Err(whole(format!(
                "the selector has {} terms; at most {MAX_TERMS} are allowed",
                raw.len()
            )));
        }
        let terms = raw
            .iter()
            .enumerate()
            .map(|(i, t)| {
                parse_term(t.trim()).map_err(|problem| SelectorError {
                    term: i + 1,
                    text: t.trim().to_string(),
                    problem,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Selector { terms })
    }

    /// Whether every term holds for `m`.
    pub fn matches(&self, m: &MachineSummary) -> bool {
        self.terms.iter().all(|t| t.matches(m))
    }
}

/// The canonical text: parsing it gives the same selector.
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.terms.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let value = match &t.value {
                Value::Text(s) => s.clone(),
                Value::Number(n) => n.to_string(),
            };
            write!(f, "{}{}{}", t.key.name(), t.op.as_str(), value)?;
        }
        Ok(())
    }
}

fn parse_term(term: &str) -> Result<Term, String> {
    if term.is_empty() {
        return Err("the term is empty (two commas in a row, or a comma at an end)".into());
    }
    let Some(at) = term.find(['=', '!', '~', '<', '>']) else {
        return Err(
            "no operator: write key, operator, value, e.g. `tag=web` or `disks>=2` \
             (operators: = != ~ !~ > >= < <=)"
                .into(),
        );
    };
    let key_text = term[..at].trim();
    let rest = &term[at..];
    let Some((op_text, op)) = OPS.iter().find(|(s, _)| rest.starts_with(s)) else {
        return Err("`!` must be followed by `=` or `~`".into());
    };
    let value = rest[op_text.len()..].trim();
    if key_text.is_empty() {
        return Err(format!("no key before `{op_text}`"));
    }
    let Some(key) = KEYS.iter().find(|(n, _)| *n == key_text).map(|(_, k)| *k) else {
        let known: Vec<&str> = KEYS.iter().map(|(n, _)| *n).collect();
        return Err(format!(
            "unknown key `{key_text}` (keys: {})",
            known.join(", ")
        ));
    };
    let shape = key.shape();
    if !Op::allowed(shape).contains(op) {
        let ops: Vec<&str> = Op::allowed(shape).iter().map(|o| o.as_str()).collect();
        return Err(format!(
            "`{key_text}` takes {}, not `{op_text}`",
            ops.join(" ")
        ));
    }
    if value.is_empty() {
        return Err(format!("no value after `{op_text}`"));
    }
    if value.starts_with(['=', '~', '<', '>', '!']) {
        return Err(format!(
            "the value `{value}` starts with an operator character (write `=`, not `==`)"
        ));
    }
    let value = match shape {
        Shape::Text => Value::Text(value.to_string()),
        Shape::Choice(choices) => {
            let v = value.to_ascii_lowercase();
            if !choices.contains(&v.as_str()) {
                return Err(format!(
                    "`{key_text}` is one of {}, not `{value}`",
                    choices.join(", ")
                ));
            }
            Value::Text(v)
        }
        Shape::Count => Value::Number(
            value
                .parse()
                .map_err(|_| format!("`{value}` is not a whole number"))?,
        ),
        Shape::Bytes => Value::Number(parse_bytes(value)?),
    };
    Ok(Term {
        key,
        op: *op,
        value,
    })
}

/// `64G`, `64GiB`, `512M`, `1T`, or plain bytes; units are powers of 1024.
fn parse_bytes(value: &str) -> Result<u64, String> {
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (digits, unit) = value.split_at(split);
    let n: u64 = digits.parse().map_err(|_| {
        format!("`{value}` is not a size (a whole number, optionally with K, M, G or T)")
    })?;
    let unit = unit.trim().to_ascii_lowercase();
    let base = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(&unit);
    let shift = match base {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "p" => 50,
        _ => return Err(format!("`{value}`: unknown unit (use K, M, G, T or P)")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("`{value}` is too large"))
}

impl Term {
    fn matches(&self, m: &MachineSummary) -> bool {
        let (positive, negate) = match self.op {
            Op::Ne => (Op::Eq, true),
            Op::NotLike => (Op::Like, true),
            op => (op, false),
        };
        let hit = match &self.value {
            Value::Text(want) => texts(self.key, m).iter().any(|have| match positive {
                Op::Like => have
                    .to_ascii_lowercase()
                    .contains(&want.to_ascii_lowercase()),
                _ => have.eq_ignore_ascii_case(want),
            }),
            Value::Number(want) => number(self.key, m).is_some_and(|have| match positive {
                Op::Gt => have > *want,
                Op::Ge => have >= *want,
                Op::Lt => have < *want,
                Op::Le => have <= *want,
                _ => have == *want,
            }),
        };
        hit != negate
    }
}

/// A text key's values on `m` (several for tags and MACs; none when the field is unset).
fn texts(key: Key, m: &MachineSummary) -> Vec<String> {
    let one = |v: &Option<String>| v.iter().cloned().collect();
    match key {
        Key::Tag => m.tags.clone(),
        Key::Mac => m.macs.clone(),
        Key::Id => vec![m.id.to_string()],
        Key::Hostname => one(&m.hostname),
        Key::Manufacturer => one(&m.manufacturer),
        Key::Product => one(&m.product),
        Key::Serial => one(&m.serial),
        Key::Site => one(&m.location.site),
        Key::Row => one(&m.location.row),
        Key::Rack => one(&m.location.rack),
        Key::Slot => one(&m.location.slot),
        Key::State => vec![m.state.as_str().to_string()],
        Key::Claim => vec![m.claim.map_or("none", |c| c.as_str()).to_string()],
        Key::Cpus | Key::Disks | Key::Nics | Key::Memory => Vec::new(),
    }
}

/// A numeric key's value on `m`, when known.
fn number(key: Key, m: &MachineSummary) -> Option<u64> {
    match key {
        Key::Cpus => m.cpus.map(u64::from),
        Key::Disks => m.disks.map(u64::from),
        // The physical NICs' MACs the machine presented when it enrolled.
        Key::Nics => Some(m.macs.len() as u64),
        Key::Memory => m.memory_bytes,
        _ => None,
    }
}

#[cfg(test)]
#[path = "selector_tests.rs"]
mod tests;
