//! Real firmware network-boots from Anneal in **proxy mode**, beside another DHCP server: in
//! the virtual rack (`anneal_tests::rack`), dnsmasq hands out the addresses and nothing else;
//! `anneal serve` has only a `[[dhcp.proxy]]` entry for the bridge and supplies the boot
//! information. Both run on the rack's server host (`.1`), the harder case for the firmware: the
//! two offers carry the same server identifier, and Anneal must leave the client's REQUEST for
//! its address to dnsmasq.
//!
//! - A BIOS machine (SeaBIOS, e1000 with QEMU's iPXE ROM): iPXE merges dnsmasq's offer (the
//!   address) with Anneal's proxy offer (`PXEClient`, the script URL) and fetches its script.
//! - A UEFI machine (OVMF, virtio-net without ROM) runs the firmware's own PXE client: its
//!   lease from dnsmasq, the boot file from Anneal's proxy offer and port 4011, `snponly.efi`
//!   by TFTP from Anneal, then iPXE (again through proxyDHCP) fetches its script.
//!
//! Either way the lease must be dnsmasq's, and Anneal must have handed out no address.
//! Needs root, QEMU, OVMF, iPXE and dnsmasq: skipped with the reason otherwise, failed instead
//! under `ANNEAL_REQUIRE_SYSTEM_TESTS=1`. At most two machines run at once (the rack's slots).

use anneal_tests::rack::system::{rack_test, Need};
use anneal_tests::rack::{wait, Anneal, Dnsmasq, Machine, MachineSpec, Rack, BRIDGE};
use anyhow::{ensure, Context, Result};

/// The rack with dnsmasq handing out .50–.90 (addresses only: no boot options) and Anneal in
/// proxy mode on the same bridge and host.
fn proxy_rack(rack: &Rack) -> Result<(Dnsmasq<'_>, Anneal<'_>)> {
    let range = format!(
        "--dhcp-range={},{},255.255.255.0,10m",
        rack.ip(50),
        rack.ip(90)
    );
    let dnsmasq = Dnsmasq::start(
        rack,
        &[
            &format!("--interface={BRIDGE}"),
            "--bind-interfaces",
            &range,
        ],
    )?;
    let config = format!(
        "{base}[dhcp]\nhttp_port = 8080\n[[dhcp.proxy]]\ninterface = \"{BRIDGE}\"\nsubnet = \"{subnet}\"\n",
        base = rack.base_config(),
        subnet = rack.subnet(),
    );
    let server = Anneal::start(rack, &config)?;
    server.put_discovery_image(b"stand-in kernel", b"stand-in initrd")?;
    Ok((dnsmasq, server))
}

/// The address dnsmasq leased to `mac` (from its lease file), inside its range.
fn dnsmasq_lease(rack: &Rack, dnsmasq: &Dnsmasq, mac: &str) -> Result<std::net::Ipv4Addr> {
    let leases = std::fs::read_to_string(&dnsmasq.leases).unwrap_or_default();
    let ip: std::net::Ipv4Addr = leases
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(mac))
        .and_then(|l| l.split_whitespace().nth(2))
        .with_context(|| format!("dnsmasq leased nothing to {mac}:\n{leases}"))?
        .parse()?;
    let last = ip.octets()[3];
    ensure!(
        (50..=90).contains(&last) && ip.octets()[..3] == rack.server_ip().octets()[..3],
        "lease {ip} outside dnsmasq's range"
    );
    Ok(ip)
}

/// Anneal in proxy mode answered, handed out no address and stored no lease.
fn anneal_gave_no_address(server: &Anneal) -> Result<()> {
    let leases = server.leases()?;
    ensure!(leases.is_empty(), "proxy mode stored leases: {leases:?}");
    let metrics = server.metrics()?;
    ensure!(
        metrics
            .lines()
            .any(|l| l.starts_with("anneal_dhcp_sent_total") && l.contains("offer")),
        "no proxy offer counted:\n{metrics}"
    );
    Ok(())
}

#[test]
fn bios_machine_boots_beside_dnsmasq() {
    rack_test(
        "bios_machine_boots_beside_dnsmasq",
        &[Need::Dnsmasq],
        || {
            let rack = Rack::new()?;
            let (dnsmasq, server) = proxy_rack(&rack)?;
            let mac = "52:54:00:e0:00:01";
            let vm = Machine::start(&rack, MachineSpec::bios(mac))?;
            let served = server
                .wait_script_for(mac, wait::BOOT)
                .with_context(|| format!("{}\ndnsmasq:\n{}", vm.tails(), dnsmasq.log_text()))?;
            ensure!(
                served.platform == "pcbios" && served.env == "discovery",
                "unexpected script: {}\n{}",
                served.line,
                vm.tails()
            );
            let ip = dnsmasq_lease(&rack, &dnsmasq, mac)?;
            anneal_gave_no_address(&server)?;
            eprintln!("bios proxy: lease {ip} from dnsmasq, {}", served.line);
            vm.quit()?;
            Ok(())
        },
    );
}

#[test]
fn uefi_firmware_pxe_boots_beside_dnsmasq() {
    rack_test(
        "uefi_firmware_pxe_boots_beside_dnsmasq",
        &[Need::Dnsmasq],
        || {
            let rack = Rack::new()?;
            let (dnsmasq, server) = proxy_rack(&rack)?;
            let mac = "52:54:00:f0:00:01";
            let vm = Machine::start(&rack, MachineSpec::uefi(mac))?;
            let served = server
                .wait_script_for(mac, wait::BOOT)
                .with_context(|| format!("{}\ndnsmasq:\n{}", vm.tails(), dnsmasq.log_text()))?;
            ensure!(
                served.platform == "efi" && served.env == "discovery",
                "unexpected script: {}\n{}",
                served.line,
                vm.tails()
            );
            let ip = dnsmasq_lease(&rack, &dnsmasq, mac)?;
            // OVMF took iPXE from Anneal's TFTP server, from the address dnsmasq gave it.
            let tftp = server.wait_log(
                "the TFTP transfer of snponly.efi",
                |l| l.contains("TFTP: transfer complete") && l.contains("snponly.efi"),
                wait::START,
            )?;
            ensure!(
                tftp.contains(&format!("client={ip}:")),
                "TFTP transfer from another address than dnsmasq's lease {ip}: {tftp}"
            );
            anneal_gave_no_address(&server)?;
            eprintln!(
                "uefi proxy: lease {ip} from dnsmasq, {tftp}\n{}",
                served.line
            );
            vm.quit()?;
            Ok(())
        },
    );
}
