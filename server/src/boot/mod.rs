//! Network boot over plain HTTP: iPXE scripts and boot artifacts.
//!
//! Stock iPXE cannot check our CA, so this listener (`http_listen`, default `0.0.0.0:8080`)
//! speaks plain HTTP and serves only what iPXE must fetch:
//!
//! - `GET /boot.ipxe` — the entry script. It chains (with `--replace`) to
//!   `/boot/machine.ipxe?mac=…&uuid=…&serial=…&buildarch=…&platform=…`, the values filled in
//!   by iPXE: `mac` as `52-54-00-…` (`:hexhyp`), `uuid` in its own hex-and-hyphens form, the
//!   string settings URL-encoded with `:uristring` (see the entry template for why).
//! - `GET /boot/machine.ipxe` — this machine's script. Unknown machines get `discovery`; known
//!   machines get `local` unless an operator asked for a rediscovery
//!   (`POST /api/v1/machines/{id}/rediscover`). A machine is looked up by SMBIOS UUID (and its
//!   byte-swapped form) through the identifiers, then by MAC through the boot-MAC index — for
//!   routing only, never for identity.
//!   Machines whose workflow put them into an operator's boot environment get its script
//!   (see [`custom`]).
//! - `GET /boot/files/<token>/<name>` — an operator environment's per-machine files (an
//!   installer's preseed), behind a signed per-boot token (see [`file_token`]).
//! - `GET|HEAD /artifacts/<sha256>/<name>` — kernels and initrds, content-addressed
//!   (see [`artifacts`]).
//! - Anything else answers 200 with a script that says what went wrong and retries: iPXE stops
//!   on a 404 (tinkerbell/tinkerbell#424), and a machine must never be left stuck.
//!
//! **Secrets.** Nothing marked secret is ever rendered into a script. The per-machine files of
//! an operator environment may hold secret params; they are served only behind a signed
//! per-boot token that only the machine's own script carries ([`file_token`]). The other
//! designed exception is the bootstrap token on the discovery kernel command line: minted at
//! render time, single-use, valid for [`BOOT_TOKEN_TTL_SECS`], bound to the MAC that fetched
//! the script (enrollment must present that MAC) and, for a known machine's rediscovery, bound
//! to that machine too (enrollment must recognise exactly that machine). Someone who sniffs it
//! can at most race the booting machine to one enrollment as that MAC; the machine then fails
//! to enroll, which is visible.

pub mod artifacts;
mod custom;
mod file_body;
pub mod file_token;
pub mod http_boot;
mod listener;
pub mod render;
mod sendfile;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::IncomingStream;
use axum::Router;
use minijinja::context;
use time::OffsetDateTime;
use tokio::net::TcpListener;

use anneal_shared::content::{BOOTENV_DISCOVERY, BOOTENV_INSTALLED, BOOTENV_LOCAL};

use crate::app::App;
use crate::identity;
use crate::store::BootstrapTokenRecord;
use crate::tokens::{hash_secret, new_secret, public_id, BOOTSTRAP_PREFIX};

use artifacts::Artifacts;
use file_token::FileTokens;
use render::{error_script, Templates};

/// Lifetime of a bootstrap token minted into a discovery script.
pub const BOOT_TOKEN_TTL_SECS: i64 = 3600;
/// The discovery image's kernel, inside `discovery_dir`.
pub const KERNEL_NAME: &str = "vmlinuz";
/// The discovery image's initrd, inside `discovery_dir`. Its name is also what the kernel
/// command line says (`initrd=initrd.img`): Debian's old iPXE under UEFI hands the kernel only
/// initrds the command line names as fetched.
pub const INITRD_NAME: &str = "initrd.img";

/// Shared state of the boot listener.
pub struct Boot {
    app: Arc<App>,
    templates: Templates,
    artifacts: Artifacts,
    file_tokens: FileTokens,
}

/// Both ends of an HTTP connection: the local address is how the client reached us.
#[derive(Debug, Clone, Copy)]
pub struct ConnAddrs {
    /// Our address on this connection.
    pub local: Option<SocketAddr>,
    /// The client's address.
    pub remote: SocketAddr,
}

