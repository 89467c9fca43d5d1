//! The rules a content set must follow before a server runs with it. Every problem is
//! collected, each naming the object (kind and name, and its file when it has one) and the
//! field, so one `anneal apply` shows everything to fix.

use super::error::ContentError;
use super::params::describe_value;
use super::set::ContentSet;
use super::template;
use anneal_shared::content::{Kind, BOOTENV_DISCOVERY, BOOTENV_INSTALLED, BOOTENV_LOCAL};

/// The built-in agent actions a task may name in `action:`. The one list: the agent's
/// executor implements exactly these.
pub const ACTIONS: &[&str] = &["inventory", "noop"];

/// The longest name an object may have.
pub const MAX_NAME_LEN: usize = 64;

/// Whether `name` is one of the boot environments only the server defines.
pub fn is_reserved_boot_env(name: &str) -> bool {
    [BOOTENV_DISCOVERY, BOOTENV_LOCAL, BOOTENV_INSTALLED].contains(&name)
}

/// Operator content may not define the reserved boot environments: the server renders
/// `discovery`, `local` and `installed` itself (`server/src/boot/render.rs`).
pub fn reserved(operator: &ContentSet) -> Vec<ContentError> {
    operator
        .boot_envs
        .keys()
        .filter(|name| is_reserved_boot_env(name))
        .map(|name| {
            ContentError::object(
                Kind::BootEnv,
                name,
                operator.origin(Kind::BootEnv, name),
                format!("name: {name:?} is a built-in boot environment and cannot be redefined"),
            )
        })
        .collect()
}

/// Every problem in `set`, by kind ([`Kind::ALL`] order) and name.
pub fn validate(set: &ContentSet) -> Vec<ContentError> {
    let mut c = Checker {
        set,
        errors: Vec::new(),
    };
    c.names();
    c.params();
    c.profiles();
    c.boot_envs();
    c.tasks();
    c.stages();
    c.workflows();
    c.rules();
    c.errors
}

struct Checker<'a> {
    set: &'a ContentSet,
    errors: Vec<ContentError>,
}

