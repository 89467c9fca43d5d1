//! Params: precedence, type checks, strict rendering that names what is missing, secrets.

use std::collections::BTreeMap;

use anneal_shared::content::Task;
use serde_json::{json, Value};

use super::load::load_str;
use super::params::{redact, render_task, MachineContext, ParamError, Resolved, ValueSource, MASK};
use super::set::ContentSet;

const CONTENT: &str = r#"
kind: param
name: disk.wipe_passes
type: integer
required: true
---
kind: param
name: site
default: dc1
---
kind: param
name: bmc.password
secret: true
---
kind: param
name: note
---
kind: profile
name: rack-1
params:
  disk.wipe_passes: 3
  site: rack-site
---
kind: profile
name: rack-2
params:
  disk.wipe_passes: 5
---
kind: profile
name: global
params:
  disk.wipe_passes: 1
"#;

fn content() -> ContentSet {
    let set = load_str("params.yaml", CONTENT).unwrap_or_else(|e| panic!("{e}"));
    set.validate().unwrap_or_else(|e| panic!("{e}"));
    set
}

fn own(v: Value) -> BTreeMap<String, Value> {
    serde_json::from_value(v).unwrap()
}

fn profiles(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn resolve(set: &ContentSet, mine: Value, p: &[&str]) -> Resolved {
    Resolved::resolve(set, &own(mine), &profiles(p)).unwrap_or_else(|e| panic!("{e}"))
}

fn machine() -> MachineContext {
    MachineContext {
        id: uuid::Uuid::nil(),
        hostname: Some("node-7".into()),
        serial: None,
        manufacturer: Some("QEMU".into()),
        product: None,
        macs: vec!["52:54:00:00:00:01".into(), "52:54:00:00:00:02".into()],
    }
}

fn task(script: &str, params: &[&str]) -> Task {
    Task {
        name: "wipe".into(),
        script: Some(script.into()),
        params: profiles(params),
        timeout_secs: 60,
        ..Task::default()
    }
}

/// The render error of `script` listing `params`, with `mine` as the machine's params.
fn render_error(set: &ContentSet, mine: Value, script: &str, params: &[&str]) -> String {
    let resolved = resolve(set, mine, &[]);
    match render_task(&task(script, params), &resolved, &machine()) {
        Ok(r) => panic!("rendered {:?}", r.script),
        Err(e) => e.to_string(),
    }
}

#[test]
fn machine_over_profiles_in_order_over_global_over_default() {
    let set = content();
    let value_of = |r: &Resolved, n: &str| {
        let p = r.get(n).unwrap();
        (p.value.clone(), p.source.clone())
    };

    let r = resolve(&set, json!({"disk.wipe_passes": 7}), &["rack-1", "rack-2"]);
    assert_eq!(
        value_of(&r, "disk.wipe_passes"),
        (json!(7), ValueSource::Machine)
    );
    assert_eq!(
        value_of(&r, "site"),
        (json!("rack-site"), ValueSource::Profile("rack-1".into()))
    );

    let r = resolve(&set, json!({}), &["rack-2", "rack-1"]);
    assert_eq!(
        value_of(&r, "disk.wipe_passes"),
        (json!(5), ValueSource::Profile("rack-2".into()))
    );
    assert_eq!(
        value_of(&r, "site"),
        (json!("rack-site"), ValueSource::Profile("rack-1".into()))
    );

    // `global` comes last even when listed first.
    let r = resolve(&set, json!({}), &["global", "rack-2"]);
    assert_eq!(
        value_of(&r, "disk.wipe_passes"),
        (json!(5), ValueSource::Profile("rack-2".into()))
    );

    let r = resolve(&set, json!({}), &[]);
    assert_eq!(
        value_of(&r, "disk.wipe_passes"),
        (json!(1), ValueSource::Global)
    );
    assert_eq!(value_of(&r, "site"), (json!("dc1"), ValueSource::Default));
    assert!(r.get("note").is_none());
}

#[test]
fn values_are_type_checked_naming_param_type_and_source() {
    let set = content();
    let e = Resolved::resolve(
        &set,
        &own(json!({"disk.wipe_passes": "three", "bmc.password": 1234, "colour": "red"})),
        &profiles(&["rack-9"]),
    )
    .unwrap_err();
    assert_eq!(
        e.0,
        [
            ParamError::UnknownProfile {
                name: "rack-9".into()
            },
            ParamError::WrongType {
                name: "bmc.password".into(),
                expected: "string",
                got: "integer (secret, not shown)".into(),
                from: ValueSource::Machine,
            },
            ParamError::NotDefined {
                name: "colour".into(),
                by: "the machine's params".into()
            },
            ParamError::WrongType {
                name: "disk.wipe_passes".into(),
                expected: "integer",
                got: r#"string "three""#.into(),
                from: ValueSource::Machine,
            },
        ]
    );
    assert_eq!(
        e.to_string(),
        "profile \"rack-9\" is not defined; \
         param \"bmc.password\": expected string, got integer (secret, not shown) from the machine's params; \
         param \"colour\" is not defined (used by the machine's params); \
         param \"disk.wipe_passes\": expected integer, got string \"three\" from the machine's params"
    );
    // A profile's value names the profile.
    let mut unchecked = set.clone();
    unchecked
        .profiles
        .get_mut("rack-2")
        .unwrap()
        .params
        .insert("site".into(), json!(false));
    let e = Resolved::resolve(&unchecked, &own(json!({})), &profiles(&["rack-2"])).unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"param "site": expected string, got boolean false from profile "rack-2""#
    );
}

