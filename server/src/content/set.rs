//! A set of content objects by kind and name, each with the place it was read from.

use std::collections::BTreeMap;

use anneal_shared::content::{
    BootEnv, ContentObject, Kind, ParamDef, Profile, Rule, Stage, Task, Workflow,
};

use super::error::{ContentError, ContentErrors, Origin};
use super::validate;

/// Content objects by kind and name. Read the maps freely; add through [`ContentSet::insert`]
/// so duplicates are refused and origins kept for messages.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContentSet {
    /// Boot environments by name.
    pub boot_envs: BTreeMap<String, BootEnv>,
    /// Tasks by name.
    pub tasks: BTreeMap<String, Task>,
    /// Stages by name.
    pub stages: BTreeMap<String, Stage>,
    /// Workflows by name.
    pub workflows: BTreeMap<String, Workflow>,
    /// Profiles by name.
    pub profiles: BTreeMap<String, Profile>,
    /// Param definitions by name.
    pub params: BTreeMap<String, ParamDef>,
    /// Rules for new machines by name.
    pub rules: BTreeMap<String, Rule>,
    origins: BTreeMap<(Kind, String), Origin>,
}

impl ContentSet {
    /// An empty set.
    pub fn new() -> ContentSet {
        ContentSet::default()
    }

    /// Add `object`, read from `origin` (`None` for content that has no file, e.g. from the
    /// store). A second object of the same kind and name is refused, naming both places.
    pub fn insert(
        &mut self,
        object: ContentObject,
        origin: Option<Origin>,
    ) -> Result<(), ContentError> {
        let key = (object.kind(), object.name().to_string());
        if self.contains(key.0, &key.1) {
            let first = match self.origins.get(&key) {
                Some(o) => format!(" (first defined in {o})"),
                None => String::new(),
            };
            return Err(ContentError::object(
                key.0,
                &key.1,
                origin.as_ref(),
                format!("{} {:?} is defined twice{first}", key.0, key.1),
            ));
        }
        self.put(object, origin);
        Ok(())
    }

    /// Add or replace `object`.
    fn put(&mut self, object: ContentObject, origin: Option<Origin>) {
        let key = (object.kind(), object.name().to_string());
        match origin {
            Some(o) => self.origins.insert(key.clone(), o),
            None => self.origins.remove(&key),
        };
        // Replacing is the point here (merge); `insert` checked for duplicates before.
        let _replaced = match object {
            ContentObject::BootEnv(o) => self.boot_envs.insert(key.1, o).is_some(),
            ContentObject::Task(o) => self.tasks.insert(key.1, o).is_some(),
            ContentObject::Stage(o) => self.stages.insert(key.1, o).is_some(),
            ContentObject::Workflow(o) => self.workflows.insert(key.1, o).is_some(),
            ContentObject::Profile(o) => self.profiles.insert(key.1, o).is_some(),
            ContentObject::Param(o) => self.params.insert(key.1, o).is_some(),
            ContentObject::Rule(o) => self.rules.insert(key.1, o).is_some(),
        };
    }

    /// Whether an object `kind` `name` is in the set.
    pub fn contains(&self, kind: Kind, name: &str) -> bool {
        match kind {
            Kind::BootEnv => self.boot_envs.contains_key(name),
            Kind::Task => self.tasks.contains_key(name),
            Kind::Stage => self.stages.contains_key(name),
            Kind::Workflow => self.workflows.contains_key(name),
            Kind::Profile => self.profiles.contains_key(name),
            Kind::Param => self.params.contains_key(name),
            Kind::Rule => self.rules.contains_key(name),
        }
    }

    /// Where the object `kind` `name` was read from, if from a file.
    pub fn origin(&self, kind: Kind, name: &str) -> Option<&Origin> {
        self.origins.get(&(kind, name.to_string()))
    }

    /// Every object, referenced kinds first ([`Kind::ALL`]), by name within a kind.
    pub fn objects(&self) -> Vec<ContentObject> {
        let mut out = Vec::with_capacity(self.len());
        for kind in Kind::ALL {
            match kind {
                Kind::Param => out.extend(self.params.values().cloned().map(ContentObject::Param)),
                Kind::Profile => {
                    out.extend(self.profiles.values().cloned().map(ContentObject::Profile))
                }
                Kind::BootEnv => {
                    out.extend(self.boot_envs.values().cloned().map(ContentObject::BootEnv))
                }
                Kind::Task => out.extend(self.tasks.values().cloned().map(ContentObject::Task)),
                Kind::Stage => out.extend(self.stages.values().cloned().map(ContentObject::Stage)),
                Kind::Workflow => out.extend(
                    self.workflows
                        .values()
                        .cloned()
                        .map(ContentObject::Workflow),
                ),
                Kind::Rule => out.extend(self.rules.values().cloned().map(ContentObject::Rule)),
            }
        }
        out
    }

    /// How many objects the set holds.
    pub fn len(&self) -> usize {
        self.boot_envs.len()
            + self.tasks.len()
            + self.stages.len()
            + self.workflows.len()
            + self.profiles.len()
            + self.params.len()
            + self.rules.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The content a server runs with: `operator` over `builtin`, validated as a whole (so
    /// operator content may reference built-in objects). An operator object replaces the
    /// built-in one of the same kind and name (a hook stage filled in, the `global` profile
    /// given values), except the reserved boot environments, which only the server defines.
    /// Every problem is reported, not only the first.
    pub fn merge(builtin: &ContentSet, operator: &ContentSet) -> Result<ContentSet, ContentErrors> {
        let mut errors = validate::reserved(operator);
        let mut merged = builtin.clone();
        for object in operator.objects() {
            if object.kind() == Kind::BootEnv && validate::is_reserved_boot_env(object.name()) {
                continue; // refused above; the built-in definition stays
            }
            let origin = operator.origin(object.kind(), object.name()).cloned();
            merged.put(object, origin);
        }
        if let Err(e) = merged.validate() {
            errors.extend(e.0);
        }
        ContentErrors::check(errors, merged)
    }

    /// Check names, references, tasks, boot environments, stages and param values; every
    /// problem names the object and the field. See [`validate`].
    pub fn validate(&self) -> Result<(), ContentErrors> {
        ContentErrors::check(validate::validate(self), ())
    }
}
