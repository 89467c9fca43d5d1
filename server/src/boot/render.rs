//! iPXE scripts, rendered with minijinja in strict mode: a variable the template needs but the
//! caller did not give is an error, and an error becomes a script that says what went wrong and
//! retries — never an empty string, never a 404 (iPXE stops on a 404).
//!
//! Everything interpolated into a script is either produced by the server or reduced to a safe
//! character set first ([`ipxe_safe`]): iPXE expands `${…}` and splits on whitespace, so a
//! client-supplied value must never reach a script verbatim.

use minijinja::{Environment, UndefinedBehavior, Value};

/// Seconds an error script waits before asking for its script again.
pub const RETRY_SECS: u32 = 30;

// The query: `mac` and `uuid` are binary settings. A `:type` suffix reinterprets a setting's raw
// bytes, so `${mac:uristring}` is the six bytes percent-encoded as text — `RT%00…` for
// 52:54:00:… — and Debian's iPXE (1.0.0+git-20190125) ends the request URI at the first NUL
// byte: the server saw `?mac=RT` and nothing else (seen on SeaBIOS and OVMF in the virtual rack,
// tests/tests/pxe_boot.rs). So `mac` is formatted `:hexhyp` (52-54-00-…) and `uuid` in its own
// type (hex and hyphens): URL-safe either way. Only true strings (`serial`, `buildarch`,
// `platform`) go through `:uristring`, since a serial may hold anything.
const ENTRY: &str = r#"#!ipxe
# Anneal entry script: ask for this machine's own script, naming it by MAC, SMBIOS UUID and
# serial, and saying which firmware runs iPXE. `--replace` ends this script, so an `exit` in the
# machine's script reaches the firmware instead of returning here.
:retry
chain --replace {{ base_url }}/boot/machine.ipxe?mac=${mac:hexhyp}&uuid=${uuid}&serial=${serial:uristring}&buildarch=${buildarch:uristring}&platform=${platform:uristring} || goto failed
:failed
echo Anneal: could not fetch this machine's boot script from {{ base_url }}
prompt --timeout {{ retry_ms }} Retrying in {{ retry_secs }} seconds, or press any key... ||
goto retry
"#;

const DISCOVERY: &str = r#"#!ipxe
# Anneal: discovery image for {{ mac }} ({{ machine }}).
# rootfstype=ramfs: the image unpacks into RAM, and the default (tmpfs) is capped at half the
# memory the kernel sees at that moment, which under UEFI with 512 MB is less than the image.
:retry
echo Anneal: booting the discovery image for {{ mac }}
kernel {{ kernel_url }} initrd={{ initrd_name }} rootfstype=ramfs {{ kernel_args }} anneal.url={{ anneal_url }} anneal.ca={{ ca_fingerprint }} BOOTIF={{ bootif }} anneal.token={{ token }} || goto failed
initrd {{ initrd_url }} || goto failed
boot || goto failed
:failed
echo Anneal: fetching or starting the discovery image failed
prompt --timeout {{ retry_ms }} Retrying in {{ retry_secs }} seconds, or press any key... ||
chain --replace {{ base_url }}/boot.ipxe || goto failed
"#;

// An operator's boot environment given as a kernel, initrds and kernel arguments (one with
// its own `ipxe` script is rendered by `content::bootenv` instead). `initrd=NAME` for each
// initrd, as for discovery: Debian's old iPXE under UEFI hands the kernel only initrds the
// command line names. A failed fetch retries this same script rather than /boot.ipxe: an
// environment without the agent is left (the run moves on) as soon as its script is served,
// so /boot.ipxe would already answer with the next stage's script.
const ENV: &str = r#"#!ipxe
# Anneal: boot environment {{ env }} for {{ mac }} ({{ machine }}).
:retry
echo Anneal: booting {{ env }} for {{ machine }}
kernel {{ kernel_url }}{% for i in initrds %} initrd={{ i.name }}{% endfor %} {{ kernel_args }} || goto failed
{%- for i in initrds %}
initrd {{ i.url }} || goto failed
{%- endfor %}
boot || goto failed
:failed
echo Anneal: fetching or starting {{ env }} failed
prompt --timeout {{ retry_ms }} Retrying in {{ retry_secs }} seconds, or press any key... ||
goto retry
"#;