#[test]
fn a_task_renders_with_params_and_machine() {
    let set = content();
    let resolved = resolve(&set, json!({}), &["rack-1"]);
    let t = task(
        "wipe --passes {{ params[\"disk.wipe_passes\"] }} --site {{ params.site }} # {{ machine.hostname }} {{ machine.id }} {{ machine.macs | join(\",\") }}\n",
        &["disk.wipe_passes", "site", "note"],
    );
    let r = render_task(&t, &resolved, &machine()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        r.script.as_deref(),
        Some("wipe --passes 3 --site rack-site # node-7 00000000-0000-0000-0000-000000000000 52:54:00:00:00:01,52:54:00:00:00:02\n")
    );
    assert!(r.secrets.is_empty());

    // An optional param may be tested for.
    let t = task(
        "{% if params.note is defined %}{{ params.note }}{% else %}no note{% endif %}",
        &["note"],
    );
    let r = render_task(&t, &resolved, &machine()).unwrap();
    assert_eq!(r.script.as_deref(), Some("no note"));
}

#[test]
fn action_args_render_every_string() {
    let set = content();
    let resolved = resolve(&set, json!({}), &[]);
    let t = Task {
        name: "inv".into(),
        action: Some("inventory".into()),
        args: serde_json::from_value(json!({
            "site": "{{ params.site }}",
            "hosts": ["{{ machine.hostname }}", 2],
            "deep": {"passes": "{{ params[\"disk.wipe_passes\"] }}", "flag": true},
        }))
        .unwrap(),
        params: profiles(&["site", "disk.wipe_passes"]),
        ..Task::default()
    };
    let r = render_task(&t, &resolved, &machine()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.script, None);
    assert_eq!(r.action.as_deref(), Some("inventory"));
    assert_eq!(
        Value::from_iter(r.args),
        json!({"site": "dc1", "hosts": ["node-7", 2], "deep": {"passes": "1", "flag": true}})
    );
}

#[test]
fn a_required_param_without_a_value_fails_naming_it() {
    let mut set = content();
    set.profiles.remove("global");
    assert_eq!(
        render_error(
            &set,
            json!({}),
            "wipe {{ params[\"disk.wipe_passes\"] }}",
            &["disk.wipe_passes"]
        ),
        r#"task "wipe": param "disk.wipe_passes" is required and has no value"#
    );
    // Required even if the script does not use it: the task says it needs it.
    assert_eq!(
        render_error(&set, json!({}), "true", &["disk.wipe_passes"]),
        r#"task "wipe": param "disk.wipe_passes" is required and has no value"#
    );
}