impl Checker<'_> {
    fn report(&mut self, kind: Kind, name: &str, message: String) {
        let origin = self.set.origin(kind, name);
        self.errors
            .push(ContentError::object(kind, name, origin, message));
    }

    fn names(&mut self) {
        for object in self.set.objects() {
            if let Err(why) = check_name(object.name()) {
                self.report(object.kind(), object.name(), format!("name: {why}"));
            }
        }
    }

    fn params(&mut self) {
        for (name, p) in &self.set.params {
            if let Some(d) = &p.default {
                if !p.param_type.accepts(d) {
                    let msg = format!(
                        "default: expected {}, got {}",
                        p.param_type.as_str(),
                        describe_value(d, p.secret)
                    );
                    self.report(Kind::Param, name, msg);
                }
            }
        }
    }

    fn profiles(&mut self) {
        for (name, profile) in &self.set.profiles {
            for (param, value) in &profile.params {
                let msg = match self.set.params.get(param) {
                    None => format!("params.{param}: param {param:?} is not defined"),
                    Some(def) if !def.param_type.accepts(value) => format!(
                        "params.{param}: expected {}, got {}",
                        def.param_type.as_str(),
                        describe_value(value, def.secret)
                    ),
                    Some(_) => continue,
                };
                self.report(Kind::Profile, name, msg);
            }
        }
    }

    fn boot_envs(&mut self) {
        for (name, env) in &self.set.boot_envs {
            // The reserved environments are definitions only: their scripts are the server's.
            if !is_reserved_boot_env(name) && env.ipxe.is_none() && env.kernel.is_none() {
                self.report(
                    Kind::BootEnv,
                    name,
                    "kernel: a boot environment needs a kernel or an ipxe script".into(),
                );
            }
            if env.installed && !env.agent {
                self.report(
                    Kind::BootEnv,
                    name,
                    "installed: an installed environment runs the agent; set agent: true".into(),
                );
            }
            let files = env.kernel.iter().map(|k| ("kernel".to_string(), k));
            let initrds = env.initrds.iter().map(|i| ("initrds".to_string(), i));
            for (field, file) in files.chain(initrds) {
                if let Err(why) = check_artifact(file) {
                    self.report(Kind::BootEnv, name, format!("{field}: {file:?} {why}"));
                }
            }
            let templates = env
                .ipxe
                .iter()
                .map(|s| ("ipxe".to_string(), s))
                .chain([("kernel_args".to_string(), &env.kernel_args)])
                .chain(
                    env.templates
                        .iter()
                        .map(|(f, s)| (format!("templates.{f}"), s)),
                );
            for (field, source) in templates {
                if let Err(why) = template::check_syntax(source) {
                    self.report(Kind::BootEnv, name, format!("{field}: {why}"));
                }
            }
            for file in env.templates.keys().filter(|f| !is_plain_file_name(f)) {
                let why = "may have only letters, digits and . _ + - (it becomes part of a URL)";
                self.report(Kind::BootEnv, name, format!("templates: {file:?} {why}"));
            }
        }
    }

    fn tasks(&mut self) {
        for (name, task) in &self.set.tasks {
            let mut problems = Vec::new();
            match (&task.script, &task.action) {
                (Some(_), Some(_)) | (None, None) => {
                    problems.push("script: exactly one of script and action must be set".into())
                }
                (None, Some(action)) if !ACTIONS.contains(&action.as_str()) => {
                    problems.push(format!(
                        "action: unknown action {action:?} (known: {})",
                        ACTIONS.join(", ")
                    ))
                }
                _ => {}
            }
            if !task.args.is_empty() && task.action.is_none() {
                problems.push("args: only an action takes args".into());
            }
            if task.timeout_secs == 0 {
                problems.push("timeout_secs: must be greater than 0".into());
            }
            if let Some(script) = &task.script {
                if let Err(why) = template::check_syntax(script) {
                    problems.push(format!("script: {why}"));
                }
            }
            let checked = template::map_args(&task.args, |path, s| {
                template::check_syntax(s)
                    .map(|_| String::new())
                    .map_err(|why| format!("{path}: {why}"))
            });
            if let Err(e) = checked {
                problems.extend(e);
            }
            for param in &task.params {
                if !self.set.params.contains_key(param) {
                    problems.push(format!("params: param {param:?} is not defined"));
                }
            }
            for p in problems {
                self.report(Kind::Task, name, p);
            }
        }
    }

    fn stages(&mut self) {
        for (name, stage) in &self.set.stages {
            let mut problems = Vec::new();
            match self.set.boot_envs.get(&stage.boot_env) {
                None => problems.push(format!(
                    "boot_env: boot_env {:?} is not defined",
                    stage.boot_env
                )),
                Some(env) if !env.agent && !stage.tasks.is_empty() => problems.push(format!(
                    "tasks: boot_env {:?} runs no agent (agent: false), so the stage cannot have tasks",
                    stage.boot_env
                )),
                Some(_) => {}
            }
            for task in &stage.tasks {
                if !self.set.tasks.contains_key(task) {
                    problems.push(format!("tasks: task {task:?} is not defined"));
                }
            }
            if stage.boot_timeout_secs == 0 {
                problems.push("boot_timeout_secs: must be greater than 0".into());
            }
            if stage.deadline_secs == 0 {
                problems.push("deadline_secs: must be greater than 0".into());
            }
            for p in problems {
                self.report(Kind::Stage, name, p);
            }
        }
    }

    fn workflows(&mut self) {
        for (name, workflow) in &self.set.workflows {
            if workflow.stages.is_empty() {
                self.report(
                    Kind::Workflow,
                    name,
                    "stages: a workflow needs at least one stage".into(),
                );
            }
            for stage in &workflow.stages {
                if !self.set.stages.contains_key(stage) {
                    let msg = format!("stages: stage {stage:?} is not defined");
                    self.report(Kind::Workflow, name, msg);
                }
            }
        }
    }

    fn rules(&mut self) {
        for (name, rule) in &self.set.rules {
            if let Err(e) = crate::fleet::selector::Selector::parse(&rule.selector) {
                self.report(Kind::Rule, name, format!("selector: {e}"));
            }
            if !self.set.workflows.contains_key(&rule.workflow) {
                let msg = format!("workflow: workflow {:?} is not defined", rule.workflow);
                self.report(Kind::Rule, name, msg);
            }
        }
    }
}

/// Names go into URLs, file names and shell scripts: a small, safe alphabet.
fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
    if name.is_empty() {
        Err("must not be empty".into())
    } else if name.len() > MAX_NAME_LEN {
        Err(format!("{name:?} is longer than {MAX_NAME_LEN} characters"))
    } else if !first_ok || !rest_ok {
        Err(format!("{name:?} must match [a-z0-9][a-z0-9._-]*"))
    } else {
        Ok(())
    }
}

/// Artifacts are files in the environment's own directory: no way out of it. Their names end
/// up in URLs in an iPXE script, so they are plain.
fn check_artifact(file: &str) -> Result<(), &'static str> {
    let escapes = file.starts_with('/') || file.split('/').any(|part| part == "..");
    if file.is_empty() || escapes {
        Err("must be a relative path inside the environment's artifact directory")
    } else if !file.split('/').all(is_plain_file_name) {
        Err("may have only letters, digits and . _ + - between its slashes (it becomes part of a URL in an iPXE script)")
    } else {
        Ok(())
    }
}

/// A file name that is safe in a URL path and an iPXE script, and no dot-file.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && (name.chars()).all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c))
}
