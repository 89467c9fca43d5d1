//! The virtual rack: real firmware network-booting from a real `anneal serve`, all inside a
//! network namespace the test makes and removes.
//!
//! ```text
//!  netns anneal-rack-PID-N ─┬─ br0 10.55.0.1/24 ── anneal serve (DHCP, TFTP, HTTP, API)
//!                           │                     (optionally dnsmasq, other addresses)
//!                           ├─ tap0 ── QEMU machine (SeaBIOS or OVMF, e1000 or virtio-net)
//!                           └─ tap1 ── QEMU machine …
//! ```
//!
//! One concern per module:
//! - [`system`]: what a system test needs (root, QEMU, OVMF, iPXE, …); skip, or fail under
//!   `ANNEAL_REQUIRE_SYSTEM_TESTS=1`.
//! - [`netns`]: the namespace, its bridge and taps, commands and threads inside it.
//! - [`anneal`]: the real `anneal` binary inside the namespace with any TOML config, its log,
//!   admin token, CA fingerprint, store, metrics and enrollment through the agent API; `kill -9`
//!   and a restart on the same data.
//! - [`dnsmasq`]: another DHCP server on the same bridge (proxy-mode tests).
//! - [`machine`]: a QEMU machine (firmware, NIC, MAC, SMBIOS identity, disks, serial log);
//!   [`qmp`] for its power control; [`slots`] caps how many run at once.
//! - [`disk`]: bootable disk images that print a marker on the serial console.
//! - [`image`]: where the discovery image (`scripts/build-image`) is.
//! - [`forward`]: a loopback port on the host that leads to a server in the rack (the demo).
//! - [`wait`]: polling with deadlines, log tails for failure messages.
//!
//! Everything is torn down by `Drop` (also when a test panics): machines first, then servers,
//! then the namespace — declare them in that reverse order (rack first) so locals drop right.
//! Only processes started here are ever killed, by their PID.
//!
//! ```no_run
//! use anneal_tests::rack::{self, Anneal, Machine, MachineSpec, Rack};
//! if !rack::system::ready("example", &rack::system::PXE) { return; }
//! let rack = Rack::new().unwrap();
//! let server = Anneal::start(&rack, &rack.full_dhcp_config()).unwrap();
//! let vm = Machine::start(&rack, MachineSpec::bios("52:54:00:00:00:01")).unwrap();
//! server.wait_log("script served", |l| l.contains("boot script served"), rack::wait::BOOT).unwrap();
//! ```

pub mod anneal;
pub mod binaries;
pub mod disk;
pub mod dnsmasq;
pub mod forward;
pub mod image;
pub mod machine;
pub mod netns;
pub mod qmp;
pub mod slots;
pub mod system;
pub mod wait;

use std::net::Ipv4Addr;

use anyhow::Result;

pub use anneal::Anneal;
pub use dnsmasq::Dnsmasq;
pub use machine::{DiskBus, Firmware, Machine, MachineSpec, NicModel, Smbios};
pub use netns::Netns;

/// The rack's bridge inside its namespace.
pub const BRIDGE: &str = "br0";

/// A namespace with one bridge (`br0`, [`Rack::server_ip`]/24) for machines and servers.
pub struct Rack {
    /// The namespace (deleted when the rack drops).
    pub netns: Netns,
    /// The subnet's first three octets; addresses are `prefix.N`.
    prefix: [u8; 3],
}

impl Rack {
    /// A new namespace with `br0` up at 10.55.0.1/24 and loopback up. The namespace is private,
    /// so every rack can use the same subnet.
    pub fn new() -> Result<Rack> {
        let netns = Netns::create("anneal-rack")?;
        netns.add_bridge(BRIDGE, &format!("{}/24", Ipv4Addr::new(10, 55, 0, 1)))?;
        Ok(Rack {
            netns,
            prefix: [10, 55, 0],
        })
    }

    /// `prefix.host` on the rack's subnet.
    pub fn ip(&self, host: u8) -> Ipv4Addr {
        let [a, b, c] = self.prefix;
        Ipv4Addr::new(a, b, c, host)
    }

    /// The bridge's own address, where `anneal serve` listens by default (`.1`).
    pub fn server_ip(&self) -> Ipv4Addr {
        self.ip(1)
    }

    /// The subnet in CIDR notation.
    pub fn subnet(&self) -> String {
        format!("{}/24", self.ip(0))
    }

    /// One more address on the bridge (e.g. a second server beside another DHCP server).
    pub fn add_address(&self, host: u8) -> Result<Ipv4Addr> {
        let ip = self.ip(host);
        self.netns
            .ip(&["addr", "add", &format!("{ip}/24"), "dev", BRIDGE])?;
        Ok(ip)
    }

    /// `anneal serve` configuration without DHCP: API, agent API, plain HTTP on port 8080 and
    /// TFTP with Debian's iPXE, all listening on every address of the namespace. A starting
    /// point to append sections to (e.g. a proxy-mode `[dhcp]`). `{data_dir}` is filled in by
    /// [`Anneal::start`].
    pub fn base_config(&self) -> String {
        format!(
            "data_dir = \"{{data_dir}}\"\n\
             api_listen = \"0.0.0.0:8443\"\n\
             agent_listen = \"0.0.0.0:8444\"\n\
             http_listen = \"0.0.0.0:8080\"\n\
             tftp_listen = \"0.0.0.0:69\"\n\
             ipxe_dir = \"{ipxe}\"\n\
             advertise = [\"{server}\"]\n",
            ipxe = system::IPXE_DIR,
            server = self.server_ip(),
        )
    }

    /// [`Rack::base_config`] plus full DHCP on the bridge: addresses .100–.199, boot URLs on
    /// port 8080.
    pub fn full_dhcp_config(&self) -> String {
        format!(
            "{base}\
             [dhcp]\n\
             http_port = 8080\n\
             [[dhcp.subnets]]\n\
             interface = \"{BRIDGE}\"\n\
             subnet = \"{subnet}\"\n\
             range = [\"{first}\", \"{last}\"]\n\
             lease_secs = 600\n",
            base = self.base_config(),
            subnet = self.subnet(),
            first = self.ip(100),
            last = self.ip(199),
        )
    }
}
