//! An operator's boot environment rendered for one machine: its kernel arguments, its own iPXE
//! script (when it has one) and its per-machine files, strictly, with the machine's params and
//! facts. Pure: the boot service (`crate::boot::custom`) gathers the inputs and serves the
//! results.
//!
//! A machine's script is not secret (anyone who knows its MAC can fetch it), so the script and
//! the kernel arguments never see secret params — using one is an error naming it — and every
//! value they print must be plain iPXE text ([`template::ipxe_environment`]). The `templates`
//! files (an installer's preseed) see secrets too: the machine fetches them through a URL only
//! its own script carries.

use std::collections::BTreeMap;

use anneal_shared::content::BootEnv;
use serde_json::Value;

use super::params::{MachineContext, ParamError, ParamErrors, Renderer, Resolved, Scope};
use super::template;

/// What an environment's templates are rendered with, besides the environment itself.
#[derive(Debug, Clone)]
pub struct BootInputs<'a> {
    /// The machine's param values.
    pub resolved: &'a Resolved,
    /// The machine's facts (`machine.hostname`, …).
    pub machine: &'a MachineContext,
    /// The URL of each of the environment's `templates` files for this boot (`files[NAME]`).
    pub files: BTreeMap<String, String>,
    /// The URL of the kernel and of each initrd, by the path the environment gives
    /// (`artifacts[PATH]`).
    pub artifacts: BTreeMap<String, String>,
    /// The booting MAC, `aa:bb:cc:dd:ee:ff` (`mac`; `bootif` is its `01-aa-bb-…` form).
    pub mac: String,
    /// The boot listener as the machine reached it, `http://host:port` (`base_url`).
    pub base_url: String,
}

/// Why a boot environment could not be rendered for a machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("boot environment {env:?}: {errors}")]
pub struct BootEnvError {
    /// The environment.
    pub env: String,
    /// What is wrong, naming the param, field or file.
    pub errors: ParamErrors,
}

/// Where a rendered text goes: into the iPXE script (not secret) or a per-machine file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    Script,
    File,
}

impl BootInputs<'_> {
    fn renderer(&self, output: Output, more: Vec<(&'static str, Value)>) -> Renderer<'_> {
        let secrets = output == Output::File;
        let env = match output {
            Output::Script => template::ipxe_environment(),
            Output::File => template::environment(),
        };
        let bootif = format!("01-{}", self.mac.replace(':', "-"));
        let scope = Scope {
            env,
            listed: None,
            secrets_left_out: !secrets,
            maps: vec![
                ("files", strings(&self.files)),
                ("artifacts", strings(&self.artifacts)),
            ],
            vars: [
                ("mac", Value::from(self.mac.as_str())),
                ("bootif", Value::from(bootif)),
                ("base_url", Value::from(self.base_url.as_str())),
            ]
            .into_iter()
            .chain(more)
            .collect(),
        };
        Renderer::new(
            scope,
            self.resolved,
            self.resolved.values(secrets),
            self.machine,
        )
    }
}

fn strings(m: &BTreeMap<String, String>) -> BTreeMap<String, Value> {
    (m.iter())
        .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
        .collect()
}

fn fail(env: &BootEnv, errors: Vec<ParamError>) -> BootEnvError {
    BootEnvError {
        env: env.name.clone(),
        errors: ParamErrors(errors),
    }
}

/// The environment's kernel arguments for this machine, on one line (YAML may fold them over
/// several).
pub fn kernel_args(env: &BootEnv, inputs: &BootInputs) -> Result<String, BootEnvError> {
    let text = (inputs.renderer(Output::Script, Vec::new()))
        .render("kernel_args", &env.kernel_args)
        .map_err(|e| fail(env, vec![e]))?;
    Ok(text.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// The environment's own iPXE script for this machine, if it has one. It sees the rendered
/// `kernel_args` and, in an environment with the agent, `anneal_args` (what the agent needs on
/// its kernel command line to enroll).
pub fn ipxe(
    env: &BootEnv,
    inputs: &BootInputs,
    kernel_args: &str,
    anneal_args: Option<&str>,
) -> Result<Option<String>, BootEnvError> {
    let Some(source) = &env.ipxe else {
        return Ok(None);
    };
    let mut more = vec![("kernel_args", Value::from(kernel_args))];
    if let Some(a) = anneal_args {
        more.push(("anneal_args", Value::from(a)));
    }
    (inputs.renderer(Output::Script, more))
        .render("ipxe", source)
        .map(Some)
        .map_err(|e| fail(env, vec![e]))
}

/// The environment's file `name` for this machine (secrets included).
pub fn file(env: &BootEnv, name: &str, inputs: &BootInputs) -> Result<String, BootEnvError> {
    let Some(source) = env.templates.get(name) else {
        let e = ParamError::Template {
            field: format!("templates.{name}"),
            message: "no such file".into(),
        };
        return Err(fail(env, vec![e]));
    };
    (inputs.renderer(Output::File, Vec::new()))
        .render(&format!("templates.{name}"), source)
        .map_err(|e| fail(env, vec![e]))
}

/// Render every file once, so a file that cannot be rendered stops the boot before the
/// machine starts something that would fetch it; every problem is reported.
pub fn check_files(env: &BootEnv, inputs: &BootInputs) -> Result<(), BootEnvError> {
    let renderer = inputs.renderer(Output::File, Vec::new());
    let errors: Vec<ParamError> = (env.templates.iter())
        .filter_map(|(name, source)| renderer.render(&format!("templates.{name}"), source).err())
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(fail(env, errors))
    }
}