// Local boot. Why these commands:
// - UEFI (`efi`): `exit 1`. A bare `exit` returns status 0, which iPXE hands to the firmware as
//   EFI_SUCCESS; the UEFI boot manager then stops walking the boot order and many machines
//   (Dell PowerEdge, Lenovo XCC, OVMF) drop into the boot menu or setup instead of the disk
//   (tinkerbell/tinkerbell PR #984, netbootxyz/netboot.xyz#1276, warewulf/warewulf3 PR #106,
//   theforeman/foreman PR #8373). A failure status makes the firmware try the next Boot####
//   entry: the local disk. `sanboot --drive` on UEFI needs a newer iPXE than Debian's 2019
//   build (ipxe/ipxe#776) and fails where the firmware left disk drivers unconnected for a
//   network boot (ipxe/ipxe#1334).
// - BIOS (`pcbios`): `sanboot --no-describe --drive 0x80` boots the first hard disk's MBR via
//   INT 13h, whatever the boot order, instead of relying on what each BIOS does when a PXE ROM
//   returns. If that fails (no bootable disk), `exit 1` hands back to the BIOS for its next
//   device.
// - Platform unknown (an old client that did not say): decide at run time with `${platform}`.
// Both seen working on real firmware in the virtual rack (tests/tests/pxe_boot.rs): SeaBIOS +
// Debian's iPXE print "Booting from SAN device 0x80" and run the MBR; OVMF takes `exit 1` as a
// failed boot option and goes on down its boot order. Note that OVMF (like many servers) lists
// four entries per NIC — PXEv4, PXEv6, HTTPv4, HTTPv6 — so after `exit 1` it tries the NIC's
// remaining entries before the disk; with IPv6 enabled but no DHCPv6 server, each IPv6 entry
// waits ~90 s. Firmware set to IPv4-only network boot reaches the disk in seconds.
// The entry script chains here with `--replace`, so `exit` leaves iPXE rather than returning to
// the entry script (without it, control returns to the caller and it retries forever).
const LOCAL: &str = r#"#!ipxe
# Anneal: {{ machine }} has no work; boot from the local disk ({{ platform }}).
echo Anneal: {{ machine }}: booting from the local disk
{%- if platform == "efi" %}
exit 1
{%- elif platform == "pcbios" %}
sanboot --no-describe --drive 0x80 || exit 1
{%- else %}
iseq ${platform} efi && exit 1 ||
sanboot --no-describe --drive 0x80 || exit 1
{%- endif %}
"#;

/// The script templates.
pub struct Templates {
    env: Environment<'static>,
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

impl Templates {
    /// The built-in templates, strict about undefined variables.
    pub fn new() -> Templates {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .keep_trailing_newline(true)
                .build()
                .expect("syntax config"),
        );
        let all = [
            ("entry", ENTRY),
            ("discovery", DISCOVERY),
            ("local", LOCAL),
            ("env", ENV),
        ];
        for (name, src) in all {
            env.add_template(name, src)
                .expect("built-in iPXE templates parse");
        }
        Templates { env }
    }

    /// Render `name` with `ctx`. On any error, a script that shows the error and retries via
    /// `retry_url` (the entry script).
    pub fn render(&self, name: &str, ctx: Value, retry_url: &str) -> Result<String, String> {
        let mut ctx = ctx;
        // Retry timing is ours, not the caller's; merge it in.
        ctx =
            minijinja::context! { retry_secs => RETRY_SECS, retry_ms => RETRY_SECS * 1000, ..ctx };
        match self.env.get_template(name).and_then(|t| t.render(&ctx)) {
            Ok(s) => Ok(s),
            Err(e) => {
                let mut msg = format!("template {name}: {}", e.kind());
                if let Some(d) = e.detail() {
                    msg.push_str(": ");
                    msg.push_str(d);
                }
                Err(error_script(&msg, retry_url))
            }
        }
    }
}

/// A script that prints `message`, waits and asks for `retry_url` again. Built without a
/// template so it cannot fail itself.
pub fn error_script(message: &str, retry_url: &str) -> String {
    let message = ipxe_safe(message, 400);
    let retry_url = ipxe_safe(retry_url, 400);
    format!(
        "#!ipxe\n\
         # Anneal could not give this machine a boot script.\n\
         :retry\n\
         echo Anneal: {message}\n\
         prompt --timeout {ms} Retrying in {RETRY_SECS} seconds, or press any key... ||\n\
         chain --replace {retry_url} || goto retry\n",
        ms = RETRY_SECS * 1000
    )
}

