//! `anneal serve` configuration, resolved in one place.
//!
//! Precedence, highest first: command-line flags, `ANNEAL_*` environment variables, the TOML
//! file given by `--config` / `ANNEAL_CONFIG`, built-in defaults. Every setting has all four
//! forms: flag `--require-approval`, variable `ANNEAL_REQUIRE_APPROVAL`, file key
//! `require_approval`. Unknown keys in the file are an error, so a typo never passes silently.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

/// Flags (and their environment variables) of `anneal serve`. All optional: unset ones fall
/// through to the file, then to defaults.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "ANNEAL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory for the database, the master key and local credentials [default: ./anneal-data].
    #[arg(long, env = "ANNEAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database URL [default: sqlite://DATA_DIR/anneal.db].
    #[arg(long, env = "ANNEAL_DATABASE")]
    pub database: Option<String>,
    /// Operator API, dashboard and enrollment (HTTPS) [default: 0.0.0.0:8443].
    #[arg(long, env = "ANNEAL_API_LISTEN")]
    pub api_listen: Option<SocketAddr>,
    /// Agent API (HTTPS, client certificate required) [default: 0.0.0.0:8444].
    #[arg(long, env = "ANNEAL_AGENT_LISTEN")]
    pub agent_listen: Option<SocketAddr>,
    /// Names and addresses clients use to reach this server (server certificate SANs),
    /// comma-separated [default: this host's name, localhost, 127.0.0.1, ::1 and its addresses].
    #[arg(long, env = "ANNEAL_ADVERTISE", value_delimiter = ',')]
    pub advertise: Option<Vec<String>>,
    /// New machines wait in `pending` until an operator approves them.
    #[arg(long, env = "ANNEAL_REQUIRE_APPROVAL")]
    pub require_approval: Option<bool>,
    /// Lifetime of agent client certificates, in seconds [default: 86400].
    #[arg(long, env = "ANNEAL_CLIENT_CERT_SECS")]
    pub client_cert_secs: Option<u64>,
    /// Seconds between agent heartbeats [default: 10].
    #[arg(long, env = "ANNEAL_HEARTBEAT_SECS")]
    pub heartbeat_secs: Option<u32>,
    /// Days a finished job's log is kept; 0 keeps logs forever [default: 90].
    #[arg(long, env = "ANNEAL_LOG_RETENTION_DAYS")]
    pub log_retention_days: Option<u32>,
    /// Answer DHCP on these interfaces, comma-separated (subnets: `[[dhcp.subnets]]` in the
    /// file) [default: none — DHCP is off].
    #[arg(long, env = "ANNEAL_DHCP_INTERFACE", value_delimiter = ',')]
    pub dhcp_interface: Option<Vec<String>>,
    /// Plain HTTP for iPXE scripts and boot artifacts [default: 0.0.0.0:8080].
    #[arg(long, env = "ANNEAL_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Directory holding the discovery image's `vmlinuz` and `initrd.img`
    /// [default: DATA_DIR/images/discovery].
    #[arg(long, env = "ANNEAL_DISCOVERY_DIR")]
    pub discovery_dir: Option<PathBuf>,
    /// Extra kernel arguments for the discovery image, before Anneal's own
    /// [default: "console=tty0 console=ttyS0,115200n8" — screen and first serial port, the
    /// serial port last so that it is /dev/console and serial-over-LAN shows the status line].
    #[arg(long, env = "ANNEAL_DISCOVERY_ARGS")]
    pub discovery_args: Option<String>,
    /// Directory of operator boot environments' artifacts: environment NAME's kernel and initrds
    /// are read from DIR/NAME/ [default: DATA_DIR/bootenvs].
    #[arg(long, env = "ANNEAL_BOOTENVS_DIR")]
    pub bootenvs_dir: Option<PathBuf>,
    /// TFTP listener, e.g. 0.0.0.0:69 [default: off — nothing listens unless this is set].
    #[arg(long, env = "ANNEAL_TFTP_LISTEN")]
    pub tftp_listen: Option<SocketAddr>,
    /// Directory served over TFTP besides the iPXE binaries [default: DATA_DIR/tftp].
    #[arg(long, env = "ANNEAL_TFTP_ROOT")]
    pub tftp_root: Option<PathBuf>,
    /// Directory with Debian's iPXE binaries (undionly.kpxe, ipxe.efi, snponly.efi) [default: /usr/lib/ipxe].
    #[arg(long, env = "ANNEAL_IPXE_DIR")]
    pub ipxe_dir: Option<PathBuf>,
}

