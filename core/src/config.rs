//! Role configuration, resolved in one place: command-line flags, then `HALYARD_*`
//! environment variables (the binary's clap declares both), then the config file
//! (`--config FILE`, TOML with the keys of [`Settings`]), then defaults.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::coord::Coordinator;
use crate::error::{Error, Result};
use crate::kv::{EmbeddedKv, EtcdKv};
use crate::store::{S3Config, Store};

/// Every setting a role can take, each optional: the layers are merged with
/// [`Settings::or`], and each role config fills what is still unset with its defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// `HOST:PORT` to listen on.
    pub listen: Option<String>,
    /// `HOST:PORT` other nodes use to reach this one (default: `listen`).
    pub advertise: Option<String>,
    /// Node id (default: derived from host and port).
    pub id: Option<String>,
    /// etcd endpoints; none means the embedded coordinator (standalone only).
    pub etcd: Option<Vec<String>>,
    /// Key prefix of this cluster in etcd (several clusters can share one etcd).
    pub etcd_root: Option<String>,
    /// Object store URL: `file:///dir` or `s3://bucket/prefix`.
    pub store: Option<String>,
    /// Standalone: folder for the object store.
    pub data_dir: Option<PathBuf>,
    /// Lease time-to-live in seconds, for executors and the leader.
    pub lease_ttl_secs: Option<u64>,
    /// Executor: CPU slots offered to tasks.
    pub cpu_slots: Option<u32>,
    /// Executor: memory offered to tasks, MiB.
    pub memory_mb: Option<u64>,
    /// Executor: GPUs offered.
    pub gpus: Option<u32>,
    /// Standalone: executors started in the process.
    pub executors: Option<u32>,
    /// Executor serving: most records scored in one micro-batch.
    pub max_batch: Option<usize>,
    /// Executor serving: longest a micro-batch waits for more requests, microseconds.
    pub batch_wait_us: Option<u64>,
    /// `HOST:PORT` of the SQL (Ballista) service: the leader's scheduler, an executor's
    /// data (Arrow Flight) service. Port 0 picks a free one; the address is advertised
    /// through the coordinator.
    pub sql_listen: Option<String>,
    /// S3 settings.
    pub s3: S3Config,
}

impl Settings {
    /// Read a TOML config file.
    pub fn from_file(path: &Path) -> Result<Settings> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| Error::Toml {
            source_name: path.display().to_string(),
            message: e.to_string().trim_end().to_string(),
        })
    }

    /// `self`, with what it leaves unset taken from `lower`.
    pub fn or(self, lower: Settings) -> Settings {
        Settings {
            listen: self.listen.or(lower.listen),
            advertise: self.advertise.or(lower.advertise),
            id: self.id.or(lower.id),
            etcd: self.etcd.or(lower.etcd),
            etcd_root: self.etcd_root.or(lower.etcd_root),
            store: self.store.or(lower.store),
            data_dir: self.data_dir.or(lower.data_dir),
            lease_ttl_secs: self.lease_ttl_secs.or(lower.lease_ttl_secs),
            cpu_slots: self.cpu_slots.or(lower.cpu_slots),
            memory_mb: self.memory_mb.or(lower.memory_mb),
            gpus: self.gpus.or(lower.gpus),
            executors: self.executors.or(lower.executors),
            max_batch: self.max_batch.or(lower.max_batch),
            batch_wait_us: self.batch_wait_us.or(lower.batch_wait_us),
            sql_listen: self.sql_listen.or(lower.sql_listen),
            s3: S3Config {
                endpoint: self.s3.endpoint.or(lower.s3.endpoint),
                region: self.s3.region.or(lower.s3.region),
                access_key_id: self.s3.access_key_id.or(lower.s3.access_key_id),
                secret_access_key: self.s3.secret_access_key.or(lower.s3.secret_access_key),
            },
        }
    }
}

/// Default scheduler port.
pub const DEFAULT_SCHEDULER_PORT: u16 = 7070;
/// Default executor port.
pub const DEFAULT_EXECUTOR_PORT: u16 = 7071;
/// Default lease TTL, seconds: how long a dead node goes unnoticed at most.
pub const DEFAULT_LEASE_TTL_SECS: u64 = 5;

/// Where coordination state lives.
#[derive(Debug, Clone)]
pub enum CoordinatorConfig {
    /// A real etcd cluster.
    Etcd {
        /// Endpoints.
        endpoints: Vec<String>,
        /// Key prefix.
        root: String,
    },
    /// In-process (standalone mode).
    Embedded,
}

impl CoordinatorConfig {
    /// Embedded unless etcd endpoints are set.
    pub fn from_settings(s: &Settings) -> Self {
        match &s.etcd {
            Some(endpoints) if !endpoints.is_empty() => CoordinatorConfig::Etcd {
                endpoints: endpoints.clone(),
                root: s.etcd_root.clone().unwrap_or_else(|| "/halyard".into()),
            },
            _ => CoordinatorConfig::Embedded,
        }
    }

    /// Connect to etcd; the embedded coordinator cannot be shared between processes,
    /// so a scheduler or executor needs etcd.
    pub async fn connect(&self) -> Result<Coordinator> {
        match self {
            CoordinatorConfig::Etcd { endpoints, root } => {
                let kv = EtcdKv::connect(endpoints).await?;
                Ok(Coordinator::new(Arc::new(kv), root))
            }
            CoordinatorConfig::Embedded => {
                Ok(Coordinator::new(Arc::new(EmbeddedKv::new()), "/halyard"))
            }
        }
    }
}