/// Reduce text to characters that mean nothing special to iPXE's command parser: no `$`
/// (setting expansion), no `|` `&` (`||`, `&&`), no `#`, no control characters; truncated.
pub fn ipxe_safe(s: &str, max: usize) -> String {
    s.chars()
        .map(|c| {
            if crate::content::template::is_ipxe_plain(c) {
                c
            } else {
                '_'
            }
        })
        .take(max)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::context;

    const RETRY: &str = "http://10.0.0.1:8080/boot.ipxe";

    #[test]
    fn discovery_carries_every_field() {
        let t = Templates::new();
        let s = t
            .render(
                "discovery",
                context! {
                    mac => "52:54:00:12:34:56",
                    machine => "unknown",
                    kernel_url => "http://10.0.0.1:8080/artifacts/aa/vmlinuz",
                    initrd_url => "http://10.0.0.1:8080/artifacts/bb/initrd.img",
                    initrd_name => "initrd.img",
                    kernel_args => "console=ttyS0",
                    anneal_url => "https://10.0.0.1:8443",
                    ca_fingerprint => "sha256:00ff",
                    bootif => "01-52-54-00-12-34-56",
                    token => "anl_boot_x",
                    base_url => "http://10.0.0.1:8080",
                },
                RETRY,
            )
            .unwrap();
        assert!(s.starts_with("#!ipxe\n"));
        for want in [
            "kernel http://10.0.0.1:8080/artifacts/aa/vmlinuz initrd=initrd.img rootfstype=ramfs console=ttyS0 ",
            "anneal.url=https://10.0.0.1:8443 ",
            "anneal.ca=sha256:00ff ",
            "BOOTIF=01-52-54-00-12-34-56 ",
            "anneal.token=anl_boot_x ",
            "initrd http://10.0.0.1:8080/artifacts/bb/initrd.img || goto failed",
            "prompt --timeout 30000 ",
            "chain --replace http://10.0.0.1:8080/boot.ipxe",
        ] {
            assert!(s.contains(want), "missing {want:?} in\n{s}");
        }
    }

    #[test]
    fn a_missing_variable_is_an_error_script_not_an_empty_value() {
        let t = Templates::new();
        let s = t
            .render("discovery", context! { mac => "52:54:00:12:34:56" }, RETRY)
            .unwrap_err();
        assert!(s.starts_with("#!ipxe\n"), "{s}");
        assert!(
            s.contains("echo Anneal: template discovery: undefined"),
            "{s}"
        );
        assert!(s.contains("prompt --timeout 30000"), "{s}");
        assert!(
            s.contains(&format!("chain --replace {RETRY} || goto retry")),
            "{s}"
        );
        assert!(!s.contains("kernel"), "{s}");
    }

    #[test]
    fn local_boot_per_platform() {
        let t = Templates::new();
        let r = |p: &str| {
            t.render("local", context! { machine => "m1", platform => p }, RETRY)
                .unwrap()
        };
        let efi = r("efi");
        assert!(efi.starts_with("#!ipxe\n"));
        assert!(efi.contains("\nexit 1\n"), "{efi}");
        assert!(!efi.contains("sanboot"), "{efi}");
        let bios = r("pcbios");
        assert!(
            bios.contains("\nsanboot --no-describe --drive 0x80 || exit 1\n"),
            "{bios}"
        );
        let unknown = r("unknown");
        assert!(
            unknown.contains("iseq ${platform} efi && exit 1 ||"),
            "{unknown}"
        );
        assert!(
            unknown.contains("sanboot --no-describe --drive 0x80"),
            "{unknown}"
        );
        for s in [&efi, &bios, &unknown] {
            assert!(
                !s.lines().any(|l| l.trim() == "exit"),
                "never a bare exit: {s}"
            );
        }
    }

    #[test]
    fn an_operator_environment_loads_its_kernel_and_initrds_in_order() {
        let t = Templates::new();
        let initrd = |name: &str| {
            minijinja::Value::from_pairs([
                ("name", minijinja::Value::from(name)),
                (
                    "url",
                    minijinja::Value::from(format!("http://h/artifacts/x/{name}")),
                ),
            ])
        };
        let s = t
            .render(
                "env",
                context! {
                    env => "debian-installer",
                    mac => "52:54:00:12:34:56",
                    machine => "m1",
                    kernel_url => "http://h/artifacts/k/linux",
                    initrds => vec![initrd("initrd.gz"), initrd("firmware.cpio.gz")],
                    kernel_args => "auto=true priority=critical",
                },
                RETRY,
            )
            .unwrap();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "#!ipxe");
        let kernel = lines.iter().position(|l| l.starts_with("kernel ")).unwrap();
        assert_eq!(
            &lines[kernel..kernel + 4],
            [
                "kernel http://h/artifacts/k/linux initrd=initrd.gz initrd=firmware.cpio.gz auto=true priority=critical || goto failed",
                "initrd http://h/artifacts/x/initrd.gz || goto failed",
                "initrd http://h/artifacts/x/firmware.cpio.gz || goto failed",
                "boot || goto failed",
            ]
        );
        // A failure retries this script, never /boot.ipxe (the run may have moved on).
        assert!(s.ends_with("goto retry\n"), "{s}");
        assert!(!s.contains("chain"), "{s}");
    }

    #[test]
    fn entry_chains_with_the_ipxe_variables() {
        let t = Templates::new();
        let s = t
            .render("entry", context! { base_url => "http://h:8080" }, RETRY)
            .unwrap();
        assert!(s.starts_with("#!ipxe\n"));
        assert!(s.contains("chain --replace http://h:8080/boot/machine.ipxe?mac=${mac:hexhyp}&uuid=${uuid}&serial=${serial:uristring}&buildarch=${buildarch:uristring}&platform=${platform:uristring} || goto failed"), "{s}");
    }

    #[test]
    fn unsafe_text_is_neutralised() {
        assert_eq!(ipxe_safe("a ${x} || b\n#c", 100), "a __x_ __ b__c");
        assert_eq!(ipxe_safe("abcdef", 3), "abc");
    }
}
