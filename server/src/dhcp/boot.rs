//! Which boot file a PXE client gets, from what it says about itself.
//!
//! - already iPXE (option 77 user class `iPXE`, or option 175 present): the HTTP URL of its
//!   script, so iPXE never chainloads itself in a loop;
//! - UEFI HTTP boot (vendor class `HTTPClient`, arch 16): an HTTP URL of the UEFI iPXE binary;
//! - PXE firmware (vendor class `PXEClient` or option 93): by architecture, BIOS (0) →
//!   `undionly.kpxe`, UEFI x64 (7, 9) → `snponly.efi` (configurable), by TFTP from us;
//! - anything else (an ordinary host, or an architecture we have no binary for): no boot file.

use std::net::Ipv4Addr;

use super::config::DhcpConfig;

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

    /// UEFI HTTP boot firmware.
    pub fn is_http_client(&self) -> bool {
        self.vendor_starts(b"HTTPClient") || self.arch == Some(16)
    }

    /// Any network-boot firmware.
    pub fn is_pxe(&self) -> bool {
        self.is_ipxe() || self.is_http_client() || self.vendor_starts(b"PXEClient")
    }
}

/// The boot decision for a client whose server address on its side is `server`.
pub fn decide(hints: &BootHints, cfg: &DhcpConfig, server: Ipv4Addr) -> Option<Boot> {
    let http = |path: &str| format!("http://{server}:{}/{path}", cfg.http_port);
    if hints.is_ipxe() {
        return Some(Boot {
            file: http("boot.ipxe"),
            next_server: server,
            vendor_class: None,
        });
    }
    if hints.is_http_client() {
        return Some(Boot {
            file: http(&cfg.uefi_file),
            next_server: server,
            vendor_class: Some("HTTPClient"),
        });
    }
    if !hints.is_pxe() && hints.arch.is_none() {
        return None;
    }
    let file = match hints.arch.unwrap_or(0) {
        0 => cfg.bios_file.clone(),
        7 | 9 => cfg.uefi_file.clone(),
        _ => return None,
    };
    Some(Boot {
        file,
        next_server: server,
        vendor_class: hints.vendor_starts(b"PXEClient").then_some("PXEClient"),
    })
}