impl Connected<IncomingStream<'_, TcpListener>> for ConnAddrs {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        ConnAddrs {
            local: stream.io().local_addr().ok(),
            remote: *stream.remote_addr(),
        }
    }
}

/// The plain-HTTP routes.
pub fn router(app: Arc<App>) -> Router {
    routes(boot_state(app))
}

fn boot_state(app: Arc<App>) -> Arc<Boot> {
    Arc::new(Boot {
        file_tokens: FileTokens::new(&app.ca.key_pem()),
        app,
        templates: Templates::new(),
        artifacts: Artifacts::default(),
    })
}

fn routes(boot: Arc<Boot>) -> Router {
    Router::new()
        .route("/boot.ipxe", get(entry))
        .route("/boot/machine.ipxe", get(machine_script))
        .route("/boot/files/{token}/{name}", get(env_file))
        .route("/artifacts/{sha256}/{name}", get(artifact))
        .route("/ipxe/{*name}", get(firmware_file))
        .fallback(unknown)
        .with_state(boot)
}

/// Serve the boot router on `listener` until `shutdown` is cancelled, then drain. Plain
/// artifact GETs take the `sendfile` fast path (see `listener`).
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let boot = boot_state(app);
    let router = routes(boot.clone());
    listener::run(listener, boot, router, shutdown).await;
}

/// How the client reached us: `host[:port]` for URLs on this listener, and the bare host for
/// URLs on the other listeners. From the Host header when it is a plain name or address
/// (anything else could smuggle iPXE syntax into a script), else the connection's local address.
fn reached_as(headers: &HeaderMap, conn: &ConnAddrs) -> (String, String) {
    let from_header = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        });
    if let Some(h) = from_header {
        let uri = axum::http::Uri::from_static("/");
        let mut only = HeaderMap::new();
        if let Ok(v) = h.parse() {
            only.insert(header::HOST, v);
        }
        if let Some(host) = crate::http_util::request_host(&only, &uri) {
            return (h.to_string(), host);
        }
    }
    match conn.local {
        Some(SocketAddr::V4(a)) => (a.to_string(), a.ip().to_string()),
        Some(SocketAddr::V6(a)) => (a.to_string(), format!("[{}]", a.ip())),
        None => ("localhost".into(), "localhost".into()),
    }
}

