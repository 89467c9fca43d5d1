//! The agent's main loop: learn the clock, enroll (or resume an enrollment saved earlier in
//! this boot), report the inventory, heartbeat and follow the server's directives; every
//! failure is logged with its reason and retried with jittered backoff, never fatal unless
//! retrying cannot help (a malformed CA fingerprint, no token when one is needed) or `once`
//! asks for one round.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anneal_shared::protocol::Directive;
use anyhow::{Context, Result};
use rand::Rng;

use crate::client::{ClientError, Enroller, Session};
use crate::clock::{Clock, ClockSetter};
use crate::inventory::{self, CollectOptions};
use crate::state::{Loaded, StateDir};
use crate::status::{Phase, Status};

/// Everything `anneal-agent run` needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// `https://host:port` of the enrollment endpoint.
    pub url: String,
    /// `sha256:HEX` of the server's CA.
    pub ca_fingerprint: String,
    /// Bootstrap token; may be empty when a saved enrollment of this boot is expected
    /// ([`RunOptions::state_dir`]); enrolling without one is a configuration error.
    pub token: String,
    /// Where to read the machine from.
    pub sysroot: PathBuf,
    /// Run smartctl/ipmitool when present.
    pub run_tools: bool,
    /// LLDP listen time per link.
    pub lldp_listen: Duration,
    /// Kernel boot id (read from the sysroot when None).
    pub boot_id: Option<String>,
    /// Enroll, report, heartbeat once, then exit.
    pub once: bool,
}

/// Exponential backoff with ±25 % jitter, so a rack that lost the server does not come back
/// in lockstep.
#[derive(Debug)]
pub struct Backoff {
    attempt: u32,
    max: Duration,
}

impl Backoff {
    /// Starts at 1 s, doubles to `max`.
    pub fn new(max: Duration) -> Backoff {
        Backoff { attempt: 0, max }
    }
    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let base = Duration::from_secs(1u64 << self.attempt.min(16)).min(self.max);
        self.attempt += 1;
        jitter(base)
    }
    /// Delays handed out since the last reset (the number of failed attempts so far).
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
    /// Start over after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// `d` ± 25 %.
pub fn jitter(d: Duration) -> Duration {
    let f: f64 = rand::thread_rng().gen_range(0.75..1.25);
    d.mul_f64(f)
}

fn read_boot_id(cfg: &RunConfig) -> String {
    if let Some(b) = &cfg.boot_id {
        return b.clone();
    }
    std::fs::read_to_string(cfg.sysroot.join("proc/sys/kernel/random/boot_id"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| uuid::Uuid::new_v4().to_string())
}

async fn collect(cfg: &RunConfig) -> anneal_shared::inventory::Inventory {
    inventory::collect(&CollectOptions {
        sysroot: cfg.sysroot.clone(),
        run_tools: cfg.run_tools,
        lldp_listen: cfg.lldp_listen,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    })
    .await
}

/// The longest wait between retries (before ±25 % jitter).
pub const MAX_BACKOFF: Duration = Duration::from_secs(40);

/// What the discovery image or an installed OS adds to `anneal-agent run` (all off by default).
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Keep key, certificate and enrollment here; resume from them within the same boot (or,
    /// with `installed`, across boots).
    pub state_dir: Option<PathBuf>,
    /// Installed-OS mode (`--installed`), running in this boot environment: the kept
    /// certificate is reused across boots and each new boot reported; enrollments name it.
    pub installed: Option<String>,
    /// Set the system clock through this once the server's time is known (`--set-clock`).
    pub set_clock: Option<Arc<dyn ClockSetter>>,
    /// Keep a one-line description of what the agent does in this file.
    pub status_file: Option<PathBuf>,
    /// Run workflow jobs (`None`: heartbeats only; tests of the enrollment paths).
    pub jobs: Option<JobOptions>,
}

/// How workflow jobs run (see [`crate::jobs`]).
#[derive(Debug, Clone)]
pub struct JobOptions {
    /// Where scripts are written.
    pub work_dir: PathBuf,
    /// The reboot command.
    pub reboot: Vec<String>,
    /// The power-off command.
    pub power_off: Vec<String>,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("state_dir", &self.state_dir)
            .field("installed", &self.installed)
            .field("set_clock", &self.set_clock.is_some())
            .field("status_file", &self.status_file)
            .field("jobs", &self.jobs)
            .finish()
    }
}