/// The same settings as they may appear in the TOML file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    database: Option<String>,
    api_listen: Option<SocketAddr>,
    agent_listen: Option<SocketAddr>,
    advertise: Option<Vec<String>>,
    require_approval: Option<bool>,
    client_cert_secs: Option<u64>,
    heartbeat_secs: Option<u32>,
    log_retention_days: Option<u32>,
    dhcp: Option<crate::dhcp::DhcpFile>,
    http_listen: Option<SocketAddr>,
    discovery_dir: Option<PathBuf>,
    discovery_args: Option<String>,
    bootenvs_dir: Option<PathBuf>,
    tftp_listen: Option<SocketAddr>,
    tftp_root: Option<PathBuf>,
    ipxe_dir: Option<PathBuf>,
}

/// Fully resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Data directory (created on start).
    pub data_dir: PathBuf,
    /// Database URL.
    pub database: String,
    /// Operator API listener.
    pub api_listen: SocketAddr,
    /// Agent API listener.
    pub agent_listen: SocketAddr,
    /// Names and addresses for the server certificate.
    pub advertise: Vec<String>,
    /// Hold new machines for approval.
    pub require_approval: bool,
    /// Client certificate lifetime.
    pub client_cert_secs: u64,
    /// Heartbeat interval told to agents.
    pub heartbeat_secs: u32,
    /// Days finished jobs' logs are kept (0: forever).
    pub log_retention_days: u32,
    /// DHCP (off unless an interface or subnet is configured).
    pub dhcp: crate::dhcp::DhcpConfig,
    /// Plain HTTP listener for iPXE.
    pub http_listen: SocketAddr,
    /// The discovery image's kernel and initrd.
    pub discovery_dir: PathBuf,
    /// Extra kernel arguments for the discovery image.
    pub discovery_args: String,
    /// Operator boot environments' artifacts, one directory per environment.
    pub bootenvs_dir: PathBuf,
    /// TFTP listener; `None` means TFTP is off.
    pub tftp_listen: Option<SocketAddr>,
    /// TFTP root directory.
    pub tftp_root: PathBuf,
    /// iPXE binary directory.
    pub ipxe_dir: PathBuf,
}

impl Config {
    /// Resolve flags/environment over the file over defaults.
    pub fn resolve(args: &ServeArgs) -> Result<Config> {
        let file = match &args.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let data_dir = args
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("anneal-data"));
        let database = args
            .database
            .clone()
            .or(file.database)
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("anneal.db").display()));
        let advertise = args
            .advertise
            .clone()
            .or(file.advertise)
            .unwrap_or_else(default_advertise);
        let dhcp = crate::dhcp::DhcpConfig::resolve(
            file.dhcp.as_ref(),
            args.dhcp_interface.as_deref().unwrap_or_default(),
        )?;
        Ok(Config {
            dhcp,
            database,
            api_listen: args
                .api_listen
                .or(file.api_listen)
                .unwrap_or_else(|| "0.0.0.0:8443".parse().expect("literal address")),
            agent_listen: args
                .agent_listen
                .or(file.agent_listen)
                .unwrap_or_else(|| "0.0.0.0:8444".parse().expect("literal address")),
            advertise,
            require_approval: args
                .require_approval
                .or(file.require_approval)
                .unwrap_or(false),
            client_cert_secs: args
                .client_cert_secs
                .or(file.client_cert_secs)
                .unwrap_or(86_400)
                .max(300),
            heartbeat_secs: args
                .heartbeat_secs
                .or(file.heartbeat_secs)
                .unwrap_or(10)
                .max(1),
            log_retention_days: args
                .log_retention_days
                .or(file.log_retention_days)
                .unwrap_or(90),
            http_listen: args
                .http_listen
                .or(file.http_listen)
                .unwrap_or_else(|| "0.0.0.0:8080".parse().expect("literal address")),
            discovery_dir: args
                .discovery_dir
                .clone()
                .or(file.discovery_dir)
                .unwrap_or_else(|| data_dir.join("images").join("discovery")),
            discovery_args: kernel_args(
                args.discovery_args
                    .clone()
                    .or(file.discovery_args)
                    .unwrap_or_else(|| DEFAULT_DISCOVERY_ARGS.to_string()),
            )?,
            bootenvs_dir: args
                .bootenvs_dir
                .clone()
                .or(file.bootenvs_dir)
                .unwrap_or_else(|| data_dir.join("bootenvs")),
            tftp_listen: args.tftp_listen.or(file.tftp_listen),
            tftp_root: args
                .tftp_root
                .clone()
                .or(file.tftp_root)
                .unwrap_or_else(|| data_dir.join("tftp")),
            ipxe_dir: args
                .ipxe_dir
                .clone()
                .or(file.ipxe_dir)
                .unwrap_or_else(|| PathBuf::from(crate::tftp::DEFAULT_IPXE_DIR)),
            data_dir,
        })
    }
}

/// Kernel arguments the discovery image gets unless configured otherwise.
pub const DEFAULT_DISCOVERY_ARGS: &str = "console=tty0 console=ttyS0,115200n8";