fn script(body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

async fn entry(
    State(boot): State<Arc<Boot>>,
    ConnectInfo(conn): ConnectInfo<ConnAddrs>,
    headers: HeaderMap,
) -> Response {
    let (authority, _) = reached_as(&headers, &conn);
    let base_url = format!("http://{authority}");
    let retry = format!("{base_url}/boot.ipxe");
    metrics::counter!("anneal_boot_scripts_total", "env" => "entry").increment(1);
    script(
        boot.templates
            .render("entry", context! { base_url }, &retry)
            .unwrap_or_else(|e| e),
    )
}

async fn unknown(
    ConnectInfo(conn): ConnectInfo<ConnAddrs>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let (authority, _) = reached_as(&headers, &conn);
    tracing::info!(client = %conn.remote, path = %uri.path(), "boot: unknown URL, answered with a retry script");
    metrics::counter!("anneal_boot_scripts_total", "env" => "error").increment(1);
    script(error_script(
        &format!("{} is not a boot script of this server", uri.path()),
        &format!("http://{authority}/boot.ipxe"),
    ))
}

async fn artifact(
    State(boot): State<Arc<Boot>>,
    Path((sha256, name)): Path<(String, String)>,
    req: Request,
) -> Response {
    boot.artifacts.serve(&sha256, &name, req).await
}

async fn env_file(
    State(boot): State<Arc<Boot>>,
    ConnectInfo(conn): ConnectInfo<ConnAddrs>,
    headers: HeaderMap,
    Path((token, name)): Path<(String, String)>,
) -> Response {
    let (authority, _) = reached_as(&headers, &conn);
    custom::file(
        &boot,
        &token,
        &name,
        &format!("http://{authority}"),
        conn.remote,
    )
    .await
}

async fn firmware_file(
    State(boot): State<Arc<Boot>>,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    http_boot::serve(&boot.app, name, req).await
}

/// What iPXE told us about itself, cleaned.
struct Client {
    mac: Option<String>,
    uuid: Option<String>,
    platform: &'static str,
    buildarch: String,
}

fn client_from_query(q: &HashMap<String, String>) -> Client {
    let mac = q.get("mac").and_then(|m| identity::normalize_mac(m));
    // Placeholder UUIDs (all-zero, well-known defaults) never point at a machine.
    let uuid = q
        .get("uuid")
        .and_then(|u| identity::normalize_uuid_text(u))
        .filter(|u| !identity::is_placeholder_uuid(u));
    let platform = match q.get("platform").map(String::as_str) {
        Some("efi") => "efi",
        Some("pcbios") => "pcbios",
        _ => "unknown",
    };
    let buildarch = render::ipxe_safe(q.get("buildarch").map(String::as_str).unwrap_or(""), 16);
    Client {
        mac,
        uuid,
        platform,
        buildarch,
    }
}

async fn machine_script(
    State(boot): State<Arc<Boot>>,
    ConnectInfo(conn): ConnectInfo<ConnAddrs>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (authority, host) = reached_as(&headers, &conn);
    let base_url = format!("http://{authority}");
    let retry = format!("{base_url}/boot.ipxe");
    let client = client_from_query(&q);
    let (env, machine, body) = choose_and_render(&boot, &client, &base_url, &host, &retry).await;
    let mac = client.mac.as_deref().unwrap_or("none");
    tracing::info!(
        machine = %machine,
        mac,
        platform = client.platform,
        arch = %client.buildarch,
        env,
        client = %conn.remote,
        "boot script served"
    );
    metrics::counter!("anneal_boot_scripts_total", "env" => env).increment(1);
    script(body)
}

/// Pick the boot environment and render it: (environment, machine id or "unknown", script).
async fn choose_and_render(
    boot: &Boot,
    client: &Client,
    base_url: &str,
    host: &str,
    retry: &str,
) -> (&'static str, String, String) {
    let Some(mac) = client.mac.clone() else {
        return (
            "error",
            "unknown".into(),
            error_script(
                "no usable MAC address in the request: boot through /boot.ipxe",
                retry,
            ),
        );
    };
    let found = match boot
        .app
        .store
        .boot_lookup(client.uuid.as_deref(), Some(&mac))
        .await
    {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(error = %e, %mac, "boot lookup failed");
            return (
                "error",
                "unknown".into(),
                error_script("the server could not read its database", retry),
            );
        }
    };
    let machine = found
        .as_ref()
        .map(|m| m.id.to_string())
        .unwrap_or_else(|| "unknown".into());
    // An operator's rediscovery request goes first, then the environment the machine's
    // workflow assigned; a known machine with neither boots its disk.
    let env = match &found {
        None => BOOTENV_DISCOVERY,
        Some(m) => m
            .requested_env
            .as_deref()
            .or(m.assigned_env.as_deref())
            .unwrap_or(BOOTENV_LOCAL),
    };
    // `installed` boots the disk exactly like `local`; only its agent differs (it reports
    // the boot itself, see workflow/installed.rs).
    if env == BOOTENV_LOCAL || env == BOOTENV_INSTALLED {
        let label = if env == BOOTENV_LOCAL {
            BOOTENV_LOCAL
        } else {
            BOOTENV_INSTALLED
        };
        let body = boot
            .templates
            .render(
                "local",
                context! { machine => machine.clone(), platform => client.platform },
                retry,
            )
            .unwrap_or_else(|e| e);
        if let Some(m) = &found {
            crate::workflow::service::script_served(&boot.app, m.id, env).await;
        }
        return (label, machine, body);
    }
    if let (Some(m), false) = (&found, env == BOOTENV_DISCOVERY) {
        let booting = custom::Booting {
            machine: m.id,
            mac: &mac,
            env,
            base_url,
            host,
            retry,
        };
        let (label, body) = custom::script(boot, &booting).await;
        return (label, machine, body);
    }

    // Discovery: the image must be there before a token is minted for it.
    let dir = &boot.app.config.discovery_dir;
    let (kernel, initrd) = (dir.join(KERNEL_NAME), dir.join(INITRD_NAME));
    let hashes = match (
        boot.artifacts.sha256(&kernel).await,
        boot.artifacts.sha256(&initrd).await,
    ) {
        (Ok(k), Ok(i)) => (k, i),
        (k, i) => {
            let e = k
                .err()
                .or(i.err())
                .map(|e| e.to_string())
                .unwrap_or_default();
            tracing::warn!(dir = %dir.display(), error = %e, "discovery image missing");
            return (
                "error",
                machine,
                error_script(
                    &format!(
                        "the discovery image is missing on the server: put {KERNEL_NAME} and {INITRD_NAME} in {}",
                        dir.display()
                    ),
                    retry,
                ),
            );
        }
    };

    let Some(agent) = agent_boot(
        boot,
        &mac,
        found.as_ref().map(|m| m.id),
        BOOTENV_DISCOVERY,
        host,
    )
    .await
    else {
        return (
            "error",
            machine,
            error_script("the server could not mint a bootstrap token", retry),
        );
    };
    let ctx = context! {
        mac => mac.clone(),
        machine => machine.clone(),
        kernel_url => format!("{base_url}/artifacts/{}/{KERNEL_NAME}", hashes.0),
        initrd_url => format!("{base_url}/artifacts/{}/{INITRD_NAME}", hashes.1),
        initrd_name => INITRD_NAME,
        kernel_args => boot.app.config.discovery_args.clone(),
        anneal_url => agent.anneal_url,
        ca_fingerprint => agent.ca_fingerprint,
        bootif => agent.bootif,
        token => agent.token,
        base_url => base_url,
    };
    match boot.templates.render("discovery", ctx, retry) {
        Ok(body) => {
            if let Some(m) = &found {
                crate::workflow::service::script_served(&boot.app, m.id, env).await;
            }
            ("discovery", machine, body)
        }
        Err(error_body) => ("error", machine, error_body),
    }
}

