//! Shared server state, and what happens on first start: the data directory, the master key,
//! the CA (sealed into the store so several servers sharing one database share one CA), the
//! first admin API token, and this server's certificate.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anneal_shared::api::Role;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::config::Config;
use crate::heartbeat::HeartbeatSink;
use crate::pki::{Ca, IssuedCert, MasterKey};
use crate::store::{self, Store};
use crate::tokens;

/// Everything request handlers share.
pub struct App {
    /// Persistent state.
    pub store: Arc<dyn Store>,
    /// The certificate authority.
    pub ca: Ca,
    /// Resolved configuration.
    pub config: Config,
    /// Group-committing heartbeat writer.
    pub heartbeats: HeartbeatSink,
    /// The newest workflow content, merged over the built-ins.
    pub content: crate::workflow::service::ContentCache,
    /// Every state change, streamed to `GET /api/v1/events`.
    pub events: Arc<crate::events::EventBus>,
}

/// What `prepare` produced besides the app.
pub struct Prepared {
    /// The shared state.
    pub app: Arc<App>,
    /// This server's TLS certificate and key.
    pub server_cert: IssuedCert,
    /// The admin token, only on the very first start (print it once).
    pub first_admin_token: Option<String>,
    /// The heartbeat writer; finishes after the last `App` is dropped and its queue is written.
    pub heartbeat_writer: tokio::task::JoinHandle<()>,
}

/// Stored form of the CA: certificate in clear, key sealed with the master key.
#[derive(Serialize, Deserialize)]
struct StoredCa {
    cert_pem: String,
    sealed_key: String,
}

const CA_SETTING: &str = "ca";
const CA_KEY_AAD: &[u8] = b"anneal ca key v1";
const INIT_SETTING: &str = "initialized";

/// File names inside the data directory.
pub const MASTER_KEY_FILE: &str = "master.key";
/// The CA certificate, for local CLI use and for agents' fingerprint pinning.
pub const CA_FILE: &str = "ca.pem";
/// The first admin token (mode 0600), for the local CLI.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Open everything `anneal serve` needs, creating it on first start.
pub async fn prepare(config: Config) -> Result<Prepared> {
    create_private_dir(&config.data_dir)?;
    let master =
        MasterKey::load_or_create(&config.data_dir.join(MASTER_KEY_FILE)).context("master key")?;
    let store = store::open(&config.database)
        .await
        .with_context(|| format!("opening database {}", config.database))?;
    let now = OffsetDateTime::now_utc();
    let ca = load_or_create_ca(store.as_ref(), &master, now).await?;
    std::fs::write(config.data_dir.join(CA_FILE), ca.cert_pem()).context("writing ca.pem")?;

    // Exactly one server, the first to start on this database, makes the admin token.
    let mut first_admin_token = None;
    if store
        .put_setting_if_absent(INIT_SETTING, &now.unix_timestamp().to_string())
        .await?
    {
        let (secret, record) = tokens::new_api_token(Role::Admin, "initial admin", now);
        store.insert_api_token(&record).await?;
        write_private_file(&config.data_dir.join(ADMIN_TOKEN_FILE), &secret)?;
        first_admin_token = Some(secret);
    }

    let server_cert = ca
        .issue_server_cert(&config.advertise, now, time::Duration::days(365))
        .context("issuing the server certificate")?;
    let (heartbeats, heartbeat_writer) = crate::heartbeat::spawn_writer(store.clone());
    Ok(Prepared {
        app: Arc::new(App {
            store,
            ca,
            config,
            heartbeats,
            content: Default::default(),
            events: Default::default(),
        }),
        server_cert,
        first_admin_token,
        heartbeat_writer,
    })
}

async fn load_or_create_ca(
    store: &dyn Store,
    master: &MasterKey,
    now: OffsetDateTime,
) -> Result<Ca> {
    if store.get_setting(CA_SETTING).await?.is_none() {
        let ca = Ca::generate("Anneal CA", now).context("generating the CA")?;
        let stored = StoredCa {
            cert_pem: ca.cert_pem().to_string(),
            sealed_key: master.seal(ca.key_pem().as_bytes(), CA_KEY_AAD)?,
        };
        // Another server may have won the race; then its CA is the one.
        store
            .put_setting_if_absent(CA_SETTING, &serde_json::to_string(&stored)?)
            .await?;
    }
    let text = store
        .get_setting(CA_SETTING)
        .await?
        .context("CA missing from the store after creation")?;
    let stored: StoredCa = serde_json::from_str(&text).context("stored CA is corrupt")?;
    let key = master
        .open(&stored.sealed_key, CA_KEY_AAD)
        .context("unsealing the CA key: is this the master key that created the database?")?;
    let key = String::from_utf8(key).context("CA key is not PEM")?;
    Ok(Ca::from_pem(&stored.cert_pem, &key)?)
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating data directory {}", dir.display()))?;
    }
    Ok(())
}

/// Write a secret to a file that is mode 0600 from its creation.
pub fn write_private_file(path: &Path, contents: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}
