//! The loader: every error names file, document, line, object and field; all are collected.

use std::fs;

use anneal_shared::content::{Kind, StageEnd};

use super::error::ContentErrors;
use super::load::{load_dir, load_str};

/// The errors of loading `text` as `content/tasks.yaml`, one string each.
fn errors(text: &str) -> Vec<String> {
    match load_str("content/tasks.yaml", text) {
        Ok(set) => panic!("expected errors, loaded {} objects", set.len()),
        Err(ContentErrors(e)) => e.iter().map(ToString::to_string).collect(),
    }
}

const TWO_TASKS: &str = "\
# tasks
kind: task
name: inventory-again
action: inventory
---
kind: task
name: wipe-disks
script: wipefs -a /dev/sda
timout_secs: 60
";

#[test]
fn an_unknown_field_names_file_document_line_object_and_field() {
    assert_eq!(
        errors(TWO_TASKS),
        [
            r#"content/tasks.yaml: document 2 (line 5, task "wipe-disks"): unknown field "timout_secs""#
        ]
    );
}

#[test]
fn a_wrong_type_names_the_field_and_its_line() {
    let e = errors("kind: task\nname: t\nscript: x\ntimeout_secs: soon\n");
    assert_eq!(
        e,
        [
            r#"content/tasks.yaml: document 1 (line 4, task "t"): timeout_secs: invalid type: string "soon", expected u32"#
        ]
    );
}

#[test]
fn an_unknown_enum_value_names_the_field() {
    let e = errors("kind: stage\nname: s\nboot_env: discovery\nthen: rebot\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with(
            r#"content/tasks.yaml: document 1 (line 4, stage "s"): then: unknown variant `rebot`"#
        ),
        "{e:?}"
    );
}

#[test]
fn a_missing_required_field_is_named() {
    let e = errors("kind: stage\nname: s\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with(
            r#"content/tasks.yaml: document 1 (line 1, stage "s"): missing field `boot_env`"#
        ),
        "{e:?}"
    );
    let e = errors("kind: workflow\nstages: [a]\n");
    assert!(
        e[0].contains("(line 1, workflow): missing field `name`"),
        "{e:?}"
    );
}

