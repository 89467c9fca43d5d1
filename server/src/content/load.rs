//! The strict reader of content files.
//!
//! A file holds one or more YAML documents, each one object with a `kind:` key and the fields
//! of its type. The types in `anneal_shared::content` ignore unknown keys (they are wire types);
//! here every ignored key is an error, so a typo (`timout_secs`) never passes silently as the
//! default. Every problem in every file is collected, each naming file, document, line (where
//! known), object and field.

use std::path::{Path, PathBuf};

use anneal_shared::content::{
    BootEnv, ContentObject, Kind, ParamDef, Profile, Rule, Stage, Task, Workflow,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml_ng::{Deserializer, Value};

use super::error::{ContentError, ContentErrors, Origin};
use super::set::ContentSet;

/// Load the documents of one file; `label` names it in errors.
pub fn load_str(label: &str, text: &str) -> Result<ContentSet, ContentErrors> {
    load_files([(label, text)])
}

/// Load several files (label, text) into one set, as if read from one directory: an object
/// defined in two of them is an error naming both.
pub fn load_files<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<ContentSet, ContentErrors> {
    let mut set = ContentSet::new();
    let mut errors = Vec::new();
    for (label, text) in files {
        read_into(label, text, &mut set, &mut errors);
    }
    ContentErrors::check(errors, set)
}

/// Load every `*.yaml` and `*.yml` file under `path` (recursively, in sorted order; names
/// starting with `.` are skipped, symlinked directories are not followed), or `path` itself if
/// it is a file. Files are labelled by their path as reached from `path`.
pub fn load_dir(path: &Path) -> Result<ContentSet, ContentErrors> {
    let files = content_files(path)?;
    let mut errors = Vec::new();
    let mut set = ContentSet::new();
    for file in files {
        let label = file.display().to_string();
        match std::fs::read(&file).map(String::from_utf8) {
            Ok(Ok(text)) => read_into(&label, &text, &mut set, &mut errors),
            Ok(Err(_)) => errors.push(file_error(&label, "not UTF-8 text".into())),
            Err(e) => errors.push(file_error(&label, format!("cannot read: {e}"))),
        }
    }
    ContentErrors::check(errors, set)
}

/// The content files [`load_dir`] reads: every `*.yaml` and `*.yml` under `path`
/// (recursively, sorted, dot-names skipped, symlinked directories not followed), or `path`
/// itself if it is a file. `anneal apply` sends these so the server's errors name them.
pub fn content_files(path: &Path) -> Result<Vec<PathBuf>, ContentErrors> {
    let mut errors = Vec::new();
    let mut files = Vec::new();
    if path.is_file() {
        files.push(path.to_path_buf());
    } else {
        find_files(path, &mut files, &mut errors);
    }
    files.sort();
    ContentErrors::check(errors, files)
}

fn file_error(label: &str, message: String) -> ContentError {
    ContentError {
        origin: Some(Origin {
            file: label.to_string(),
            document: None,
            line: None,
        }),
        kind: None,
        name: None,
        message,
    }
}

fn find_files(dir: &Path, files: &mut Vec<PathBuf>, errors: &mut Vec<ContentError>) {
    let label = dir.display().to_string();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => return errors.push(file_error(&label, format!("cannot read directory: {e}"))),
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                return errors.push(file_error(&label, format!("cannot read directory: {e}")))
            }
        };
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue; // editor and VCS files (.git, .tasks.yaml.swp)
        }
        // `file_type` does not follow symlinks, so a symlinked directory cannot loop us.
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_dir {
            find_files(&path, files, errors);
        } else if path.is_file() && is_yaml(&path) {
            files.push(path);
        }
    }
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

