//! The CLI's key: where it is found (`--key`, `HALYARD_KEY`, or, for a scheduler on this
//! machine, the admin key file a standalone cluster wrote), and `halyard keys create | list
//! | revoke`.

use std::path::PathBuf;

use halyard_client::Client;
use halyard_client::proto::{CreateKeyRequest, KeyInfo};
use halyard_core::auth::{ADMIN_KEY_FILE, is_loopback};
use halyard_core::config::DEFAULT_DATA_DIR;
use serde_json::json;

use crate::Result;
use crate::commands::out;

/// The data directory a CLI on this machine looks in: `HALYARD_DATA_DIR`, else
/// `halyard-data/` here.
pub fn local_data_dir() -> PathBuf {
    std::env::var_os("HALYARD_DATA_DIR")
        .map_or_else(|| PathBuf::from(DEFAULT_DATA_DIR), PathBuf::from)
}

/// The key files a CLI on the scheduler's machine may read, in order: `HALYARD_KEY_FILE`,
/// then `admin.key` in [`local_data_dir`].
fn local_key_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(f) = std::env::var_os("HALYARD_KEY_FILE") {
        files.push(PathBuf::from(f));
    }
    files.push(local_data_dir().join(ADMIN_KEY_FILE));
    files
}

/// Where a key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `--key` or `HALYARD_KEY`.
    Given,
    /// A key file of a cluster started on this machine.
    File(PathBuf),
}

/// The key to send to `scheduler`, and where it came from: `key` when given (`--key` or
/// `HALYARD_KEY`), else, for a scheduler on loopback, the admin key file of a cluster
/// started here (readable only by its owner, like a local socket).
pub fn discover_with_source(scheduler: &str, key: Option<String>) -> Option<(String, KeySource)> {
    if let Some(k) = key.filter(|k| !k.trim().is_empty()) {
        return Some((k.trim().to_string(), KeySource::Given));
    }
    let host = scheduler.rsplit_once("://").map_or(scheduler, |(_, h)| h);
    if !is_loopback(host) {
        return None;
    }
    local_key_files().into_iter().find_map(|f| {
        let text = std::fs::read_to_string(&f).ok()?;
        Some((text.trim().to_string(), KeySource::File(f)))
    })
}

/// The key to send to `scheduler` ([`discover_with_source`] without the source).
pub fn discover(scheduler: &str, key: Option<String>) -> Option<String> {
    discover_with_source(scheduler, key).map(|(k, _)| k)
}

/// Where the CLI connects, and with what: the flags every client command shares.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// Scheduler address, HOST:PORT
    #[arg(long, env = "HALYARD_SCHEDULER", default_value = halyard_client::DEFAULT_SCHEDULER)]
    pub scheduler: String,
    /// API key (hk_…) [default: for a scheduler on this machine, the admin key in
    /// HALYARD_KEY_FILE or DATA_DIR/admin.key (halyard-data/admin.key)]
    #[arg(long, env = "HALYARD_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// A CA certificate (PEM) to trust: the cluster serves TLS (its `ca.pem` from
    /// `halyard certs init`)
    #[arg(long, env = "HALYARD_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

/// Connect as `conn` says, with the key [`discover`] finds.
pub async fn connect(conn: &Connection) -> Result<Client> {
    let tls = match &conn.tls_ca {
        Some(ca) => Some(halyard_core::tls::client_trusting(ca)?),
        None => None,
    };
    let key = discover(&conn.scheduler, conn.key.clone());
    Ok(Client::connect_secure(&conn.scheduler, key.as_deref(), tls).await?)
}

fn key_json(k: &KeyInfo) -> serde_json::Value {
    json!({
        "id": k.id,
        "name": k.name,
        "role": k.role,
        "models": if k.models.is_empty() { json!(null) } else { json!(k.models) },
        "expires_ms": if k.expires_ms == 0 { json!(null) } else { json!(k.expires_ms) },
        "created_ms": k.created_ms,
        "creator": k.creator,
        "revoked": k.revoked,
    })
}

/// `halyard keys create`: make a key and print its secret, this once.
pub async fn create(client: &Client, request: CreateKeyRequest, as_json: bool) -> Result<()> {
    let made = client.create_key(request).await?;
    let key = made.key.unwrap_or_default();
    if as_json {
        let mut v = key_json(&key);
        v["token"] = json!(made.token);
        out(&v.to_string());
    } else {
        out(&format!(
            "key {} ({}), role {}: {}\nthis secret is shown once: keep it in a secret store, send it as `authorization: Bearer …` or HALYARD_KEY",
            key.id, key.name, key.role, made.token
        ));
    }
    Ok(())
}

/// `halyard keys list`: every key, without secrets.
pub async fn list(client: &Client, as_json: bool) -> Result<()> {
    let keys = client.keys().await?;
    if as_json {
        out(&json!(keys.iter().map(key_json).collect::<Vec<_>>()).to_string());
        return Ok(());
    }
    let mut text = format!(
        "{:<13} {:<24} {:<10} {:<16} {:<8} creator",
        "id", "name", "role", "models", "state"
    );
    let now = halyard_core::records::now_ms();
    for k in &keys {
        let state = if k.revoked {
            "revoked"
        } else if k.expires_ms != 0 && k.expires_ms <= now {
            "expired"
        } else {
            "active"
        };
        let models = if k.models.is_empty() { "*" } else { &k.models };
        text.push_str(&format!(
            "\n{:<13} {:<24} {:<10} {:<16} {:<8} {}",
            k.id, k.name, k.role, models, state, k.creator
        ));
    }
    out(&text);
    Ok(())
}

/// `halyard keys revoke`: every node refuses the key within seconds.
pub async fn revoke(client: &Client, id: &str, as_json: bool) -> Result<()> {
    let k = client.revoke_key(id).await?;
    if as_json {
        out(&key_json(&k).to_string());
    } else {
        out(&format!(
            "key {} ({}) revoked: every node refuses it within {} s",
            k.id,
            k.name,
            halyard_core::auth::KEY_CACHE_TTL.as_secs() + 1
        ));
    }
    Ok(())
}

/// `halyard audit`: the audit log since `since` (a duration back from now, such as 1h or
/// 7d; everything kept when `None`), as a table or JSON lines.
pub async fn audit(client: &Client, since: Option<&str>, as_json: bool) -> Result<()> {
    let since_ms = match since {
        None => 0,
        Some(text) => {
            let back = halyard_core::auth::parse_duration_ms(text).ok_or_else(|| {
                crate::CliError::Failed(format!(
                    "--since {text:?}: write a number and a unit, such as 90m, 12h or 7d"
                ))
            })?;
            halyard_core::records::now_ms() - back
        }
    };
    let events = client.audit(since_ms).await?;
    for e in &events {
        if as_json {
            out(&json!({
                "time_ms": e.time_ms,
                "key_id": e.key_id,
                "key_name": e.key_name,
                "role": e.role,
                "node": e.node,
                "action": e.action,
                "target": e.target,
                "outcome": e.outcome,
            })
            .to_string());
        } else {
            let time = chrono::DateTime::from_timestamp_millis(e.time_ms)
                .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_default();
            let key = if e.key_name.is_empty() {
                e.key_id.clone()
            } else {
                format!("{} ({})", e.key_id, e.key_name)
            };
            out(&format!(
                "{time}  {key:<28} {:<9} {:<12} {:<11} {:<28} {}",
                e.role, e.node, e.action, e.target, e.outcome
            ));
        }
    }
    if !as_json && events.is_empty() {
        out("no audited calls in that time");
    }
    Ok(())
}
