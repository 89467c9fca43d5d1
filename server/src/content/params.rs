//! Param values for one machine, and tasks rendered with them.
//!
//! A value comes from the first of: the machine's own params, its profiles in order, the
//! `global` profile, the param's default. Rendering is strict: a param a task needs (listed in
//! its `params`, or used by its template) that has no value fails the job naming the param,
//! never renders as an empty string. Values of `secret` params travel with the rendered task so
//! the agent can redact them from uploaded logs, and are masked wherever params are listed.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use anneal_shared::content::{ParamDef, Task, PROFILE_GLOBAL};
use minijinja::value::ObjectExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::set::ContentSet;
use super::template;

/// What secret values are replaced with.
pub const MASK: &str = "********";

/// Where a param's value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "from", content = "name", rename_all = "snake_case")]
pub enum ValueSource {
    /// The machine's own params.
    Machine,
    /// One of the machine's profiles.
    Profile(String),
    /// The `global` profile.
    Global,
    /// The param's definition.
    Default,
}

impl fmt::Display for ValueSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueSource::Machine => f.write_str("the machine's params"),
            ValueSource::Profile(p) => write!(f, "profile {p:?}"),
            ValueSource::Global => write!(f, "profile {PROFILE_GLOBAL:?}"),
            ValueSource::Default => f.write_str("the param's default"),
        }
    }
}

/// A param's value and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedParam {
    /// The value (or [`MASK`] in [`Resolved::masked`]).
    pub value: Value,
    /// Where it came from.
    pub source: ValueSource,
}

/// Why params could not be resolved or a task not rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    /// A value, a task or a template names a param no `param` object defines.
    #[error("param {name:?} is not defined (used by {by})")]
    NotDefined {
        /// The param.
        name: String,
        /// Who named it: a value source, `the task's params` or `the template`.
        by: String,
    },
    /// A required param the task needs has no value and no default.
    #[error("param {name:?} is required and has no value")]
    Required {
        /// The param.
        name: String,
    },
    /// A param the template uses has no value and no default.
    #[error("param {name:?} has no value and no default")]
    NoValue {
        /// The param.
        name: String,
    },
    /// The template uses a defined param the task does not list in its `params`.
    #[error("param {name:?} is used by the template but not listed in the task's params")]
    NotListed {
        /// The param.
        name: String,
    },
    /// A value does not have its param's type.
    #[error("param {name:?}: expected {expected}, got {got} from {from}")]
    WrongType {
        /// The param.
        name: String,
        /// The type its definition gives.
        expected: &'static str,
        /// What the value is (secret values are not shown).
        got: String,
        /// Where the value came from.
        from: ValueSource,
    },
    /// The machine has a profile no `profile` object defines.
    #[error("profile {name:?} is not defined")]
    UnknownProfile {
        /// The profile.
        name: String,
    },
    /// A template that is not secret (a boot script, kernel arguments) uses a secret param.
    #[error("param {name:?} is secret and cannot be used here (only in a boot environment's `templates`, served to the machine alone)")]
    Secret {
        /// The param.
        name: String,
    },
    /// A template failed for another reason (a machine field without a value, a filter error).
    #[error("{field}: {message}")]
    Template {
        /// `script` or `args.PATH`.
        field: String,
        /// What went wrong, with the template's line.
        message: String,
    },
}

/// Every problem resolving a machine's params.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", join(.0))]
pub struct ParamErrors(pub Vec<ParamError>);

/// Why a task could not be rendered: every problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task {task:?}: {}", join(.errors))]
pub struct RenderError {
    /// The task.
    pub task: String,
    /// What is wrong.
    pub errors: Vec<ParamError>,
}

fn join(errors: &[ParamError]) -> String {
    let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    texts.join("; ")
}

/// A machine's param values, resolved through its layers, with the definitions they were
/// checked against.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    values: BTreeMap<String, ResolvedParam>,
    defs: BTreeMap<String, ParamDef>,
}

