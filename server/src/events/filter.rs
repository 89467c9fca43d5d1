//! Which events a follower wants: by machine (id or id prefix), kind and workflow.

use anneal_shared::events::{Event, EventKind};

/// A follower's filter; empty parts match everything. A reset always passes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// Lower-case prefix of the machine id (a whole id is a prefix too).
    pub machine: Option<String>,
    /// Only these kinds.
    pub kinds: Vec<EventKind>,
    /// Only events of runs of this workflow.
    pub workflow: Option<String>,
}

/// Why a filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// A kind no server emits.
    #[error("unknown event kind `{0}`; known kinds: {1}")]
    UnknownKind(String, String),
    /// Not a machine id or a prefix of one.
    #[error("`{0}` is not a machine id or a prefix of one (hex digits and dashes)")]
    BadMachine(String),
}

impl Filter {
    /// Build from the query's parts: `kinds` is comma-separated.
    pub fn parse(
        machine: Option<&str>,
        kinds: Option<&str>,
        workflow: Option<&str>,
    ) -> Result<Filter, FilterError> {
        let machine = match machine.map(str::trim).filter(|m| !m.is_empty()) {
            Some(m) if m.len() <= 36 && m.chars().all(|c| c.is_ascii_hexdigit() || c == '-') => {
                Some(m.to_ascii_lowercase())
            }
            Some(m) => return Err(FilterError::BadMachine(m.chars().take(64).collect())),
            None => None,
        };
        let mut parsed = Vec::new();
        for k in kinds.unwrap_or("").split(',').map(str::trim) {
            if k.is_empty() {
                continue;
            }
            let kind = EventKind::parse(k).ok_or_else(|| {
                let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                FilterError::UnknownKind(k.chars().take(64).collect(), known.join(", "))
            })?;
            parsed.push(kind);
        }
        Ok(Filter {
            machine,
            kinds: parsed,
            workflow: workflow
                .map(str::trim)
                .filter(|w| !w.is_empty())
                .map(str::to_string),
        })
    }

    /// Whether `e` passes.
    pub fn matches(&self, e: &Event) -> bool {
        if e.kind == EventKind::Reset {
            return true;
        }
        if !self.kinds.is_empty() && !self.kinds.contains(&e.kind) {
            return false;
        }
        if let Some(prefix) = &self.machine {
            match e.machine_id {
                Some(id) if id.to_string().starts_with(prefix.as_str()) => {}
                _ => return false,
            }
        }
        if let Some(w) = &self.workflow {
            if e.workflow.as_deref() != Some(w.as_str()) {
                return false;
            }
        }
        true
    }
}
