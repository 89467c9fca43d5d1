//! The template engine for content (task scripts and args, boot environment scripts, kernel
//! arguments and files): minijinja in strict mode, so a value the template needs but was not
//! given is an error, never an empty string in a script.

use std::collections::BTreeMap;

use minijinja::{Environment, ErrorKind, UndefinedBehavior};
use serde_json::Value;

/// A strict environment. Trailing newlines are kept: scripts and config files end with one.
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Building a syntax config only fails for conflicting delimiters; the defaults have none.
    if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .build()
    {
        env.set_syntax(syntax);
    }
    env
}

/// Whether `c` means nothing special to iPXE's command parser: no `$` (setting expansion), no
/// `|` `&` (`||`, `&&`), no `#`, no whitespace but the space, no control characters.
pub fn is_ipxe_plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || " .,:;/_-=+?()[]@%'\"<>!*".contains(c)
}

/// A strict environment for text that becomes part of an iPXE script (a boot environment's own
/// script, its kernel arguments): every value printed must be plain iPXE text
/// ([`is_ipxe_plain`]), so no param or machine fact can add a command or expand a setting. The
/// template's own text is the operator's and is left alone.
pub fn ipxe_environment() -> Environment<'static> {
    let mut env = environment();
    env.set_formatter(|out, state, value| {
        // Only the offending character is named: the value may be anything.
        if let Some(c) = value.to_string().chars().find(|c| !is_ipxe_plain(*c)) {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("a printed value contains {c:?}, which iPXE would interpret"),
            ));
        }
        minijinja::escape_formatter(out, state, value)
    });
    env
}

/// Whether `source` parses as a template; the error says what and where.
pub fn check_syntax(source: &str) -> Result<(), String> {
    let env = environment();
    env.template_from_str(source).map(|_| ()).map_err(describe)
}

/// `syntax error: unexpected end of input (line 3)`: the error without minijinja's
/// template-name suffix, which would only repeat the field the caller names.
pub fn describe(e: minijinja::Error) -> String {
    let mut msg = e.kind().to_string();
    if let Some(d) = e.detail() {
        msg.push_str(": ");
        msg.push_str(d);
    }
    if let Some(line) = e.line() {
        msg.push_str(&format!(" (line {line})"));
    }
    msg
}

/// `args` with `f` applied to every string inside it (each is a template), the structure kept.
/// `f` gets the string's path (`args.device`, `args.disks.0`) for its errors; every error is
/// collected.
pub fn map_args<E>(
    args: &BTreeMap<String, Value>,
    mut f: impl FnMut(&str, &str) -> Result<String, E>,
) -> Result<BTreeMap<String, Value>, Vec<E>> {
    fn walk<E>(
        path: String,
        v: &Value,
        f: &mut dyn FnMut(&str, &str) -> Result<String, E>,
        errors: &mut Vec<E>,
    ) -> Value {
        match v {
            Value::String(s) => f(&path, s).map_or_else(
                |e| {
                    errors.push(e);
                    Value::Null
                },
                Value::String,
            ),
            Value::Array(items) => (items.iter().enumerate())
                .map(|(i, item)| walk(format!("{path}.{i}"), item, f, errors))
                .collect(),
            Value::Object(map) => (map.iter())
                .map(|(k, item)| (k.clone(), walk(format!("{path}.{k}"), item, f, errors)))
                .collect(),
            other => other.clone(),
        }
    }
    let mut errors = Vec::new();
    let out = (args.iter())
        .map(|(k, v)| (k.clone(), walk(format!("args.{k}"), v, &mut f, &mut errors)))
        .collect();
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}