/// Kernel arguments go into an iPXE script line: one line of printable text, and none of the
/// keys Anneal sets itself (`anneal.debug`, the image's debug shell, is the operator's to set).
fn kernel_args(args: String) -> Result<String> {
    if let Some(c) = args.chars().find(|c| c.is_control()) {
        anyhow::bail!("discovery_args: control character {c:?} in {args:?}");
    }
    for word in args.split_whitespace() {
        let key = word.split('=').next().unwrap_or(word);
        let ours = key.starts_with("anneal.") && key != "anneal.debug";
        if ours || matches!(key, "BOOTIF" | "initrd" | "rootfstype") {
            anyhow::bail!("discovery_args: {key} is set by Anneal itself; remove it from {args:?}");
        }
    }
    Ok(args.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn load_file(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
}

/// This host's name, loopback, and the addresses of its interfaces.
fn default_advertise() -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() {
            names.push(h.to_string());
        }
    }
    // Interface addresses without a libc dependency: ask the kernel's own tables.
    if let Ok(fib) = std::fs::read_to_string("/proc/net/fib_trie") {
        names.extend(local_ipv4_from_fib_trie(&fib));
    }
    names.sort();
    names.dedup();
    names
}

/// Local (`/32 host LOCAL`) IPv4 addresses listed in `/proc/net/fib_trie`.
fn local_ipv4_from_fib_trie(fib: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut last_ip: Option<&str> = None;
    for line in fib.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("|-- ") {
            last_ip = Some(rest.trim());
        } else if t.contains("/32 host LOCAL") {
            if let Some(ip) = last_ip {
                if ip.parse::<std::net::Ipv4Addr>().is_ok() && !out.iter().any(|o| o == ip) {
                    out.push(ip.to_string());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_file_beat_defaults_and_typos_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("anneal.toml");
        std::fs::write(
            &path,
            "require_approval = true\nheartbeat_secs = 30\napi_listen = \"127.0.0.1:9443\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            heartbeat_secs: Some(5),
            ..Default::default()
        };
        let c = Config::resolve(&args).unwrap();
        assert_eq!(c.heartbeat_secs, 5, "flag wins over file");
        assert!(c.require_approval, "file wins over default");
        assert_eq!(c.api_listen.port(), 9443);
        assert_eq!(c.agent_listen.port(), 8444, "default");
        assert_eq!(c.http_listen.port(), 8080, "default");
        assert!(c.discovery_dir.ends_with("anneal-data/images/discovery"));
        assert!(c.bootenvs_dir.ends_with("anneal-data/bootenvs"));
        assert!(c.database.ends_with("anneal-data/anneal.db"));
        assert_eq!(c.tftp_listen, None, "TFTP is off unless asked for");
        assert!(c.tftp_root.ends_with("anneal-data/tftp"));
        assert_eq!(c.ipxe_dir, PathBuf::from("/usr/lib/ipxe"));
        std::fs::write(
            &path,
            "tftp_listen = \"127.0.0.1:6969\"\nipxe_dir = \"/x\"\nbootenvs_dir = \"/envs\"\n",
        )
        .unwrap();
        let c = Config::resolve(&args).unwrap();
        assert_eq!(c.tftp_listen, Some("127.0.0.1:6969".parse().unwrap()));
        assert_eq!(c.ipxe_dir, PathBuf::from("/x"));
        assert_eq!(c.bootenvs_dir, PathBuf::from("/envs"));

        std::fs::write(&path, "requre_approval = true\n").unwrap();
        let err = format!("{:#}", Config::resolve(&args).unwrap_err());
        assert!(err.contains("requre_approval"), "{err}");
    }

    #[test]
    fn discovery_args_default_and_checks() {
        let c = Config::resolve(&ServeArgs::default()).unwrap();
        assert_eq!(c.discovery_args, DEFAULT_DISCOVERY_ARGS);
        let with = |a: &str| {
            Config::resolve(&ServeArgs {
                discovery_args: Some(a.into()),
                ..Default::default()
            })
        };
        assert_eq!(
            with("  quiet   console=ttyS1,57600 ")
                .unwrap()
                .discovery_args,
            "quiet console=ttyS1,57600"
        );
        assert_eq!(
            with("anneal.debug=1").unwrap().discovery_args,
            "anneal.debug=1"
        );
        for (bad, says) in [
            ("quiet\nchain http://x/", "control character"),
            ("anneal.url=https://evil", "anneal.url is set by Anneal"),
            ("BOOTIF=01-00-11-22-33-44-55", "BOOTIF is set by Anneal"),
            ("rootfstype=tmpfs", "rootfstype is set by Anneal"),
            ("anneal.token=x", "anneal.token is set by Anneal"),
        ] {
            let err = format!("{:#}", with(bad).unwrap_err());
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }

    #[test]
    fn fib_trie_local_addresses() {
        let fib = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 10.1.2.3\n        /32 host LOCAL\n     |-- 10.1.2.255\n        /32 link BROADCAST\n";
        assert_eq!(local_ipv4_from_fib_trie(fib), vec!["10.1.2.3".to_string()]);
    }
}
