//! A network namespace made for one test: its bridge and tap devices, commands run inside it,
//! and threads that enter it (so test code can talk to servers there). Deleted on drop.

use std::future::Future;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A namespace named `PREFIX-PID-N`, deleted (with its taps) when dropped.
pub struct Netns {
    name: String,
    taps: Mutex<Vec<String>>,
}

/// Run a command to completion; an error carries its stderr.
pub fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Netns {
    /// Make a fresh namespace with loopback up. The name holds our PID and a counter, so
    /// parallel tests and concurrent test runs never collide.
    pub fn create(prefix: &str) -> Result<Netns> {
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name]))
            .context("creating a network namespace (needs root)")?;
        let ns = Netns {
            name,
            taps: Mutex::new(Vec::new()),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name (as `ip netns` knows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS…`.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`, which execs it:
    /// the child's PID is the program's own, so killing it kills exactly that program).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// A bridge with an address, up. STP stays off, so ports forward as soon as they are up.
    pub fn add_bridge(&self, name: &str, cidr: &str) -> Result<()> {
        self.ip(&["link", "add", name, "type", "bridge"])?;
        self.ip(&["addr", "add", cidr, "dev", name])?;
        self.ip(&["link", "set", name, "up"])
    }

    /// A persistent tap device enslaved to `bridge`, up; QEMU attaches to it by name.
    pub fn add_tap(&self, tap: &str, bridge: &str) -> Result<()> {
        self.ip(&["tuntap", "add", "dev", tap, "mode", "tap"])?;
        self.taps.lock().expect("taps").push(tap.to_string());
        self.ip(&["link", "set", tap, "master", bridge])?;
        self.ip(&["link", "set", tap, "up"])
    }

    /// A tap name not used yet in this namespace (`tap0`, `tap1`, …).
    pub fn next_tap_name(&self) -> String {
        format!("tap{}", self.taps.lock().expect("taps").len())
    }

    /// Run async `f` on a fresh thread that has entered this namespace, on a current-thread
    /// tokio runtime: every socket it opens lives in the namespace, so it can reach servers
    /// listening there without any route from the host.
    pub fn block_on<T, Fut, F>(&self, f: F) -> Result<T>
    where
        T: Send,
        Fut: Future<Output = T>,
        F: FnOnce() -> Fut + Send,
    {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(move || -> Result<T> {
                let fd = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
                // setns changes only this thread's namespace; threads it spawns inherit it.
                nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("entering {path}"))?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("tokio runtime")?;
                Ok(rt.block_on(f()))
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread inside {} panicked", self.name))?
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Taps first (persistent taps are otherwise left to the kernel's namespace teardown),
        // then the namespace with the bridge. Our processes inside are gone by now.
        for tap in self.taps.lock().map(|t| t.clone()).unwrap_or_default() {
            let _ = self.ip(&["link", "del", &tap]);
        }
        if let Err(e) = run(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!("rack: could not delete namespace {}: {e:#}", self.name);
        }
    }
}
