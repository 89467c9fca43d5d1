//! Which boot file a network-booting client gets, from what it says about itself. Shared by
//! full and proxy mode.
//!
//! - already iPXE (option 77 user class `iPXE`, or option 175 present): the HTTP URL of its
//!   script, so iPXE never chainloads itself in a loop (a per-machine boot file does not
//!   change this: per-machine scripts come from the boot service);
//! - UEFI HTTP boot (vendor class `HTTPClient`; arch 16 x64, 19 ARM64): an HTTP URL of the
//!   iPXE binary for its architecture;
//! - PXE firmware (vendor class `PXEClient` or option 93): by architecture, BIOS (0) →
//!   `undionly.kpxe`, UEFI x64 (7, 9) → `snponly.efi`, UEFI ARM64 (11) → `arm64_file` when one
//!   is configured (Debian's `ipxe` package has no ARM64 build, so by default none is), by TFTP
//!   from us; a per-machine boot file replaces the file for any architecture;
//! - anything else (an ordinary host, or an architecture we have no binary for): no boot file.

use std::net::Ipv4Addr;

/// Boot files by architecture, after per-subnet/per-scope overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootFiles {
    /// BIOS PXE (option 93 = 0).
    pub bios: String,
    /// UEFI x64 (option 93 = 7, 9; 16 for HTTP boot).
    pub uefi: String,
    /// UEFI ARM64 (option 93 = 11; 19 for HTTP boot); `None`: such clients get no answer.
    pub arm64: Option<String>,
}

/// What a client says about its boot firmware.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BootHints {
    /// Option 93 (first architecture listed).
    pub arch: Option<u16>,
    /// Option 60.
    pub vendor_class: Option<Vec<u8>>,
    /// Option 77.
    pub user_class: Option<Vec<u8>>,
    /// Option 175 present (iPXE's encapsulated options).
    pub ipxe_options: bool,
}

/// How the client boots on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boot {
    /// `file` / option 67: a TFTP file name or an HTTP URL.
    pub file: String,
    /// siaddr / option 66: the TFTP server.
    pub next_server: Ipv4Addr,
    /// Option 60 to send back (`PXEClient` / `HTTPClient`), when the client expects it.
    pub vendor_class: Option<&'static str>,
}

/// Option 93 values (RFC 4578 and the IANA registry) that we tell apart.
pub mod arch {
    /// x86 BIOS.
    pub const BIOS: u16 = 0;
    /// EFI x86-64 (7; 9 is the same, as EFI BC).
    pub const EFI_X64: u16 = 7;
    /// EFI BC (x86-64 in practice).
    pub const EFI_BC: u16 = 9;
    /// EFI ARM64.
    pub const EFI_ARM64: u16 = 11;
    /// EFI x86-64 HTTP boot.
    pub const EFI_X64_HTTP: u16 = 16;
    /// EFI ARM64 HTTP boot.
    pub const EFI_ARM64_HTTP: u16 = 19;
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

impl BootHints {
    /// The client is iPXE already.
    pub fn is_ipxe(&self) -> bool {
        self.ipxe_options
            || self
                .user_class
                .as_deref()
                .is_some_and(|u| contains(u, b"iPXE"))
    }

    fn vendor_starts(&self, prefix: &[u8]) -> bool {
        self.vendor_class
            .as_deref()
            .is_some_and(|v| v.starts_with(prefix))
    }

    /// The client sent option 60 starting with `PXEClient`.
    pub fn says_pxe_client(&self) -> bool {
        self.vendor_starts(b"PXEClient")
    }

    /// UEFI HTTP boot firmware.
    pub fn is_http_client(&self) -> bool {
        self.vendor_starts(b"HTTPClient")
            || matches!(self.arch, Some(arch::EFI_X64_HTTP | arch::EFI_ARM64_HTTP))
    }

    /// Any network-boot firmware.
    pub fn is_pxe(&self) -> bool {
        self.is_ipxe() || self.is_http_client() || self.says_pxe_client()
    }
}

/// The boot decision for a client whose server address on its side is `server`. `host_file`
/// is the per-machine boot file, if the client's MAC has one.
pub fn decide(
    hints: &BootHints,
    files: &BootFiles,
    http_port: u16,
    server: Ipv4Addr,
    host_file: Option<&str>,
) -> Option<Boot> {
    let http = |path: &str| {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!(
                "http://{server}:{http_port}/{}",
                path.trim_start_matches('/')
            )
        }
    };
    if hints.is_ipxe() {
        return Some(Boot {
            file: http("boot.ipxe"),
            next_server: server,
            vendor_class: None,
        });
    }
    if hints.is_http_client() {
        let file = match (host_file, hints.arch) {
            (Some(f), _) => f,
            (None, Some(arch::EFI_ARM64_HTTP)) => files.arm64.as_deref()?,
            // HTTPClient without option 93 is taken for x64, the common case.
            (None, Some(arch::EFI_X64_HTTP) | None) => &files.uefi,
            (None, Some(_)) => return None,
        };
        // The boot HTTP listener serves the TFTP tree (root + iPXE binaries) under `/ipxe/`.
        let file = if file.starts_with("http://") || file.starts_with("https://") {
            file.to_string()
        } else {
            http(&format!("ipxe/{}", file.trim_start_matches('/')))
        };
        return Some(Boot {
            file,
            next_server: server,
            vendor_class: Some("HTTPClient"),
        });
    }
    if !hints.is_pxe() && hints.arch.is_none() {
        return None;
    }
    let file = match (host_file, hints.arch.unwrap_or(arch::BIOS)) {
        (Some(f), _) => f.to_string(),
        (None, arch::BIOS) => files.bios.clone(),
        (None, arch::EFI_X64 | arch::EFI_BC) => files.uefi.clone(),
        (None, arch::EFI_ARM64) => files.arm64.clone()?,
        (None, _) => return None,
    };
    Some(Boot {
        file,
        next_server: server,
        vendor_class: hints.says_pxe_client().then_some("PXEClient"),
    })
}
