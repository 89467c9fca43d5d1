//! Bootable disk images that prove a machine reached its local disk: each prints a marker on
//! the serial console (COM1). Built without root or mounts.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use super::netns::run;

/// Real-mode boot code at 0x7C00: print the NUL-terminated string that follows to COM1
/// (port 0x3F8; QEMU's UART needs no set-up), then halt for good.
///
/// ```text
/// 31 C0     xor ax, ax        ; DS = 0: the BIOS may enter with any segment
/// 8E D8     mov ds, ax
/// FC        cld
/// BE 17 7C  mov si, 0x7C17    ; the string, right after this code
/// BA F8 03  mov dx, 0x3F8
/// AC        lodsb             ; loop:
/// 84 C0     test al, al
/// 74 03     jz done
/// EE        out dx, al
/// EB F8     jmp loop
/// FA        cli               ; done:
/// F4        hlt
/// EB FC     jmp done
/// ```
const MBR_CODE: [u8; 23] = [
    0x31, 0xC0, 0x8E, 0xD8, 0xFC, 0xBE, 0x17, 0x7C, 0xBA, 0xF8, 0x03, 0xAC, 0x84, 0xC0, 0x74, 0x03,
    0xEE, 0xEB, 0xF8, 0xFA, 0xF4, 0xEB, 0xFC,
];

fn check_marker(marker: &str) -> Result<()> {
    ensure!(
        !marker.is_empty()
            && marker.len() <= 64
            && marker
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "marker must be 1-64 characters of [A-Za-z0-9_-]: {marker:?}"
    );
    Ok(())
}

/// A 1 MiB raw disk whose MBR prints `marker` (on a line of its own) to COM1 and halts.
pub fn bios_marker_disk(path: &Path, marker: &str) -> Result<()> {
    check_marker(marker)?;
    let mut img = vec![0u8; 1024 * 1024];
    img[..MBR_CODE.len()].copy_from_slice(&MBR_CODE);
    let text = format!("\r\n{marker}\r\n\0");
    let start = MBR_CODE.len();
    // Stays clear of the partition table (446..510) even at the longest marker.
    img[start..start + text.len()].copy_from_slice(text.as_bytes());
    img[510] = 0x55;
    img[511] = 0xAA;
    std::fs::write(path, &img).with_context(|| format!("writing {}", path.display()))
}

/// An 8 MiB FAT image (no partition table; OVMF boots such a "superfloppy" as removable
/// media) holding `\EFI\BOOT\BOOTX64.EFI`: a standalone GRUB whose embedded `grub.cfg`
/// prints `marker` on the serial console and then waits. Needs `grub-mkstandalone`
/// (grub-efi-amd64-bin) and mtools. `work` holds the intermediate files.
pub fn uefi_marker_disk(path: &Path, marker: &str, work: &Path) -> Result<()> {
    check_marker(marker)?;
    let cfg = work.join("grub.cfg");
    std::fs::write(
        &cfg,
        format!(
            "serial --unit=0 --speed=115200\n\
             terminal_output serial\n\
             echo \"{marker}\"\n\
             sleep 3600\n"
        ),
    )?;
    let efi = work.join("BOOTX64.EFI");
    // Only the modules the config needs, no fonts, locales or themes: ~0.5 MiB instead of ~7.
    run(Command::new("grub-mkstandalone")
        .args(["-O", "x86_64-efi", "-o"])
        .arg(&efi)
        .args([
            "--install-modules=normal configfile echo serial terminal sleep",
            "--locales=",
            "--fonts=",
            "--themes=",
        ])
        .arg(format!("boot/grub/grub.cfg={}", cfg.display())))
    .context("grub-mkstandalone")?;
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.set_len(8 * 1024 * 1024)?;
    drop(f);
    let img = path.display().to_string();
    run(Command::new("mformat").args(["-i", &img, "::"])).context("mformat")?;
    run(Command::new("mmd").args(["-i", &img, "::/EFI", "::/EFI/BOOT"])).context("mmd")?;
    run(Command::new("mcopy")
        .args(["-i", &img])
        .arg(&efi)
        .arg("::/EFI/BOOT/BOOTX64.EFI"))
    .context("mcopy")?;
    if std::fs::metadata(path)?.len() != 8 * 1024 * 1024 {
        bail!("{img}: mtools changed the image size");
    }
    Ok(())
}
