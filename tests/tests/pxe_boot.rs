//! Real firmware network-boots from Anneal (full DHCP mode), in the virtual rack
//! (`anneal_tests::rack`): QEMU machines on a bridge inside a network namespace with the real
//! `anneal serve` binary.
//!
//! - A BIOS machine (SeaBIOS, e1000 with QEMU's iPXE ROM) gets a lease and its script.
//! - A UEFI machine (OVMF, virtio-net without ROM) runs the firmware's own PXE client: DHCP
//!   with option 93 = 7, `snponly.efi` by TFTP from Anneal, then iPXE fetches its script.
//! - A known machine, BIOS and UEFI, gets the `local` script and really boots its disk: a
//!   marker printed by the disk's boot code shows up on the serial console.
//!
//! Needs root, QEMU, OVMF and iPXE (and mtools + GRUB for the UEFI disk): skipped with the
//! reason otherwise, failed instead under `ANNEAL_REQUIRE_SYSTEM_TESTS=1`. At most two
//! machines run at once across these tests (the rack's slots).

use anneal_server::store::LeaseState;
use anneal_shared::protocol::{IdentityHints, Nic};
use anneal_tests::rack::system::{rack_test, Need};
use anneal_tests::rack::{disk, wait, Anneal, Machine, MachineSpec, Rack, Smbios};
use anyhow::{ensure, Context, Result};

/// An SMBIOS identity for test machine `n`, and the same as identity evidence an agent sends.
fn identity(n: u32, mac: &str) -> (Smbios, IdentityHints) {
    let smbios = Smbios {
        manufacturer: "Anneal Rack".into(),
        product: "Virtual Server".into(),
        serial: format!("RACK-SRV-{n:04}"),
        uuid: format!("8a1c0de0-5e7e-4b1d-9a55-{n:012x}"),
        chassis_serial: format!("RACK-CHS-{n:04}"),
    };
    let hints = IdentityHints {
        system_uuid: Some(smbios.uuid.clone()),
        system_serial: Some(smbios.serial.clone()),
        chassis_serial: Some(smbios.chassis_serial.clone()),
        baseboard_serial: None,
        manufacturer: Some(smbios.manufacturer.clone()),
        product: Some(smbios.product.clone()),
        os_machine_id: None,
        macs: vec![Nic {
            mac: mac.into(),
            bus: Some("pci".into()),
        }],
    };
    (smbios, hints)
}

/// The bound lease of `mac` in the server's store.
fn bound_lease(server: &Anneal, rack: &Rack, mac: &str) -> Result<std::net::Ipv4Addr> {
    let leases = server.leases()?;
    let lease = leases
        .iter()
        .find(|l| l.mac == mac)
        .with_context(|| format!("no lease for {mac}: {leases:?}"))?;
    ensure!(
        lease.state == LeaseState::Bound,
        "lease not bound: {lease:?}"
    );
    let last = lease.ip.octets()[3];
    ensure!(
        lease.ip.octets()[..3] == rack.server_ip().octets()[..3] && (100..=199).contains(&last),
        "address outside the configured range: {lease:?}"
    );
    Ok(lease.ip)
}

#[test]
fn bios_machine_gets_a_lease_and_its_script() {
    rack_test("bios_machine_gets_a_lease_and_its_script", &[], || {
        let rack = Rack::new()?;
        let server = Anneal::start(&rack, &rack.full_dhcp_config())?;
        // An unknown machine gets the discovery script only if an image is there to boot; a
        // stand-in is enough: the machine is stopped as soon as the script is served.
        server.put_discovery_image(b"stand-in kernel", b"stand-in initrd")?;
        let mac = "52:54:00:a0:00:01";
        let vm = Machine::start(&rack, MachineSpec::bios(mac))?;
        let served = server
            .wait_script_for(mac, wait::BOOT)
            .with_context(|| vm.tails())?;
        ensure!(
            served.platform == "pcbios" && served.env == "discovery" && served.machine == "unknown",
            "unexpected script: {}\n{}",
            served.line,
            vm.tails()
        );
        let ip = bound_lease(&server, &rack, mac)?;
        // The per-machine script is only ever reached through the entry script.
        let metrics = server.metrics()?;
        ensure!(
            metrics
                .lines()
                .any(|l| l.starts_with("anneal_boot_scripts_total{env=\"entry\"}")),
            "entry script not counted:\n{metrics}"
        );
        // Power control through QMP: a reset starts the firmware again.
        vm.reset()?;
        wait::until("SeaBIOS again after a reset", wait::BOOT, || {
            (vm.serial_text().matches("SeaBIOS (version").count() >= 2).then_some(())
        })
        .with_context(|| vm.tails())?;
        eprintln!("bios: lease {ip}, {}", served.line);
        vm.quit()?;
        Ok(())
    });
}