impl Resolved {
    /// Resolve the values of a machine with `own` params and `profiles` (in order; `global`
    /// is always last, wherever it is listed) against `content`. Every value is checked
    /// against its param's type; every problem is reported.
    pub fn resolve(
        content: &ContentSet,
        own: &BTreeMap<String, Value>,
        profiles: &[String],
    ) -> Result<Resolved, ParamErrors> {
        let mut errors = Vec::new();
        let mut layers = vec![(ValueSource::Machine, own)];
        for name in profiles.iter().filter(|p| *p != PROFILE_GLOBAL) {
            match content.profiles.get(name) {
                Some(p) => layers.push((ValueSource::Profile(name.clone()), &p.params)),
                None => errors.push(ParamError::UnknownProfile { name: name.clone() }),
            }
        }
        // Built-in content always has `global`; a set without it simply has no such layer.
        if let Some(global) = content.profiles.get(PROFILE_GLOBAL) {
            layers.push((ValueSource::Global, &global.params));
        }
        let defaults: BTreeMap<String, Value> = (content.params.iter())
            .filter_map(|(name, def)| Some((name.clone(), def.default.clone()?)))
            .collect();
        layers.push((ValueSource::Default, &defaults));

        let mut values = BTreeMap::new();
        for (source, layer) in layers {
            for (name, value) in layer {
                if values.contains_key(name) {
                    continue; // a higher layer set it
                }
                let Some(def) = content.params.get(name) else {
                    let by = source.to_string();
                    errors.push(ParamError::NotDefined {
                        name: name.clone(),
                        by,
                    });
                    continue;
                };
                if !def.param_type.accepts(value) {
                    errors.push(ParamError::WrongType {
                        name: name.clone(),
                        expected: def.param_type.as_str(),
                        got: describe_value(value, def.secret),
                        from: source.clone(),
                    });
                    continue;
                }
                let value = value.clone();
                let source = source.clone();
                values.insert(name.clone(), ResolvedParam { value, source });
            }
        }
        if !errors.is_empty() {
            return Err(ParamErrors(errors));
        }
        Ok(Resolved {
            values,
            defs: content.params.clone(),
        })
    }

    /// The value of `name`, if it has one.
    pub fn get(&self, name: &str) -> Option<&ResolvedParam> {
        self.values.get(name)
    }

    /// Every value, secrets replaced with [`MASK`]: what list views and logs may show.
    pub fn masked(&self) -> BTreeMap<String, ResolvedParam> {
        (self.values.iter())
            .map(|(name, p)| {
                let mut p = p.clone();
                if self.is_secret(name) {
                    p.value = Value::String(MASK.into());
                }
                (name.clone(), p)
            })
            .collect()
    }

    /// Every value, secret ones only when `secrets`: what a template may see.
    pub fn values(&self, secrets: bool) -> BTreeMap<String, Value> {
        (self.values.iter())
            .filter(|(name, _)| secrets || !self.is_secret(name))
            .map(|(name, p)| (name.clone(), p.value.clone()))
            .collect()
    }

    fn is_secret(&self, name: &str) -> bool {
        self.defs.get(name).is_some_and(|d| d.secret)
    }
}

/// What a task's templates see of the machine. Fields without a value are left out, so a
/// template that uses one fails instead of rendering an empty string.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MachineContext {
    /// The machine's id.
    pub id: uuid::Uuid,
    /// Its hostname.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Its system serial number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Its system manufacturer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    /// Its product name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    /// Its MAC addresses.
    pub macs: Vec<String>,
}

/// A task ready to hand to the agent.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct RenderedTask {
    /// The task's name.
    pub name: String,
    /// The rendered script, for a script task.
    pub script: Option<String>,
    /// The action, for an action task.
    pub action: Option<String>,
    /// The action's args, every string rendered.
    pub args: BTreeMap<String, Value>,
    /// The values of the secret params the task may use: the agent redacts them (with
    /// [`redact`]) from the logs it uploads.
    pub secrets: Vec<String>,
}

