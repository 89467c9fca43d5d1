//! Another DHCP server on the rack's bridge: dnsmasq, for tests where Anneal runs beside an
//! existing DHCP server (proxy mode). Only what the caller asks for: no DNS, no config file.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use tempfile::TempDir;

use super::{wait, Rack};

/// A running dnsmasq, killed (by PID) when dropped; borrows its rack.
pub struct Dnsmasq<'r> {
    child: Child,
    _dir: TempDir,
    _rack: &'r Rack,
    /// dnsmasq's log (`--log-dhcp` in the foreground).
    pub log: PathBuf,
    /// Its lease file.
    pub leases: PathBuf,
}

impl<'r> Dnsmasq<'r> {
    /// Start `dnsmasq` inside the rack's namespace with `args` after a neutral base: foreground,
    /// logging DHCP to its log, DNS off, no `/etc` config, lease file in a temp dir, running
    /// as root (no user switch inside a test). E.g. `["--interface=br0", "--bind-interfaces",
    /// "--dhcp-range=10.55.0.50,10.55.0.90,255.255.255.0,10m"]`.
    pub fn start(rack: &'r Rack, args: &[&str]) -> Result<Dnsmasq<'r>> {
        let dir = tempfile::tempdir().context("temp dir for dnsmasq")?;
        let log = dir.path().join("dnsmasq.log");
        let leases = dir.path().join("dnsmasq.leases");
        let mut child = rack
            .netns
            .command("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--log-facility=-",
                "--log-dhcp",
                "--conf-file=/dev/null",
                "--port=0",
                "--no-resolv",
                "--no-hosts",
                "--user=root",
                "--group=root",
                "--pid-file",
            ])
            .arg(format!("--dhcp-leasefile={}", leases.display()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("spawning dnsmasq")?;
        let started = wait::until("dnsmasq to start", wait::START, || {
            if wait::read_lossy(&log).contains("started, version") {
                return Some(Ok(()));
            }
            match child.try_wait() {
                Ok(Some(status)) => Some(Err(anyhow!(
                    "dnsmasq exited ({status}): {}",
                    wait::read_lossy(&log)
                ))),
                _ => None,
            }
        });
        let dnsmasq = Dnsmasq {
            child,
            _dir: dir,
            _rack: rack,
            log,
            leases,
        };
        started.and_then(|r| r)?;
        Ok(dnsmasq)
    }

    /// dnsmasq's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        wait::read_lossy(&self.log)
    }

    /// Wait for a log line containing `needle`; returns it.
    pub fn wait_log(&self, needle: &str, deadline: Duration) -> Result<String> {
        wait::until(&format!("`{needle}` in dnsmasq's log"), deadline, || {
            self.log_text()
                .lines()
                .find(|l| l.contains(needle))
                .map(str::to_string)
        })
        .with_context(|| wait::tail(&self.log_text(), 40))
    }
}

impl Drop for Dnsmasq<'_> {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
