//! The built-in content, embedded in the binary (`server/content/*.yaml`) and read through the
//! same strict loader as operator content: the `discovery` and `local` boot environments, the
//! `inventory` task, the `discover` and `local-boot` stages and workflows, the hook stages and
//! workflows later releases fill (`burnin`, `scrub`, `raid`), and an empty `global` profile.

use std::sync::LazyLock;

use super::error::ContentErrors;
use super::load::load_files;
use super::set::ContentSet;

/// The embedded files, labelled as errors name them.
const FILES: [(&str, &str); 5] = [
    (
        "built-in/boot_envs.yaml",
        include_str!("../../content/boot_envs.yaml"),
    ),
    (
        "built-in/tasks.yaml",
        include_str!("../../content/tasks.yaml"),
    ),
    (
        "built-in/stages.yaml",
        include_str!("../../content/stages.yaml"),
    ),
    (
        "built-in/workflows.yaml",
        include_str!("../../content/workflows.yaml"),
    ),
    (
        "built-in/profiles.yaml",
        include_str!("../../content/profiles.yaml"),
    ),
];

/// Read and validate the embedded files.
pub fn load() -> Result<ContentSet, ContentErrors> {
    let set = load_files(FILES)?;
    set.validate()?;
    Ok(set)
}

static BUILTIN: LazyLock<ContentSet> = LazyLock::new(|| {
    // Not operator input: the embedded files are fixed at build time, and the test below
    // loads and validates them, so this cannot fail in a built binary.
    load().unwrap_or_else(|e| panic!("built-in content is invalid:\n{e}"))
});

/// The built-in content, read once.
pub fn builtin() -> &'static ContentSet {
    &BUILTIN
}

#[cfg(test)]
mod tests {
    use anneal_shared::content::{
        StageEnd, BOOTENV_DISCOVERY, BOOTENV_INSTALLED, BOOTENV_LOCAL, PROFILE_GLOBAL,
    };

    use super::*;

    #[test]
    fn built_in_content_loads_and_validates() {
        let set = load().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(set.len(), 3 + 1 + 5 + 5 + 1);
        assert!(set.boot_envs[BOOTENV_DISCOVERY].agent);
        assert!(!set.boot_envs[BOOTENV_LOCAL].agent);
        let installed = &set.boot_envs[BOOTENV_INSTALLED];
        assert!(installed.agent && installed.installed);
        assert!(!set.boot_envs[BOOTENV_DISCOVERY].installed);

        let inventory = &set.tasks["inventory"];
        assert_eq!(inventory.action.as_deref(), Some("inventory"));
        assert_eq!(
            (
                inventory.idempotent,
                inventory.retries,
                inventory.timeout_secs
            ),
            (true, 2, 300)
        );

        assert_eq!(set.stages["discover"].boot_env, BOOTENV_DISCOVERY);
        assert_eq!(set.stages["discover"].tasks, ["inventory"]);
        assert_eq!(set.stages["local-boot"].boot_env, BOOTENV_LOCAL);
        assert!(set.stages["local-boot"].tasks.is_empty());
        assert_eq!(set.workflows["discover"].stages, ["discover"]);
        assert_eq!(set.workflows["local-boot"].stages, ["local-boot"]);
        for hook in ["burnin", "scrub", "raid"] {
            let stage = &set.stages[hook];
            assert_eq!(stage.boot_env, BOOTENV_DISCOVERY);
            assert_eq!(stage.then, StageEnd::Continue);
            assert!(stage.tasks.is_empty());
            assert!(stage.description.contains("no tasks yet"), "{hook}");
            assert_eq!(set.workflows[hook].stages, [hook, "local-boot"]);
        }
        assert!(set.profiles[PROFILE_GLOBAL].params.is_empty());

        // Errors in built-in content name the embedded file.
        let origin = set.origin(anneal_shared::content::Kind::Task, "inventory");
        assert_eq!(origin.map(|o| o.file.as_str()), Some("built-in/tasks.yaml"));
        assert_eq!(builtin(), &set);
    }
}