impl fmt::Debug for RenderedTask {
    /// Redacted: a rendered task holds secrets, and debug output ends up in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = |s: &str| redact(s, &self.secrets);
        f.debug_struct("RenderedTask")
            .field("name", &self.name)
            .field("script", &self.script.as_deref().map(r))
            .field("action", &self.action)
            .field("args", &r(&Value::from_iter(self.args.clone()).to_string()))
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

/// Render `task` for a machine: its script, or every string in its args, with `params` (the
/// task's listed params that have values) and `machine`.
pub fn render_task(
    task: &Task,
    resolved: &Resolved,
    machine: &MachineContext,
) -> Result<RenderedTask, RenderError> {
    let mut errors = Vec::new();
    let mut params = BTreeMap::new();
    let mut secrets = Vec::new();
    for name in &task.params {
        let Some(def) = resolved.defs.get(name) else {
            let by = "the task's params".to_string();
            errors.push(ParamError::NotDefined {
                name: name.clone(),
                by,
            });
            continue;
        };
        match resolved.values.get(name) {
            Some(p) => {
                if def.secret {
                    secret_strings(&p.value, &mut secrets);
                }
                params.insert(name.clone(), p.value.clone());
            }
            None if def.required => errors.push(ParamError::Required { name: name.clone() }),
            // Not an error yet: the template may not use it, or test `is defined`.
            None => {}
        }
    }
    let fail = |errors| RenderError {
        task: task.name.clone(),
        errors,
    };
    if !errors.is_empty() {
        return Err(fail(errors));
    }

    let renderer = Renderer::new(Scope::task(task), resolved, params, machine);
    let script = match &task.script {
        Some(source) => match renderer.render("script", source) {
            Ok(s) => Some(s),
            Err(e) => return Err(fail(vec![e])),
        },
        None => None,
    };
    let args = template::map_args(&task.args, |path, s| renderer.render(path, s)).map_err(fail)?;
    secrets.sort();
    secrets.dedup();
    Ok(RenderedTask {
        name: task.name.clone(),
        script,
        action: task.action.clone(),
        args,
        secrets,
    })
}

/// `text` with every non-empty secret value replaced by [`MASK`], longest first (so a secret
/// that contains another is replaced whole).
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut sorted: Vec<&String> = secrets.iter().filter(|s| !s.is_empty()).collect();
    sorted.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = text.to_string();
    for s in sorted {
        out = out.replace(s.as_str(), MASK);
    }
    out
}

/// The text forms a secret value can appear in: strings and numbers, also inside lists and
/// objects (booleans and nulls would redact every `true` in a log).
fn secret_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Number(n) => out.push(n.to_string()),
        Value::Array(items) => items.iter().for_each(|i| secret_strings(i, out)),
        Value::Object(map) => map.values().for_each(|i| secret_strings(i, out)),
        Value::Bool(_) | Value::Null => {}
    }
}

/// A value for an error message: its type, and the value itself unless it is secret.
pub fn describe_value(v: &Value, secret: bool) -> String {
    let kind = match v {
        Value::Null => return "null".into(),
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    };
    if secret {
        return format!("{kind} (secret, not shown)");
    }
    let text = v.to_string();
    match text.char_indices().nth(60) {
        Some((cut, _)) => format!("{kind} {}…", &text[..cut]),
        None => format!("{kind} {text}"),
    }
}

/// What a [`Renderer`]'s templates see besides `params` and `machine`, and which params they
/// may use.
pub struct Scope<'a> {
    /// The template environment ([`template::environment`], or one that checks what it prints).
    pub env: minijinja::Environment<'static>,
    /// The params the templates may use: a task's `params`; `None`: every defined param.
    pub listed: Option<&'a [String]>,
    /// Secret params were left out of `params`: using one is an error that says so.
    pub secrets_left_out: bool,
    /// Further maps read by key (`files["preseed.cfg"]`), tracked like `params`: a missing key
    /// is an error naming it.
    pub maps: Vec<(&'static str, BTreeMap<String, Value>)>,
    /// Plain values (`mac`, `base_url`).
    pub vars: Vec<(&'static str, Value)>,
}

impl Scope<'_> {
    /// A task's scope: its listed params, nothing else.
    fn task(task: &Task) -> Scope<'_> {
        Scope {
            env: template::environment(),
            listed: Some(&task.params),
            secrets_left_out: false,
            maps: Vec::new(),
            vars: Vec::new(),
        }
    }
}

/// Renders templates strictly over a machine's params and facts (and a [`Scope`]'s further
/// values), and names the param or machine field a failed render missed.
pub struct Renderer<'a> {
    env: minijinja::Environment<'static>,
    listed: Option<&'a [String]>,
    secrets_left_out: bool,
    resolved: &'a Resolved,
    ctx: minijinja::Value,
    misses: Arc<Mutex<Vec<Miss>>>,
}

