//! Workflow content (see `docs/workflows.md`): reading operator YAML strictly, checking it,
//! the built-in content, and params resolved and rendered per machine.
//!
//! - [`load`]: YAML files to a [`ContentSet`]; unknown keys, wrong types and duplicates are
//!   errors naming the file, document, object and field.
//! - [`set`]: objects by kind and name; [`ContentSet::merge`] puts operator content over the
//!   built-ins and validates the whole.
//! - [`validate`]: names, references, tasks, boot environments, stages, param values.
//! - [`builtin`]: the embedded defaults (`server/content/*.yaml`).
//! - [`params`]: a machine's param values through its layers; tasks rendered strictly; secrets
//!   redacted and masked.
//! - [`bootenv`]: an operator's boot environment (kernel arguments, iPXE script, files)
//!   rendered for a machine, secrets only in its files.
//! - [`template`]: the strict minijinja environment they share.
//! - [`error`]: the one error shape for loading and validating.

pub mod bootenv;
pub mod builtin;
pub mod error;
pub mod load;
pub mod params;
pub mod set;
pub mod template;
pub mod validate;

#[cfg(test)]
mod bootenv_tests;
#[cfg(test)]
mod load_tests;
#[cfg(test)]
mod params_tests;
#[cfg(test)]
mod validate_tests;

pub use builtin::builtin;
pub use error::{ContentError, ContentErrors, Origin};
pub use load::{content_files, load_dir, load_files, load_str};
pub use params::{
    redact, render_task, MachineContext, ParamError, ParamErrors, RenderError, RenderedTask,
    Resolved, ResolvedParam, ValueSource, MASK,
};
pub use set::ContentSet;
pub use validate::ACTIONS;
