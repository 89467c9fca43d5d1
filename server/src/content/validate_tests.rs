//! Validation: every rule produces a problem naming the object, the field and the file.

use anneal_shared::content::{ContentObject, Task};

use super::builtin::builtin;
use super::error::ContentErrors;
use super::load::load_str;
use super::set::ContentSet;

/// The problems of `yaml` (as `ops.yaml`, one object per document) over the built-ins.
fn problems(yaml: &str) -> Vec<String> {
    let operator = load_str("ops.yaml", yaml).unwrap_or_else(|e| panic!("load: {e}"));
    match ContentSet::merge(builtin(), &operator) {
        Ok(_) => Vec::new(),
        Err(ContentErrors(e)) => e.iter().map(ToString::to_string).collect(),
    }
}

/// The one problem of a single-object `yaml`, without its `ops.yaml: document 1 (line 1, …)`
/// prefix, which is checked once in `problems_name_file_document_object_and_field`.
fn problem(yaml: &str) -> String {
    let p = problems(yaml);
    assert_eq!(p.len(), 1, "{p:?}");
    let (_, message) = p[0].split_once("): ").unwrap_or_else(|| panic!("{p:?}"));
    message.to_string()
}

#[test]
fn problems_name_file_document_object_and_field() {
    let p = problems("kind: task\nname: t\nscript: x\ntimeout_secs: 0\n---\nkind: stage\nname: s\nboot_env: nowhere\n");
    assert_eq!(
        p,
        [
            r#"ops.yaml: document 1 (line 1, task "t"): timeout_secs: must be greater than 0"#,
            r#"ops.yaml: document 2 (line 5, stage "s"): boot_env: boot_env "nowhere" is not defined"#,
        ]
    );
}

#[test]
fn content_without_a_file_is_named_by_object() {
    let mut set = ContentSet::new();
    let task = Task {
        name: "t".into(),
        script: Some("x".into()),
        timeout_secs: 0,
        ..Task::default()
    };
    set.insert(ContentObject::Task(task), None).unwrap();
    let e = ContentSet::merge(builtin(), &set).unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"task "t": timeout_secs: must be greater than 0"#
    );
}

#[test]
fn names_are_checked() {
    assert_eq!(
        problem("kind: workflow\nname: Discover\nstages: [discover]\n"),
        r#"name: "Discover" must match [a-z0-9][a-z0-9._-]*"#
    );
    assert_eq!(
        problem("kind: workflow\nname: -x\nstages: [discover]\n"),
        r#"name: "-x" must match [a-z0-9][a-z0-9._-]*"#
    );
    let long = "a".repeat(65);
    assert_eq!(
        problem(&format!(
            "kind: workflow\nname: {long}\nstages: [discover]\n"
        )),
        format!("name: {long:?} is longer than 64 characters")
    );
    assert_eq!(
        problem("kind: workflow\nname: ''\nstages: [discover]\n"),
        "name: must not be empty"
    );
    assert!(problems("kind: workflow\nname: a.b_c-9\nstages: [discover]\n").is_empty());
    assert!(problems(&format!(
        "kind: workflow\nname: {}\nstages: [discover]\n",
        &long[1..]
    ))
    .is_empty());
}

#[test]
fn references_must_exist() {
    assert_eq!(
        problem("kind: stage\nname: s\nboot_env: discovery\ntasks: [inventory, wipe]\n"),
        r#"tasks: task "wipe" is not defined"#
    );
    assert_eq!(
        problem("kind: workflow\nname: w\nstages: [discover, burn]\n"),
        r#"stages: stage "burn" is not defined"#
    );
    assert_eq!(
        problem("kind: workflow\nname: w\nstages: []\n"),
        "stages: a workflow needs at least one stage"
    );
    assert_eq!(
        problem("kind: task\nname: t\nscript: x\nparams: [disk.passes]\n"),
        r#"params: param "disk.passes" is not defined"#
    );
}

#[test]
fn param_values_have_their_type() {
    assert_eq!(
        problem("kind: param\nname: p\ntype: integer\ndefault: three\n"),
        r#"default: expected integer, got string "three""#
    );
    assert_eq!(
        problem("kind: param\nname: p\ntype: list\ndefault: 3\n"),
        "default: expected list, got integer 3"
    );
    let p = problems(
        "kind: param\nname: p\ntype: boolean\n---\nkind: param\nname: key\nsecret: true\n---\nkind: profile\nname: rack\nparams:\n  p: 'yes'\n  key: 1234\n  q: 1\n",
    );
    assert_eq!(
        p,
        [
            r#"ops.yaml: document 3 (line 8, profile "rack"): params.key: expected string, got integer (secret, not shown)"#,
            r#"ops.yaml: document 3 (line 8, profile "rack"): params.p: expected boolean, got string "yes""#,
            r#"ops.yaml: document 3 (line 8, profile "rack"): params.q: param "q" is not defined"#,
        ]
    );
}