/// Read every document of `text` into `set`, collecting problems into `errors`.
fn read_into(label: &str, text: &str, set: &mut ContentSet, errors: &mut Vec<ContentError>) {
    // Editors on Windows write a byte-order mark; YAML does not expect one.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // First pass: each document as a plain value, to learn its kind and name (for messages)
    // before reading it as its type.
    let mut values = Vec::new();
    let mut problems = Vec::new();
    let mut previous = None;
    // Every document but the first takes at least a `---`: the bound only guards the loop.
    for (i, doc) in Deserializer::from_str(text)
        .enumerate()
        .take(text.len() + 1)
    {
        match Value::deserialize(doc) {
            Ok(v) => values.push(Some(v)),
            Err(e) => {
                // After a syntax error the parser answers every further document with the
                // same error: the file ends there. Other errors (a duplicate key) end only
                // their own document.
                let this = Some((e.to_string(), e.location().map(|l| l.index())));
                if this == previous {
                    break;
                }
                previous = this;
                values.push(None);
                let line = e.location().map(|l| l.line());
                problems.push(ContentError {
                    origin: Some(Origin::document(label, i + 1, line)),
                    kind: None,
                    name: None,
                    message: yaml_message(&e),
                });
            }
        }
    }
    // Second pass: each document read as its type straight from the YAML, so type errors carry
    // the field's path and line.
    let starts = document_lines(text);
    let docs = Deserializer::from_str(text).enumerate().zip(values);
    for ((i, doc), value) in docs {
        let origin = Origin::document(label, i + 1, starts.get(i).copied());
        let Some(value) = value.filter(|v| !v.is_null()) else {
            continue; // problems (reported below), or empty (after a trailing `---`)
        };
        let name = value
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_string);
        let kind = match document_kind(&value) {
            Ok(kind) => kind,
            Err(message) => {
                problems.push(ContentError {
                    origin: Some(origin),
                    kind: None,
                    name,
                    message,
                });
                continue;
            }
        };
        let error = |origin: &Origin, message: String| ContentError {
            origin: Some(origin.clone()),
            kind: Some(kind),
            name: name.clone(),
            message,
        };
        let mut ignored = Vec::new();
        let object = read_object(kind, doc, &mut ignored);
        for path in ignored {
            problems.push(error(&origin, format!("unknown field {path:?}")));
        }
        match object {
            Ok(object) => {
                if let Err(e) = set.insert(object, Some(origin)) {
                    problems.push(e);
                }
            }
            Err(e) => {
                let at = Origin {
                    line: e.location().map(|l| l.line()).or(origin.line),
                    ..origin
                };
                problems.push(error(&at, yaml_message(&e)));
            }
        }
    }
    // In document order, as the operator reads the file (the first pass found some).
    problems.sort_by_key(|e| e.origin.as_ref().and_then(|o| o.document));
    errors.append(&mut problems);
}

/// The kind a document declares.
fn document_kind(value: &Value) -> Result<Kind, String> {
    let kinds = || {
        let names: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
        names.join(", ")
    };
    if !value.is_mapping() {
        return Err(format!(
            "a document must be a mapping with a \"kind\" key (one of {})",
            kinds()
        ));
    }
    match value.get("kind") {
        None => Err(format!("missing field \"kind\" (one of {})", kinds())),
        Some(Value::String(s)) => Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("kind: unknown kind {s:?} (one of {})", kinds())),
        Some(_) => Err(format!("kind: must be a string (one of {})", kinds())),
    }
}

/// Read one document as `kind`'s type, pushing the path of every key it ignored.
fn read_object(
    kind: Kind,
    doc: Deserializer<'_>,
    ignored: &mut Vec<String>,
) -> Result<ContentObject, serde_yaml_ng::Error> {
    Ok(match kind {
        Kind::BootEnv => ContentObject::BootEnv(strict::<BootEnv>(doc, ignored)?),
        Kind::Task => ContentObject::Task(strict::<Task>(doc, ignored)?),
        Kind::Stage => ContentObject::Stage(strict::<Stage>(doc, ignored)?),
        Kind::Workflow => ContentObject::Workflow(strict::<Workflow>(doc, ignored)?),
        Kind::Profile => ContentObject::Profile(strict::<Profile>(doc, ignored)?),
        Kind::Param => ContentObject::Param(strict::<ParamDef>(doc, ignored)?),
        Kind::Rule => ContentObject::Rule(strict::<Rule>(doc, ignored)?),
    })
}

fn strict<T: DeserializeOwned>(
    doc: Deserializer<'_>,
    ignored: &mut Vec<String>,
) -> Result<T, serde_yaml_ng::Error> {
    serde_ignored::deserialize(doc, |path| {
        let path = path.to_string();
        // `kind` selected the type; it is not one of the type's fields.
        if path != "kind" {
            ignored.push(path);
        }
    })
}

/// The error without its ` at line L column C` suffix: the line is in the error's origin.
fn yaml_message(e: &serde_yaml_ng::Error) -> String {
    let text = e.to_string();
    match e.location() {
        Some(l) => {
            let suffix = format!(" at line {} column {}", l.line(), l.column());
            text.strip_suffix(&suffix).unwrap_or(&text).to_string()
        }
        None => text,
    }
}

/// The line (from 1) each document starts on: its `---` marker, or the first content line of
/// an implicit first document. Empty when the file uses `...` end markers, which this scan does
/// not follow, so no line is claimed rather than a wrong one. (`---` at the start of a line
/// always marks a document in YAML, even inside a block scalar.)
fn document_lines(text: &str) -> Vec<usize> {
    let mut starts = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("...") {
            return Vec::new();
        }
        let marker = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        let trimmed = line.trim();
        let content = !trimmed.is_empty() && !trimmed.starts_with('#') && !line.starts_with('%');
        if marker || (starts.is_empty() && content) {
            starts.push(i + 1);
        }
    }
    starts
}