/// What the agent of a booting environment needs on its kernel command line to enroll.
struct AgentBoot {
    /// The operator listener, as the machine reached this server.
    anneal_url: String,
    /// The CA fingerprint it pins.
    ca_fingerprint: String,
    /// `01-aa-bb-…`: the MAC it booted from.
    bootif: String,
    /// A single-use bootstrap token bound to that MAC (and the known machine, if any).
    token: String,
}

impl AgentBoot {
    /// The kernel arguments, keys as `anneal_shared::cmdline` names them.
    fn kernel_args(&self) -> String {
        use anneal_shared::cmdline::{BOOTIF, CA, TOKEN, URL};
        format!(
            "{URL}={} {CA}={} {BOOTIF}={} {TOKEN}={}",
            self.anneal_url, self.ca_fingerprint, self.bootif, self.token
        )
    }
}

/// Mint a bootstrap token for a machine booting `env` from `mac` (a known `machine`, or a new
/// one), recorded so that its enrollment proves the boot came from `env`'s script. `None` (and
/// logged) when the store fails.
async fn agent_boot(
    boot: &Boot,
    mac: &str,
    machine: Option<anneal_shared::MachineId>,
    env: &str,
    host: &str,
) -> Option<AgentBoot> {
    let now = OffsetDateTime::now_utc();
    let secret = new_secret(BOOTSTRAP_PREFIX);
    let hash = hash_secret(&secret);
    let label = machine.map_or_else(|| "unknown".to_string(), |m| m.to_string());
    let record = BootstrapTokenRecord {
        id: public_id(&hash),
        hash,
        uses_left: 1,
        expires_at: now + time::Duration::seconds(BOOT_TOKEN_TTL_SECS),
        mac: Some(mac.to_string()),
        description: Some(format!("PXE boot of {mac} ({label})")),
        created_at: now,
    };
    if let Err(e) = boot
        .app
        .store
        .insert_boot_token(&record, machine, Some(env))
        .await
    {
        tracing::error!(error = %e, %mac, env, "minting a boot token failed");
        return None;
    }
    tracing::info!(token_id = %record.id, %mac, machine = %label, env, "bootstrap token minted for a boot");
    Some(AgentBoot {
        anneal_url: format!("https://{host}:{}", boot.app.config.api_listen.port()),
        ca_fingerprint: boot.app.ca.fingerprint(),
        bootif: format!("01-{}", mac.replace(':', "-")),
        token: secret,
    })
}