#[test]
fn a_task_is_a_script_or_a_known_action() {
    assert_eq!(
        problem("kind: task\nname: t\nscript: x\naction: inventory\n"),
        "script: exactly one of script and action must be set"
    );
    assert_eq!(
        problem("kind: task\nname: t\n"),
        "script: exactly one of script and action must be set"
    );
    assert_eq!(
        problem("kind: task\nname: t\naction: teleport\n"),
        r#"action: unknown action "teleport" (known: inventory, noop)"#
    );
    assert_eq!(
        problem("kind: task\nname: t\nscript: x\nargs:\n  a: 1\n"),
        "args: only an action takes args"
    );
    assert!(
        problems("kind: task\nname: t\naction: inventory\nargs:\n  a: '{{ machine.id }}'\n")
            .is_empty()
    );
}

#[test]
fn templates_must_parse() {
    let p = problem("kind: task\nname: t\nscript: |\n  echo one\n  echo {{ params[\"x\"] \n");
    assert!(p.starts_with("script: syntax error: "), "{p}");
    assert!(p.ends_with("(line 2)"), "{p}");
    let p = problem("kind: task\nname: t\naction: inventory\nargs:\n  disks: ['ok', '{% if %}']\n");
    assert!(p.starts_with("args.disks.1: syntax error: "), "{p}");
    let p = problem("kind: boot_env\nname: e\nkernel: vmlinuz\nkernel_args: '{{ x'\n");
    assert!(p.starts_with("kernel_args: syntax error: "), "{p}");
    let p = problem(
        "kind: boot_env\nname: e\nipxe: '#!ipxe'\ntemplates:\n  preseed.cfg: '{% for %}'\n",
    );
    assert!(
        p.starts_with("templates.preseed.cfg: syntax error: "),
        "{p}"
    );
    // iPXE's own `${…}` settings are not template syntax.
    assert!(problems(
        "kind: boot_env\nname: e\nipxe: \"#!ipxe\\nchain http://x/${mac:hexhyp}\\n\"\n"
    )
    .is_empty());
}

#[test]
fn boot_envs_need_a_kernel_or_ipxe_and_stay_in_their_directory() {
    assert_eq!(
        problem("kind: boot_env\nname: e\nagent: true\n"),
        "kernel: a boot environment needs a kernel or an ipxe script"
    );
    assert_eq!(
        problem("kind: boot_env\nname: e\nkernel: ../../etc/passwd\n"),
        r#"kernel: "../../etc/passwd" must be a relative path inside the environment's artifact directory"#
    );
    assert_eq!(
        problem("kind: boot_env\nname: e\nkernel: vmlinuz\ninitrds: [initrd.img, /boot/x]\n"),
        r#"initrds: "/boot/x" must be a relative path inside the environment's artifact directory"#
    );
    assert!(problems(
        "kind: boot_env\nname: e\nkernel: casper/vmlinuz\ninitrds: [casper/initrd]\n"
    )
    .is_empty());
}

#[test]
fn artifact_and_file_names_are_plain_enough_for_urls_in_scripts() {
    assert_eq!(
        problem("kind: boot_env\nname: e\nkernel: \"vm linuz${x}\"\n"),
        r#"kernel: "vm linuz${x}" may have only letters, digits and . _ + - between its slashes (it becomes part of a URL in an iPXE script)"#
    );
    assert_eq!(
        problem("kind: boot_env\nname: e\nkernel: linux\ntemplates:\n  \"pre seed?\": x\n"),
        r#"templates: "pre seed?" may have only letters, digits and . _ + - (it becomes part of a URL)"#
    );
    assert!(problems(
        "kind: boot_env\nname: e\nkernel: debian/linux\ninitrds: [initrd.gz]\ntemplates:\n  preseed.cfg: x\n"
    )
    .is_empty());
}

#[test]
fn the_reserved_boot_envs_cannot_be_redefined() {
    let p = problems("kind: boot_env\nname: discovery\nagent: true\n---\nkind: boot_env\nname: local\nipxe: exit\n");
    assert_eq!(
        p,
        [
            r#"ops.yaml: document 1 (line 1, boot_env "discovery"): name: "discovery" is a built-in boot environment and cannot be redefined"#,
            r#"ops.yaml: document 2 (line 4, boot_env "local"): name: "local" is a built-in boot environment and cannot be redefined"#,
        ]
    );
}

