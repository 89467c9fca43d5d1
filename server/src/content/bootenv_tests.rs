//! Boot environments rendered for a machine: strict, secrets only in files, plain iPXE text in
//! scripts.

use std::collections::BTreeMap;

use anneal_shared::content::BootEnv;

use super::bootenv::{self, BootInputs};
use super::load::load_str;
use super::params::{MachineContext, ParamError, Resolved};
use super::set::ContentSet;

const SECRET: &str = "$6$salt$SECRETHASH";

const CONTENT: &str = r#"
kind: param
name: root_hash
secret: true
---
kind: param
name: mirror
default: deb.example.org
---
kind: param
name: packages
type: list
default: [openssh-server, curl]
---
kind: param
name: unset
---
kind: profile
name: global
params:
  root_hash: "$6$salt$SECRETHASH"
---
kind: boot_env
name: installer
kernel: linux
initrds: [initrd.gz]
kernel_args: >-
  auto=true
  url={{ files["preseed.cfg"] }}
  hostname={{ machine.hostname }}   BOOTIF={{ bootif }}
templates:
  preseed.cfg: |
    d-i mirror/http/hostname string {{ params["mirror"] }}
    d-i passwd/root-password-crypted password {{ params["root_hash"] }}
    d-i pkgsel/include string {{ params["packages"] | join(" ") }}
"#;

struct Fixture {
    env: BootEnv,
    resolved: Resolved,
    machine: MachineContext,
}

fn fixture() -> Fixture {
    let set: ContentSet = load_str("env.yaml", CONTENT).unwrap_or_else(|e| panic!("{e}"));
    set.validate().unwrap_or_else(|e| panic!("{e}"));
    let resolved = Resolved::resolve(&set, &BTreeMap::new(), &[]).unwrap();
    let machine = MachineContext {
        id: uuid::Uuid::from_u128(7),
        hostname: Some("node-7".into()),
        ..MachineContext::default()
    };
    Fixture {
        env: set.boot_envs["installer"].clone(),
        resolved,
        machine,
    }
}

impl Fixture {
    fn inputs(&self) -> BootInputs<'_> {
        let url = |p: &str| (p.to_string(), format!("http://h:8080/{p}"));
        let preseed = "http://h:8080/files/TOKEN/preseed.cfg".to_string();
        BootInputs {
            resolved: &self.resolved,
            machine: &self.machine,
            files: BTreeMap::from([("preseed.cfg".to_string(), preseed)]),
            artifacts: BTreeMap::from([url("linux"), url("initrd.gz")]),
            mac: "52:54:00:12:34:56".into(),
            base_url: "http://h:8080".into(),
        }
    }
}

#[test]
fn kernel_args_and_files_are_rendered_for_the_machine() {
    let f = fixture();
    let inputs = f.inputs();
    assert_eq!(
        bootenv::kernel_args(&f.env, &inputs).unwrap(),
        "auto=true url=http://h:8080/files/TOKEN/preseed.cfg hostname=node-7 BOOTIF=01-52-54-00-12-34-56",
        "one line, whitespace folded"
    );
    let preseed = bootenv::file(&f.env, "preseed.cfg", &inputs).unwrap();
    assert_eq!(
        preseed,
        format!(
            "d-i mirror/http/hostname string deb.example.org\n\
             d-i passwd/root-password-crypted password {SECRET}\n\
             d-i pkgsel/include string openssh-server curl\n"
        ),
        "the file sees secrets"
    );
    bootenv::check_files(&f.env, &inputs).unwrap();
    assert!(bootenv::file(&f.env, "other.cfg", &inputs).is_err());
    assert_eq!(bootenv::ipxe(&f.env, &inputs, "", None).unwrap(), None);
}