#[test]
fn uefi_firmware_pxe_loads_ipxe_by_tftp_then_its_script() {
    rack_test(
        "uefi_firmware_pxe_loads_ipxe_by_tftp_then_its_script",
        &[],
        || {
            let rack = Rack::new()?;
            let server = Anneal::start(&rack, &rack.full_dhcp_config())?;
            server.put_discovery_image(b"stand-in kernel", b"stand-in initrd")?;
            let mac = "52:54:00:b0:00:01";
            let vm = Machine::start(&rack, MachineSpec::uefi(mac))?;
            let served = server
                .wait_script_for(mac, wait::BOOT)
                .with_context(|| vm.tails())?;
            ensure!(
                served.platform == "efi" && served.env == "discovery",
                "unexpected script: {}\n{}",
                served.line,
                vm.tails()
            );
            let ip = bound_lease(&server, &rack, mac)?;
            // OVMF's PXE client fetched iPXE from us, by TFTP, from its leased address.
            let tftp = server.wait_log(
                "the TFTP transfer of snponly.efi",
                |l| l.contains("TFTP: transfer complete") && l.contains("snponly.efi"),
                wait::START,
            )?;
            ensure!(
                tftp.contains(&format!("client={ip}:")),
                "TFTP transfer from another address than the lease {ip}: {tftp}"
            );
            eprintln!("uefi: lease {ip}, {tftp}\n{}", served.line);
            vm.quit()?;
            Ok(())
        },
    );
}

#[test]
fn known_bios_machine_boots_its_local_disk() {
    rack_test("known_bios_machine_boots_its_local_disk", &[], || {
        let rack = Rack::new()?;
        let server = Anneal::start(&rack, &rack.full_dhcp_config())?;
        let mac = "52:54:00:c0:00:01";
        let (smbios, hints) = identity(1, mac);
        let machine = server.enroll(hints, "rack-bios-boot-0")?;
        let work = tempfile::tempdir()?;
        let image = work.path().join("disk.img");
        let marker = "ANNEAL-LOCAL-DISK-BIOS";
        disk::bios_marker_disk(&image, marker)?;
        let mut vm = Machine::start(
            &rack,
            MachineSpec::bios(mac)
                .with_smbios(smbios)
                .with_disk(&image, "RACK-DISK-0001"),
        )?;
        let served = server
            .wait_script_for(mac, wait::BOOT)
            .with_context(|| vm.tails())?;
        ensure!(
            served.env == "local" && served.machine == machine && served.platform == "pcbios",
            "expected the local script for {machine}: {}\n{}",
            served.line,
            vm.tails()
        );
        vm.wait_serial(marker, wait::BOOT)?;
        // SeaBIOS mirrors iPXE's console to the serial port: the script ran, and its `sanboot`
        // booted the disk (rather than the BIOS falling through to it after `exit 1`).
        let console = vm.serial_text();
        for want in ["booting from the local disk", "Booting from SAN device 0x8"] {
            ensure!(
                console.contains(want),
                "no `{want}` on the console\n{}",
                vm.tails()
            );
        }
        eprintln!("bios local: {}", served.line);
        vm.quit()?;
        Ok(())
    });
}

#[test]
fn known_uefi_machine_boots_its_local_disk() {
    rack_test(
        "known_uefi_machine_boots_its_local_disk",
        &[Need::Mtools, Need::GrubEfi],
        || {
            let rack = Rack::new()?;
            let server = Anneal::start(&rack, &rack.full_dhcp_config())?;
            let mac = "52:54:00:d0:00:01";
            let (smbios, hints) = identity(2, mac);
            let machine = server.enroll(hints, "rack-uefi-boot-0")?;
            let work = tempfile::tempdir()?;
            let image = work.path().join("esp.img");
            let marker = "ANNEAL-LOCAL-DISK-UEFI";
            disk::uefi_marker_disk(&image, marker, work.path())?;
            let mut vm = Machine::start(
                &rack,
                MachineSpec::uefi(mac)
                    .with_smbios(smbios)
                    .with_disk(&image, "RACK-DISK-0002"),
            )?;
            let served = server
                .wait_script_for(mac, wait::BOOT)
                .with_context(|| vm.tails())?;
            ensure!(
                served.env == "local" && served.machine == machine && served.platform == "efi",
                "expected the local script for {machine}: {}\n{}",
                served.line,
                vm.tails()
            );
            vm.wait_serial(marker, wait::BOOT)?;
            // The script's `exit 1` handed back to OVMF, which went on down its boot order:
            // the NIC's other entries (HTTPv4 here), then the disk.
            let console = vm.serial_text();
            ensure!(
                console.contains("booting from the local disk"),
                "the local script did not run\n{}",
                vm.tails()
            );
            let path: Vec<&str> = console.lines().filter(|l| l.contains("BdsDxe:")).collect();
            eprintln!("uefi local: {}\n{}", served.line, path.join("\n"));
            vm.quit()?;
            Ok(())
        },
    );
}