#[test]
fn a_used_param_without_a_value_fails_naming_it_never_renders_empty() {
    let set = content();
    assert_eq!(
        render_error(&set, json!({}), "echo {{ params.note }}", &["note"]),
        r#"task "wipe": param "note" has no value and no default"#
    );
    assert_eq!(
        render_error(&set, json!({}), "echo [{{ params[\"site\"] }}]", &[]),
        r#"task "wipe": param "site" is used by the template but not listed in the task's params"#
    );
    assert_eq!(
        render_error(&set, json!({}), "{{ params.colour }}", &[]),
        r#"task "wipe": param "colour" is not defined (used by the template)"#
    );
    assert_eq!(
        render_error(&set, json!({}), "true", &["colour"]),
        r#"task "wipe": param "colour" is not defined (used by the task's params)"#
    );
    let e = render_error(&set, json!({}), "echo\n{{ machine.serial }}", &[]);
    assert!(
        e.starts_with(r#"task "wipe": script: machine.serial has no value (undefined value"#),
        "{e}"
    );
    assert!(e.contains("(line 2)"), "{e}");
    let e = render_error(&set, json!({}), "{{ nothing }}", &[]);
    assert!(
        e.starts_with(r#"task "wipe": script: undefined value"#),
        "{e}"
    );
    // A param tested with `is defined` is not blamed for a later undefined value.
    let e = render_error(
        &set,
        json!({}),
        "{% if params.note is defined %}x{% endif %}\n{{ nothing }}",
        &["note"],
    );
    assert!(
        e.starts_with(r#"task "wipe": script: undefined value"#),
        "{e}"
    );
    assert!(e.contains("(line 2)"), "{e}");
    // Nor for a later error of another kind.
    let e = render_error(
        &set,
        json!({}),
        "{{ params[\"note\"] is defined }}{{ 1 // 0 }}",
        &["note"],
    );
    assert!(!e.contains("note"), "{e}");
}

#[test]
fn secrets_travel_with_the_task_and_are_redacted() {
    let set = content();
    let resolved = resolve(&set, json!({"bmc.password": "hunter2"}), &[]);
    let t = task(
        "ipmitool -P '{{ params[\"bmc.password\"] }}'\n",
        &["bmc.password"],
    );
    let r = render_task(&t, &resolved, &machine()).unwrap();
    assert_eq!(r.script.as_deref(), Some("ipmitool -P 'hunter2'\n"));
    assert_eq!(r.secrets, ["hunter2"]);
    let log = "+ ipmitool -P 'hunter2'\nError: password hunter2 rejected\n";
    assert_eq!(
        redact(log, &r.secrets),
        "+ ipmitool -P '********'\nError: password ******** rejected\n"
    );
    // Debug output (which ends up in logs) never shows them.
    let debug = format!("{r:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(debug.contains(MASK), "{debug}");
}

#[test]
fn redaction_replaces_longest_first_and_skips_empty_values() {
    let secrets = ["abc".to_string(), String::new(), "abcdef".to_string()];
    assert_eq!(
        redact("x abcdef y abc z", &secrets),
        "x ******** y ******** z"
    );
    assert_eq!(redact("nothing here", &secrets), "nothing here");
}

#[test]
fn list_views_show_secrets_masked() {
    let set = content();
    let resolved = resolve(&set, json!({"bmc.password": "hunter2"}), &[]);
    let masked = resolved.masked();
    assert_eq!(masked["bmc.password"].value, json!(MASK));
    assert_eq!(masked["bmc.password"].source, ValueSource::Machine);
    assert_eq!(masked["site"].value, json!("dc1"));
    assert!(!format!("{masked:?}").contains("hunter2"));
}