#[test]
fn stages_need_an_agent_for_tasks_and_positive_timeouts() {
    assert_eq!(
        problem("kind: stage\nname: s\nboot_env: local\ntasks: [inventory]\n"),
        r#"tasks: boot_env "local" runs no agent (agent: false), so the stage cannot have tasks"#
    );
    let p = problems(
        "kind: stage\nname: s\nboot_env: discovery\nboot_timeout_secs: 0\ndeadline_secs: 0\n",
    );
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(
        p[0].ends_with("boot_timeout_secs: must be greater than 0"),
        "{p:?}"
    );
    assert!(
        p[1].ends_with("deadline_secs: must be greater than 0"),
        "{p:?}"
    );
}

#[test]
fn the_installed_environment_takes_tasks_and_operator_ones_need_the_agent() {
    // The built-in `installed` boots the disk like `local`, but its agent takes tasks.
    assert!(problems("kind: stage\nname: s\nboot_env: installed\ntasks: [inventory]\n").is_empty());
    assert_eq!(
        problems("kind: boot_env\nname: installed\nipxe: exit\n"),
        [
            r#"ops.yaml: document 1 (line 1, boot_env "installed"): name: "installed" is a built-in boot environment and cannot be redefined"#
        ]
    );
    // An operator's own installed environment (its own script for the disk) needs the agent.
    assert_eq!(
        problem("kind: boot_env\nname: disk2\nipxe: sanboot --drive 0x81\ninstalled: true\n"),
        "installed: an installed environment runs the agent; set agent: true"
    );
    assert!(problems(
        "kind: boot_env\nname: disk2\nipxe: sanboot --drive 0x81\nagent: true\ninstalled: true\n---\nkind: stage\nname: s\nboot_env: disk2\ntasks: [inventory]\n"
    )
    .is_empty());
}

#[test]
fn every_problem_is_collected() {
    let p = problems(
        "kind: task\nname: T\naction: nope\ntimeout_secs: 0\n---\nkind: stage\nname: s\nboot_env: x\ntasks: [y]\n---\nkind: workflow\nname: w\nstages: [z]\n",
    );
    assert_eq!(p.len(), 6, "{p:?}");
}

#[test]
fn operator_content_references_and_replaces_built_ins() {
    let yaml = "\
kind: param
name: burnin.minutes
type: integer
default: 30
---
kind: task
name: stress
script: stress-ng --timeout {{ params[\"burnin.minutes\"] }}m
params: [burnin.minutes]
---
kind: stage
name: burnin
description: CPU and memory stress
boot_env: discovery
tasks: [inventory, stress]
---
kind: profile
name: global
params:
  burnin.minutes: 60
---
kind: workflow
name: full
stages: [discover, burnin, local-boot]
";
    let operator = load_str("ops.yaml", yaml).unwrap_or_else(|e| panic!("{e}"));
    let merged = ContentSet::merge(builtin(), &operator).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(merged.stages["burnin"].tasks, ["inventory", "stress"]);
    assert_eq!(merged.profiles["global"].params["burnin.minutes"], 60);
    assert!(merged.workflows.contains_key("discover"));
    assert_eq!(
        merged
            .origin(anneal_shared::content::Kind::Stage, "burnin")
            .map(|o| o.file.as_str()),
        Some("ops.yaml")
    );
    // The built-ins themselves are unchanged.
    assert!(builtin().stages["burnin"].tasks.is_empty());
}

#[test]
fn rules_need_a_selector_that_parses_and_a_workflow_that_exists() {
    assert_eq!(
        problem("kind: rule\nname: r\nselector: \"tag=web,,\"\nworkflow: discover\n"),
        "selector: term 2 ``: the term is empty (two commas in a row, or a comma at an end)"
    );
    assert_eq!(
        problem("kind: rule\nname: r\nselector: tag=web\nworkflow: nope\n"),
        r#"workflow: workflow "nope" is not defined"#
    );
    assert!(problems("kind: rule\nname: r\nselector: tag=web\nworkflow: discover\n").is_empty());
    let unknown = load_str(
        "ops.yaml",
        "kind: rule\nname: r\nselector: a=b\nworkflow: w\nprio: 1\n",
    );
    assert!(unknown
        .unwrap_err()
        .to_string()
        .contains("unknown field \"prio\""));
}