/// Run the agent until it is told to stop (or, with `once`, after one round).
pub async fn run(cfg: RunConfig, clock: Arc<Clock>) -> Result<()> {
    run_with(cfg, RunOptions::default(), clock).await
}

/// [`run`] with the discovery image's options.
pub async fn run_with(cfg: RunConfig, opts: RunOptions, clock: Arc<Clock>) -> Result<()> {
    // The state directory first: the status file may live in it.
    let state = opts
        .state_dir
        .as_deref()
        .and_then(|dir| match StateDir::open(dir) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot use the state directory; enrollments will not be kept");
                None
            }
        });
    let mut status = Status::new(opts.status_file.clone(), &cfg.url);
    status.set(Phase::Starting);
    let result = Agent::start(cfg, opts, state, clock, &mut status).await;
    if let Err(e) = &result {
        status.set(Phase::Stopped {
            reason: format!("{e:#}"),
        });
    }
    result
}

struct Agent<'a> {
    cfg: RunConfig,
    exec: Option<crate::jobs::Executor>,
    enroller: Enroller,
    clock: Arc<Clock>,
    state: Option<StateDir>,
    status: &'a mut Status,
    boot_id: String,
    /// Installed-OS mode: the boot environment this agent runs in.
    installed: Option<String>,
}

impl<'a> Agent<'a> {
    async fn start(
        cfg: RunConfig,
        opts: RunOptions,
        state: Option<StateDir>,
        clock: Arc<Clock>,
        status: &'a mut Status,
    ) -> Result<()> {
        let mut enroller = Enroller::new(&cfg.url, &cfg.ca_fingerprint, clock.clone())?;
        if let Some(env) = &opts.installed {
            enroller = enroller.with_environment(env);
        }
        let boot_id = read_boot_id(&cfg);
        let exec = opts.jobs.clone().map(|j| {
            let c = cfg.clone();
            let collect: crate::jobs::Collect = Box::new(move || {
                let c = c.clone();
                Box::pin(async move { collect(&c).await })
            });
            crate::jobs::Executor {
                work_dir: j.work_dir,
                collect: Some(collect),
                actions: Default::default(),
                reboot: j.reboot,
                power_off: j.power_off,
            }
        });
        let mut agent = Agent {
            exec,
            cfg,
            enroller,
            clock,
            state,
            status,
            boot_id,
            installed: opts.installed.clone(),
        };
        // Installed, nothing kept and no token: say so now rather than after the server
        // answers (it may be unreachable for a long time).
        let kept = agent.state.as_ref().is_some_and(StateDir::holds_enrollment);
        if agent.installed.is_some() && agent.cfg.token.is_empty() && !kept {
            return Err(agent.nothing_to_enroll_with());
        }
        agent.learn_clock().await?;
        if let Some(setter) = &opts.set_clock {
            crate::clock::apply(&agent.clock, setter.as_ref());
        }
        agent.work().await
    }