impl<'a> Renderer<'a> {
    /// A renderer over `params` (the values the templates may see) and `machine`.
    pub fn new(
        scope: Scope<'a>,
        resolved: &'a Resolved,
        params: BTreeMap<String, Value>,
        machine: &MachineContext,
    ) -> Renderer<'a> {
        let misses = Arc::new(Mutex::new(Vec::new()));
        let machine = serde_json::to_value(machine).unwrap_or(Value::Null);
        let machine = machine.as_object().cloned().unwrap_or_default();
        let mut top = vec![
            ("params", Tracked::value("params", params, &misses)),
            (
                "machine",
                Tracked::value("machine", machine.into_iter().collect(), &misses),
            ),
        ];
        for (name, map) in scope.maps {
            top.push((name, Tracked::value(name, map, &misses)));
        }
        top.extend(scope.vars.iter().map(|(name, v)| (*name, to_jinja(v))));
        Renderer {
            env: scope.env,
            listed: scope.listed,
            secrets_left_out: scope.secrets_left_out,
            resolved,
            ctx: minijinja::Value::from_pairs(top),
            misses,
        }
    }

    /// Render `source`; `field` names it in errors (`script`, `templates.preseed.cfg`).
    pub fn render(&self, field: &str, source: &str) -> Result<String, ParamError> {
        let before = self.misses_len();
        let e = match self.env.render_named_str(field, source, &self.ctx) {
            Ok(s) => return Ok(s),
            Err(e) => e,
        };
        // Strict mode stops at the first undefined value it prints or uses, so the last lookup
        // that missed (during this render) is the one that failed — if the failing expression
        // names it; a miss tested with `is defined` earlier is not.
        let failed = e.range().and_then(|r| source.get(r)).unwrap_or_default();
        let last = (self.last_miss(before)).filter(|m| failed.contains(m.key.as_str()));
        match last {
            Some(Miss { map: "params", key })
                if e.kind() == minijinja::ErrorKind::UndefinedError =>
            {
                Err(self.param_error(key))
            }
            Some(Miss { map, key }) if e.kind() == minijinja::ErrorKind::UndefinedError => {
                Err(ParamError::Template {
                    field: field.into(),
                    message: format!("{map}.{key} has no value ({})", template::describe(e)),
                })
            }
            _ => Err(ParamError::Template {
                field: field.into(),
                message: template::describe(e),
            }),
        }
    }

    fn param_error(&self, name: String) -> ParamError {
        let def = self.resolved.defs.get(&name);
        if self.secrets_left_out && def.is_some_and(|d| d.secret) {
            ParamError::Secret { name }
        } else if self.listed.is_none_or(|l| l.contains(&name)) && def.is_some() {
            ParamError::NoValue { name }
        } else if def.is_some() {
            ParamError::NotListed { name }
        } else {
            let by = "the template".to_string();
            ParamError::NotDefined { name, by }
        }
    }

    fn misses_len(&self) -> usize {
        self.misses.lock().map_or(0, |m| m.len())
    }

    fn last_miss(&self, since: usize) -> Option<Miss> {
        let misses = self.misses.lock().ok()?;
        misses.get(since..)?.last().cloned()
    }
}

/// A lookup in `params` or `machine` that found nothing.
#[derive(Debug, Clone)]
struct Miss {
    map: &'static str,
    key: String,
}

/// A map for templates that records the keys it was asked for and did not have, so a failed
/// render can name the param instead of saying "undefined value".
#[derive(Debug)]
struct Tracked {
    name: &'static str,
    values: BTreeMap<String, minijinja::Value>,
    misses: Arc<Mutex<Vec<Miss>>>,
}

impl Tracked {
    fn value(
        name: &'static str,
        values: BTreeMap<String, Value>,
        misses: &Arc<Mutex<Vec<Miss>>>,
    ) -> minijinja::Value {
        let values = (values.into_iter())
            .map(|(k, v)| (k, to_jinja(&v)))
            .collect();
        minijinja::Value::from_object(Tracked {
            name,
            values,
            misses: Arc::clone(misses),
        })
    }
}

impl minijinja::value::Object for Tracked {
    fn get_value(self: &Arc<Self>, key: &minijinja::Value) -> Option<minijinja::Value> {
        let key = key.as_str()?;
        let found = self.values.get(key).cloned();
        if found.is_none() {
            if let Ok(mut misses) = self.misses.lock() {
                misses.push(Miss {
                    map: self.name,
                    key: key.to_string(),
                });
            }
        }
        found
    }

    fn enumerate(self: &Arc<Self>) -> minijinja::value::Enumerator {
        self.mapped_enumerator(|this| {
            Box::new(
                this.values
                    .keys()
                    .map(|k| minijinja::Value::from(k.as_str())),
            )
        })
    }
}

/// A JSON value as a template value (minijinja is built without its serde support here).
fn to_jinja(v: &Value) -> minijinja::Value {
    use minijinja::Value as J;
    match v {
        Value::Null => J::from(()),
        Value::Bool(b) => J::from(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => J::from(i),
            (None, Some(u)) => J::from(u),
            _ => J::from(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => J::from(s.as_str()),
        Value::Array(items) => items.iter().map(to_jinja).collect(),
        Value::Object(map) => J::from_pairs(map.iter().map(|(k, v)| (k.as_str(), to_jinja(v)))),
    }
}