fn default_id(role: &str, listen: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into());
    let port = listen.rsplit(':').next().unwrap_or("0");
    format!("{role}-{host}-{port}")
}

/// A scheduler's configuration.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Node id.
    pub id: String,
    /// `HOST:PORT` of the gRPC API.
    pub listen: String,
    /// Coordination.
    pub coordinator: CoordinatorConfig,
    /// Leader lease TTL.
    pub lease_ttl: Duration,
    /// Placement and supervision tick.
    pub tick: Duration,
    /// Executor losses a job survives before it fails.
    pub max_attempts: u32,
    /// `HOST:PORT` the SQL (Ballista) scheduler listens on while this node leads.
    pub sql_listen: String,
    /// Host name executors and clients reach this node's SQL scheduler at.
    pub advertise_host: String,
    /// S3 settings for the SQL scheduler's planning (it lists and reads source files).
    pub s3: S3Config,
}

impl SchedulerConfig {
    /// Fill unset settings with defaults. A scheduler process needs `etcd`.
    pub fn from_settings(s: &Settings) -> Result<Self> {
        let listen = s
            .listen
            .clone()
            .unwrap_or_else(|| format!("127.0.0.1:{DEFAULT_SCHEDULER_PORT}"));
        Ok(SchedulerConfig {
            id: s
                .id
                .clone()
                .unwrap_or_else(|| default_id("scheduler", &listen)),
            coordinator: CoordinatorConfig::from_settings(s),
            lease_ttl: Duration::from_secs(lease_ttl(s)?),
            sql_listen: sql_listen(s, &listen),
            advertise_host: host_of(s.advertise.as_deref().unwrap_or(&listen)).to_string(),
            s3: s.s3.clone(),
            listen,
            tick: Duration::from_millis(100),
            max_attempts: 5,
        })
    }
}

/// The host part of `HOST:PORT`.
pub fn host_of(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(h, _)| h)
}

fn sql_listen(s: &Settings, listen: &str) -> String {
    s.sql_listen
        .clone()
        .unwrap_or_else(|| format!("{}:0", host_of(listen)))
}

fn lease_ttl(s: &Settings) -> Result<u64> {
    let ttl = s.lease_ttl_secs.unwrap_or(DEFAULT_LEASE_TTL_SECS);
    if ttl < 2 {
        return Err(Error::invalid(
            "config",
            "lease_ttl_secs",
            ttl,
            "must be at least 2 (etcd's shortest lease)",
        ));
    }
    Ok(ttl)
}

/// An executor's configuration.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// Node id.
    pub id: String,
    /// `HOST:PORT` it listens on.
    pub listen: String,
    /// `HOST:PORT` others reach it at.
    pub advertise: String,
    /// CPU slots.
    pub cpu_slots: u32,
    /// Memory, MiB.
    pub memory_mb: u64,
    /// GPUs.
    pub gpus: u32,
    /// Coordination.
    pub coordinator: CoordinatorConfig,
    /// Artifact store URL.
    pub store_url: String,
    /// S3 settings for the store and for data sources.
    pub s3: S3Config,
    /// Lease TTL.
    pub lease_ttl: Duration,
    /// How often it looks for new tasks.
    pub poll: Duration,
    /// Serving: most records scored in one micro-batch.
    pub max_batch: usize,
    /// Serving: longest a micro-batch waits for more requests.
    pub batch_wait: Duration,
    /// `HOST:PORT` of the executor's SQL data service (Ballista's Arrow Flight).
    pub sql_listen: String,
}

impl ExecutorConfig {
    /// Fill unset settings with defaults.
    pub fn from_settings(s: &Settings) -> Result<Self> {
        let listen = s
            .listen
            .clone()
            .unwrap_or_else(|| format!("127.0.0.1:{DEFAULT_EXECUTOR_PORT}"));
        let store_url = match (&s.store, &s.data_dir) {
            (Some(url), _) => url.clone(),
            (None, Some(dir)) => file_url(&dir.join("store"))?,
            (None, None) => file_url(Path::new("halyard-data/store"))?,
        };
        let sql_listen = sql_listen(s, &listen);
        Ok(ExecutorConfig {
            id: s
                .id
                .clone()
                .unwrap_or_else(|| default_id("executor", &listen)),
            advertise: s.advertise.clone().unwrap_or_else(|| listen.clone()),
            listen,
            cpu_slots: s.cpu_slots.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
            }),
            memory_mb: s.memory_mb.unwrap_or(4096),
            gpus: s.gpus.unwrap_or(0),
            coordinator: CoordinatorConfig::from_settings(s),
            store_url,
            s3: s.s3.clone(),
            lease_ttl: Duration::from_secs(lease_ttl(s)?),
            poll: Duration::from_millis(100),
            max_batch: match s.max_batch {
                Some(0) => {
                    return Err(Error::invalid(
                        "config",
                        "max_batch",
                        0,
                        "must be at least 1",
                    ));
                }
                Some(n) => n,
                None => 256,
            },
            batch_wait: Duration::from_micros(s.batch_wait_us.unwrap_or(0)),
            sql_listen,
        })
    }

    /// Open the artifact store.
    pub fn open_store(&self) -> Result<Store> {
        Store::open(&self.store_url, &self.s3)
    }
}

/// A `file://` URL for a local folder, made absolute.
pub fn file_url(dir: &Path) -> Result<String> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let abs = std::fs::canonicalize(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(format!("file://{}", abs.display()))
}