    /// Learn the server's clock over the pinned connection, retrying until it answers.
    async fn learn_clock(&mut self) -> Result<()> {
        let mut backoff = Backoff::new(MAX_BACKOFF);
        loop {
            match self.enroller.sync_clock().await {
                Ok(offset) => {
                    tracing::info!(offset_ms = offset, "learned the server's clock");
                    return Ok(());
                }
                Err(e @ ClientError::FingerprintMismatch { .. }) if self.cfg.once => {
                    return Err(e.into())
                }
                Err(e) => {
                    let wait = backoff.next_delay();
                    if matches!(e, ClientError::FingerprintMismatch { .. }) {
                        // Nothing was sent; the right server may come back at this address.
                        tracing::error!(error = %e, retry_in = ?wait, "wrong server");
                    } else {
                        tracing::warn!(error = %e, retry_in = ?wait, "cannot reach the server yet");
                    }
                    self.status.set(Phase::WaitingForServer {
                        attempt: backoff.attempts(),
                        next: wait,
                        reason: e.short(),
                    });
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// A certificate saved earlier in this boot (installed: or kept from an earlier boot), if
    /// the state directory holds a usable one; and whether it comes from another boot.
    fn resume(&mut self) -> Option<(Session, bool)> {
        let state = self.state.as_ref()?;
        let pin = crate::tls::parse_fingerprint(&self.cfg.ca_fingerprint)?;
        let now = self.clock.now_unix();
        let loaded = match self.installed {
            Some(_) => state.load_kept(&self.boot_id, &pin, now),
            None => state.load(&self.boot_id, &pin, now),
        };
        let (creds, new_boot) = match loaded {
            Loaded::Empty => return None,
            Loaded::OtherBoot { saved_boot_id } => {
                tracing::info!(saved_boot_id, boot_id = %self.boot_id, "state directory is from another boot; enrolling afresh");
                return None;
            }
            Loaded::Unusable(why) => {
                tracing::warn!(dir = %state.path().display(), reason = %why, "saved enrollment unusable; enrolling afresh");
                return None;
            }
            Loaded::Reusable(creds) => (creds, false),
            Loaded::Kept {
                credentials,
                saved_boot_id,
            } => {
                tracing::info!(saved_boot_id, boot_id = %self.boot_id, "a new boot: using the certificate kept on this disk");
                (credentials, true)
            }
        };
        match self.enroller.resume(creds) {
            Ok(s) => {
                tracing::info!(machine_id = %s.machine_id, boot_id = %self.boot_id, "resuming the saved enrollment");
                Some((s, new_boot))
            }
            Err(e) => {
                tracing::warn!(error = %e, "saved enrollment unusable; enrolling afresh");
                None
            }
        }
    }

    /// Installed mode, a new boot with a kept certificate: tell the server (it may cross the
    /// workflow's stage boundary), retrying while it is unreachable, then remember this boot
    /// as reported. A refused certificate means enrolling afresh, which names the environment
    /// and so reports the boot too; any other refusal is a configuration error.
    async fn report_boot(
        &mut self,
        session: Session,
        env: &str,
        inv: &anneal_shared::inventory::Inventory,
    ) -> Result<(Session, bool)> {
        let mut backoff = Backoff::new(MAX_BACKOFF);
        loop {
            match session.report_boot(env).await {
                Ok(()) => {
                    tracing::info!(boot_id = %self.boot_id, env, "boot reported");
                    self.save(&session);
                    return Ok((session, true));
                }
                Err(e) if e.identity_refused() => {
                    return Ok((self.reenroll(&e, inv).await?, false))
                }
                Err(e) if !e.is_transient() => {
                    return Err(e).context(format!(
                        "reporting this boot of boot environment {env:?} (give the installed \
                         environment's name with --environment)"
                    ))
                }
                Err(e) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?wait, "reporting the boot failed");
                    self.status
                        .work(|w| w.failing = Some((backoff.attempts(), wait, e.short())));
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    fn save(&self, session: &Session) {
        if let Some(state) = &self.state {
            if let Err(e) = state.save(
                &session.credentials(),
                &self.cfg.ca_fingerprint,
                &self.cfg.url,
            ) {
                tracing::warn!(dir = %state.path().display(), error = %e, "cannot save the enrollment; a restart will need a new token");
            }
        }
    }

    fn discard(&self) {
        if let Some(state) = &self.state {
            if let Err(e) = state.discard() {
                tracing::warn!(dir = %state.path().display(), error = %e, "cannot discard the saved enrollment");
            }
        }
    }

    /// Installed mode without a usable certificate or a token: what the operator can do.
    fn nothing_to_enroll_with(&self) -> anyhow::Error {
        let dir = self
            .state
            .as_ref()
            .map_or("the state directory".to_string(), |s| {
                s.path().display().to_string()
            });
        anyhow::anyhow!(
            "no usable certificate in {dir} and no bootstrap token to enroll with: create one \
             with `anneal tokens create` and give it with --token, ANNEAL_BOOTSTRAP_TOKEN or \
             --token-file, or copy the state directory the provisioning agent kept into {dir}"
        )
    }

    /// Enroll with the bootstrap token, retrying what can be retried; save the result.
    async fn enroll(&mut self, inv: &anneal_shared::inventory::Inventory) -> Result<Session> {
        if self.cfg.token.is_empty() && self.installed.is_some() {
            return Err(self.nothing_to_enroll_with());
        }
        if self.cfg.token.is_empty() {
            anyhow::bail!(
                "no bootstrap token (--token or anneal.token= on the kernel command line) and no \
                 enrollment of this boot to resume"
            );
        }
        self.status.set(Phase::Enrolling);
        let hints = inventory::identity_hints(inv);
        let hostname = inv
            .os
            .as_ref()
            .and_then(|o| o.hostname.clone())
            .unwrap_or_default();
        let mut backoff = Backoff::new(MAX_BACKOFF);
        loop {
            let e = match self
                .enroller
                .enroll(&self.cfg.token, hints.clone(), &self.boot_id, &hostname)
                .await
            {
                Ok(s) => {
                    tracing::info!(machine_id = %s.machine_id, agent_url = %s.agent_url, "enrolled");
                    self.save(&s);
                    return Ok(s);
                }
                Err(e @ ClientError::BadFingerprint(_)) => return Err(e).context("enrollment"),
                Err(e @ ClientError::FingerprintMismatch { .. }) if self.cfg.once => {
                    return Err(e).context("enrollment")
                }
                Err(e @ ClientError::Quarantined(_)) if self.cfg.once => {
                    return Err(e)
                        .context("enrollment (an operator must resolve it: anneal quarantine)")
                }
                Err(e) if self.cfg.once && !e.is_transient() => {
                    return Err(e).context("enrollment")
                }
                Err(e) => e,
            };
            let wait = backoff.next_delay();
            tracing::warn!(error = %e, retry_in = ?wait, "enrollment failed");
            self.status.set(Phase::EnrollFailed {
                attempt: backoff.attempts(),
                next: wait,
                reason: e.short(),
            });
            tokio::time::sleep(wait).await;
        }
    }

    /// Enrolled: inventory, renewals, heartbeats and directives, for good.
    async fn work(&mut self) -> Result<()> {
        // Collector failures are logged by the inventory module and reported inside it.
        let mut inv = collect(&self.cfg).await;
        let (mut session, mut resumed) = match (self.resume(), self.installed.clone()) {
            (Some((s, true)), Some(env)) => self.report_boot(s, &env, &inv).await?,
            (Some((s, _)), _) => (s, true),
            (None, _) => (self.enroll(&inv).await?, false),
        };
        self.status.machine(session.machine_id);
        self.status.work(|w| w.resumed = resumed);

        let mut inventory_sent = false;
        let mut backoff = Backoff::new(MAX_BACKOFF);
        loop {
            if !inventory_sent {
                match session.send_inventory(&inv).await {
                    Ok(()) => {
                        inventory_sent = true;
                        tracing::info!(
                            disks = inv.disks.len(),
                            nics = inv.nics.len(),
                            "inventory sent"
                        );
                        self.status.work(|w| w.inventory_sent = true);
                    }
                    // A resumed certificate that the server refuses (revoked, or a server that
                    // lost its records) is replaced even with `once`: nothing else would help.
                    Err(e) if e.identity_refused() && (resumed || !self.cfg.once) => {
                        session = self.reenroll(&e, &inv).await?;
                        resumed = false;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "sending the inventory failed; will retry")
                    }
                }
            }
            if session.needs_renewal() {
                match session.renew().await {
                    Ok(()) => {
                        tracing::info!(not_after = %session.not_after, "certificate renewed");
                        self.save(&session);
                    }
                    Err(e) => tracing::warn!(error = %e, "certificate renewal failed; will retry"),
                }
            }
            let status = if inventory_sent {
                "idle"
            } else {
                "reporting inventory"
            };
            let wait = match session.heartbeat(status).await {
                Ok(hb) => {
                    backoff.reset();
                    let at = time::OffsetDateTime::from_unix_timestamp_nanos(
                        self.clock.now_ms() as i128 * 1_000_000,
                    )
                    .ok();
                    let awaiting = matches!(hb.directive, Directive::AwaitApproval);
                    let mut pause = None;
                    match hb.directive {
                        Directive::Work => pause = self.jobs(&session).await,
                        Directive::SendInventory if inventory_sent => {
                            inv = collect(&self.cfg).await;
                            inventory_sent = false;
                        }
                        Directive::AwaitApproval => {
                            tracing::info!("waiting for an operator to approve this machine")
                        }
                        _ => {}
                    }
                    self.status.work(|w| {
                        w.failing = None;
                        w.last_heartbeat = at;
                        w.awaiting_approval = awaiting;
                        w.inventory_sent = inventory_sent;
                    });
                    if self.cfg.once && inventory_sent {
                        return Ok(());
                    }
                    let interval = Duration::from_secs(hb.interval_secs.max(1) as u64);
                    jitter(pause.map_or(interval, |p: Duration| p.min(interval)))
                }
                Err(e) if e.identity_refused() => {
                    // Revoked or forgotten: only a new enrollment helps; with a used-up token
                    // that keeps retrying slowly, so the operator sees the machine the moment
                    // they issue a new one.
                    if self.cfg.once && !resumed {
                        return Err(e.into());
                    }
                    session = self.reenroll(&e, &inv).await?;
                    resumed = false;
                    inventory_sent = false;
                    continue;
                }
                Err(e) => {
                    if self.cfg.once && !e.is_transient() {
                        return Err(e.into());
                    }
                    let wait = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?wait, "heartbeat failed");
                    let reason = e.short();
                    let attempt = backoff.attempts();
                    self.status
                        .work(|w| w.failing = Some((attempt, wait, reason)));
                    wait
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Run the workflow's jobs until it has nothing more for now; how long to pause before the
    /// next heartbeat, if sooner than usual.
    async fn jobs(&mut self, session: &Session) -> Option<Duration> {
        let exec = self.exec.as_ref()?;
        match crate::jobs::drive(session, exec).await {
            Ok(crate::jobs::Stop::Wait(d)) => Some(d),
            Ok(crate::jobs::Stop::Done) => None,
            Ok(stop @ (crate::jobs::Stop::Rebooting | crate::jobs::Stop::PoweringOff)) => {
                tracing::info!(?stop, "waiting for the machine to go down");
                Some(Duration::from_secs(30))
            }
            Err(e) => {
                tracing::warn!(error = %e, "workflow jobs interrupted; will ask again");
                None
            }
        }
    }

    /// The server refused our certificate: forget it and enroll afresh.
    async fn reenroll(
        &mut self,
        e: &ClientError,
        inv: &anneal_shared::inventory::Inventory,
    ) -> Result<Session> {
        tracing::error!(error = %e, "certificate refused; re-enrolling");
        self.discard();
        let session = self.enroll(inv).await?;
        self.status.machine(session.machine_id);
        self.status.work(|w| {
            *w = crate::status::Work::default();
        });
        Ok(session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_secs(60));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(750) && first <= Duration::from_millis(1250));
        for _ in 0..10 {
            b.next_delay();
        }
        let capped = b.next_delay();
        assert!(capped <= Duration::from_secs(75) && capped >= Duration::from_secs(45));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(1250));
    }
}