#[test]
fn kind_missing_unknown_or_not_a_string() {
    let e =
        errors("name: a\n---\nkind: tsak\nname: b\n---\nkind: [task]\nname: c\n---\n- a list\n");
    assert_eq!(e.len(), 4, "{e:?}");
    assert!(
        e[0].starts_with(r#"content/tasks.yaml: document 1 (line 1): missing field "kind" (one of param, profile, boot_env, task, stage, workflow, rule)"#),
        "{e:?}"
    );
    assert!(
        e[1].starts_with(r#"content/tasks.yaml: document 2 (line 2): kind: unknown kind "tsak""#),
        "{e:?}"
    );
    assert!(
        e[2].contains("document 3 (line 5): kind: must be a string"),
        "{e:?}"
    );
    assert!(
        e[3].contains("document 4 (line 8): a document must be a mapping"),
        "{e:?}"
    );
}

#[test]
fn every_document_is_checked_and_a_syntax_error_ends_the_file() {
    let text = "\
kind: task
name: a
script: x
retries: -1
---
kind: task
name: b
script: x
script: y
---
kind: task
name: c
scrpit: x
---
kind: task
name: d
  bad: indent
---
kind: task
name: e
never: read
";
    assert_eq!(
        errors(text),
        [
            r#"content/tasks.yaml: document 1 (line 4, task "a"): retries: invalid type: integer `-1`, expected u32"#,
            r#"content/tasks.yaml: document 2 (line 6): duplicate entry with key "script""#,
            r#"content/tasks.yaml: document 3 (line 10, task "c"): unknown field "scrpit""#,
            // The syntax error's own line, not the document's.
            "content/tasks.yaml: document 4 (line 17): mapping values are not allowed in this context",
        ]
    );
}

#[test]
fn a_byte_order_mark_is_ignored() {
    let set = load_str("bom.yaml", "\u{feff}kind: task\nname: a\nscript: x\n").unwrap();
    assert!(set.tasks.contains_key("a"));
}

#[test]
fn several_unknown_fields_are_all_reported() {
    let e = errors("kind: param\nname: p\ntpye: integer\nsecrte: true\n");
    assert_eq!(
        e,
        [
            r#"content/tasks.yaml: document 1 (line 1, param "p"): unknown field "tpye""#,
            r#"content/tasks.yaml: document 1 (line 1, param "p"): unknown field "secrte""#,
        ]
    );
}

#[test]
fn duplicates_in_one_file_name_both_documents() {
    let e = errors("kind: task\nname: a\nscript: x\n---\nkind: task\nname: a\naction: inventory\n");
    assert_eq!(
        e,
        [
            r#"content/tasks.yaml: document 2 (line 4, task "a"): task "a" is defined twice (first defined in content/tasks.yaml, document 1, line 1)"#
        ]
    );
}

#[test]
fn empty_documents_and_comments_are_skipped() {
    let set = load_str(
        "x.yaml",
        "# nothing\n---\n---\nkind: task\nname: a\nscript: x\n---\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(set.len(), 1);
    let origin = set.origin(Kind::Task, "a").unwrap();
    assert_eq!((origin.document, origin.line), (Some(2), Some(3)));
    assert!(load_str("empty.yaml", "").unwrap().is_empty());
}

#[test]
fn a_good_directory_loads_recursively_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir_all(root.join("stages")).unwrap();
    fs::create_dir_all(root.join(".git")).unwrap();
    fs::write(
        root.join("params.yaml"),
        "kind: param\nname: disk.wipe_passes\ntype: integer\ndefault: 1\n---\nkind: profile\nname: rack-1\nparams:\n  disk.wipe_passes: 3\n",
    )
    .unwrap();
    fs::write(
        root.join("tasks.yml"),
        "kind: task\nname: wipe\nscript: |\n  wipe --passes {{ params[\"disk.wipe_passes\"] }}\nparams: [disk.wipe_passes]\ndestructive: true\n",
    )
    .unwrap();
    fs::write(
        root.join("stages/wipe.yaml"),
        "kind: stage\nname: wipe\nboot_env: discovery\ntasks: [wipe]\nthen: power_off\n---\nkind: workflow\nname: wipe\nstages: [wipe]\n",
    )
    .unwrap();
    fs::write(root.join("README.md"), "not: [content").unwrap();
    fs::write(root.join(".git/x.yaml"), "not: [content").unwrap();
    fs::write(root.join(".swap.yaml"), "not: [content").unwrap();

    let set = load_dir(root).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(set.len(), 5);
    assert_eq!(set.stages["wipe"].then, StageEnd::PowerOff);
    assert_eq!(
        set.tasks["wipe"].script.as_deref(),
        Some("wipe --passes {{ params[\"disk.wipe_passes\"] }}\n")
    );
    assert!(set.tasks["wipe"].destructive);
    assert_eq!(set.profiles["rack-1"].params["disk.wipe_passes"], 3);
    let origin = set.origin(Kind::Workflow, "wipe").unwrap();
    assert_eq!(
        origin.file,
        root.join("stages/wipe.yaml").display().to_string()
    );
    assert_eq!((origin.document, origin.line), (Some(2), Some(6)));
    // A single file works too.
    assert_eq!(load_dir(&root.join("tasks.yml")).unwrap().len(), 1);
}

#[test]
fn a_directory_reports_every_file_and_duplicates_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::write(
        root.join("a.yaml"),
        "kind: task\nname: t\nscript: x\nretry: 1\n",
    )
    .unwrap();
    fs::write(
        root.join("b.yaml"),
        "---\nkind: task\nname: t\naction: inventory\n",
    )
    .unwrap();
    fs::write(root.join("c.yaml"), [0xff, 0xfe, b'\n']).unwrap();
    let e = match load_dir(root) {
        Ok(_) => panic!("loaded"),
        Err(ContentErrors(e)) => e,
    };
    let a = root.join("a.yaml").display().to_string();
    let b = root.join("b.yaml").display().to_string();
    let c = root.join("c.yaml").display().to_string();
    let e: Vec<String> = e.iter().map(ToString::to_string).collect();
    assert_eq!(
        e,
        [
            format!(r#"{a}: document 1 (line 1, task "t"): unknown field "retry""#),
            format!(
                r#"{b}: document 1 (line 1, task "t"): task "t" is defined twice (first defined in {a}, document 1, line 1)"#
            ),
            format!("{c}: not UTF-8 text"),
        ]
    );
}

#[test]
fn a_missing_directory_is_an_error_not_an_empty_set() {
    let e = load_dir(std::path::Path::new("/nonexistent/anneal-content")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("/nonexistent/anneal-content: cannot read directory"),
        "{e}"
    );
}
