//! The running environment: boot mode, kernel, hostname, OS machine-id, agent version.

use anneal_shared::inventory::OsInfo;

use super::root::Root;
use super::CollectError;

/// Reads the boot mode, kernel release and hostname under the sysroot.
pub fn collect(root: &Root, agent_version: &str) -> Result<OsInfo, CollectError> {
    // The kernel creates /sys/firmware/efi only when booted through UEFI.
    let boot_mode = if root.exists("/sys/firmware/efi") {
        "uefi"
    } else {
        "legacy"
    };
    Ok(OsInfo {
        boot_mode: Some(boot_mode.to_string()),
        kernel: root.attr("/proc/sys/kernel/osrelease"),
        agent_version: Some(agent_version.to_string()).filter(|v| !v.is_empty()),
        hostname: root
            .attr("/proc/sys/kernel/hostname")
            .filter(|h| h != "(none)"),
        // An installed OS's stable id; systemd writes `uninitialized` before first boot.
        machine_id: root
            .attr("/etc/machine-id")
            .filter(|m| m.len() == 32 && m.chars().all(|c| c.is_ascii_hexdigit())),
    })
}