#[test]
fn a_secret_never_reaches_the_script_or_the_kernel_command_line() {
    let mut f = fixture();
    f.env.kernel_args = r#"auto=true pw={{ params["root_hash"] }}"#.into();
    let e = bootenv::kernel_args(&f.env, &f.inputs()).unwrap_err();
    assert_eq!(
        e.errors.0,
        [ParamError::Secret {
            name: "root_hash".into()
        }]
    );
    assert!(!e.to_string().contains("SECRETHASH"), "{e}");
    assert!(
        e.to_string()
            .starts_with(r#"boot environment "installer": param "root_hash" is secret"#),
        "{e}"
    );

    f.env.ipxe = Some("#!ipxe\necho {{ params.root_hash }}\n".into());
    let e = bootenv::ipxe(&f.env, &f.inputs(), "", None).unwrap_err();
    assert!(
        matches!(&e.errors.0[..], [ParamError::Secret { name }] if name == "root_hash"),
        "{e}"
    );
}

#[test]
fn a_missing_param_or_fact_is_named_and_never_rendered_empty() {
    let mut f = fixture();
    f.env
        .templates
        .insert("late.sh".into(), "echo {{ params[\"unset\"] }}\n".into());
    f.env.templates.insert(
        "serial.txt".into(),
        "{{ machine.serial }} {{ files[\"nope.cfg\"] }}\n".into(),
    );
    let e = bootenv::check_files(&f.env, &f.inputs()).unwrap_err();
    let texts: Vec<String> = e.errors.0.iter().map(ToString::to_string).collect();
    assert_eq!(texts.len(), 2, "every broken file is reported: {texts:?}");
    assert_eq!(texts[0], r#"param "unset" has no value and no default"#);
    assert!(
        texts[1].starts_with("templates.serial.txt: machine.serial has no value"),
        "{texts:?}"
    );

    f.env.kernel_args = r#"mirror={{ params["mirror"] }} x={{ files["nope.cfg"] }}"#.into();
    let e = bootenv::kernel_args(&f.env, &f.inputs()).unwrap_err();
    assert!(e.to_string().contains("files.nope.cfg has no value"), "{e}");
    f.env.kernel_args = r#"{{ params["undefined.param"] }}"#.into();
    let e = bootenv::kernel_args(&f.env, &f.inputs()).unwrap_err();
    assert!(
        e.to_string()
            .contains(r#"param "undefined.param" is not defined"#),
        "{e}"
    );
}

#[test]
fn values_printed_into_a_script_must_be_plain_ipxe_text() {
    let mut f = fixture();
    f.machine.hostname = Some("evil${net0/ip}\nshell".into());
    let e = bootenv::kernel_args(&f.env, &f.inputs()).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("contains '$', which iPXE would interpret"),
        "{text}"
    );
    assert!(
        !text.contains("evil"),
        "the value itself is not shown: {text}"
    );
    // The operator's own text may use iPXE settings; files are not iPXE at all.
    f.machine.hostname = Some("node-7".into());
    f.env.kernel_args = "ip=${net0/ip} hostname={{ machine.hostname }}".into();
    assert_eq!(
        bootenv::kernel_args(&f.env, &f.inputs()).unwrap(),
        "ip=${net0/ip} hostname=node-7"
    );
    f.machine.hostname = Some("a$b".into());
    f.env
        .templates
        .insert("h".into(), "{{ machine.hostname }}".into());
    assert_eq!(bootenv::file(&f.env, "h", &f.inputs()).unwrap(), "a$b");
}

#[test]
fn an_own_ipxe_script_sees_artifacts_kernel_args_and_the_agents_arguments() {
    let mut f = fixture();
    f.env.ipxe = Some(
        "#!ipxe\nkernel {{ artifacts[\"linux\"] }} {{ kernel_args }} {{ anneal_args }}\ninitrd {{ artifacts[\"initrd.gz\"] }}\nboot\n"
            .into(),
    );
    let script = bootenv::ipxe(&f.env, &f.inputs(), "quiet", Some("anneal.token=t"))
        .unwrap()
        .unwrap();
    assert_eq!(
        script,
        "#!ipxe\nkernel http://h:8080/linux quiet anneal.token=t\ninitrd http://h:8080/initrd.gz\nboot\n"
    );
    // Without the agent there are no agent arguments: using them is an error, not "".
    let e = bootenv::ipxe(&f.env, &f.inputs(), "quiet", None).unwrap_err();
    assert!(e.to_string().contains("undefined"), "{e}");
}
