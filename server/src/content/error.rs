//! One error type for loading and validating content, so the operator sees every problem in
//! the same shape: where (file, document, line), which object (kind and name), what (the field
//! and what is wrong with it).

use std::fmt;

use anneal_shared::content::Kind;

/// Where an object was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file's label (its path, or `built-in/NAME.yaml`).
    pub file: String,
    /// The document within the file, counting from 1; `None` for a problem with the whole
    /// file (unreadable, not UTF-8).
    pub document: Option<usize>,
    /// The line, counting from 1, where known.
    pub line: Option<usize>,
}

impl Origin {
    /// The document `document` (from 1) of `file`, starting at `line`.
    pub fn document(file: &str, document: usize, line: Option<usize>) -> Origin {
        Origin {
            file: file.to_string(),
            document: Some(document),
            line,
        }
    }
}

impl fmt::Display for Origin {
    /// `content/tasks.yaml, document 2, line 14`: used inside messages, where the colon form
    /// of [`ContentError`] would read as a new sentence.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(d) = self.document {
            write!(f, ", document {d}")?;
        }
        if let Some(l) = self.line {
            write!(f, ", line {l}")?;
        }
        Ok(())
    }
}

/// One problem with content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ContentError {
    /// Where the object came from, when it came from a file.
    pub origin: Option<Origin>,
    /// The object's kind, when known.
    pub kind: Option<Kind>,
    /// The object's name, when known.
    pub name: Option<String>,
    /// What is wrong, starting with the field it concerns.
    pub message: String,
}

impl ContentError {
    /// A problem with the object `kind` `name`, wherever it came from.
    pub fn object(kind: Kind, name: &str, origin: Option<&Origin>, message: String) -> Self {
        ContentError {
            origin: origin.cloned(),
            kind: Some(kind),
            name: Some(name.to_string()),
            message,
        }
    }
}

impl fmt::Display for ContentError {
    /// `content/tasks.yaml: document 2 (line 14, task "wipe-disks"): unknown field "timout_secs"`,
    /// or `task "wipe-disks": timeout_secs: must be greater than 0` for content without a file.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let object = match (self.kind, &self.name) {
            (Some(k), Some(n)) => Some(format!("{k} {n:?}")),
            (Some(k), None) => Some(k.to_string()),
            _ => None,
        };
        match &self.origin {
            Some(o) => {
                f.write_str(&o.file)?;
                if let Some(d) = o.document {
                    write!(f, ": document {d}")?;
                    let line = o.line.map(|l| format!("line {l}"));
                    let details: Vec<String> = line.into_iter().chain(object).collect();
                    if !details.is_empty() {
                        write!(f, " ({})", details.join(", "))?;
                    }
                }
            }
            None => {
                if let Some(object) = object {
                    f.write_str(&object)?;
                }
            }
        }
        if self.origin.is_some() || self.kind.is_some() {
            f.write_str(": ")?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found, in the order found (files sorted, documents in order).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ContentErrors(pub Vec<ContentError>);

impl fmt::Display for ContentErrors {
    /// One problem per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ContentErrors {
    /// `Ok(value)` when no problem was found.
    pub fn check<T>(errors: Vec<ContentError>, value: T) -> Result<T, ContentErrors> {
        if errors.is_empty() {
            Ok(value)
        } else {
            Err(ContentErrors(errors))
        }
    }
}
