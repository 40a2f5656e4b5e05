//! Role configuration, resolved in one place: command-line flags, then `HALYARD_*`
//! environment variables (the binary derives both from [`SETTINGS`]), then the config
//! file (`--config FILE`, TOML with the keys of [`Settings`]), then defaults. Each setting
//! is declared once, in the `settings!` block below.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::confine::Roots;
use crate::coord::Coordinator;
use crate::error::{Error, Result};
use crate::kv::{EmbeddedKv, EtcdAccess, EtcdKv};
use crate::seal::Sealer;
use crate::store::{S3Config, Store};
use crate::tls::TlsFiles;

/// Declares every setting once — its name, type, default and doc — and derives from that
/// one declaration the [`Settings`] struct (the config file's keys), the merging of layers
/// ([`Settings::or`]), the parsing of flag and environment values ([`Settings::set`]) and
/// [`SETTINGS`], the table the binary builds its flags (`--NAME-WITH-DASHES`) and
/// `HALYARD_NAME` variables from and `docs/configuration.md` is generated from.
macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])+
        $field:ident: $ty:ty, default: $default:expr $(, $secret:ident)?;
    )*) => {
        /// Every setting a role can take, each optional: the layers are merged with
        /// [`Settings::or`], and each role config fills what is still unset with its
        /// defaults. Declared once, with [`SETTINGS`], by `settings!`.
        #[derive(Debug, Clone, Default, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct Settings {
            $( $(#[doc = $doc])+ pub $field: Option<$ty>, )*
        }

        impl Settings {
            /// `self`, with what it leaves unset taken from `lower`.
            pub fn or(self, lower: Settings) -> Settings {
                Settings { $( $field: self.$field.or(lower.$field), )* }
            }

            /// Set the setting `key` from a flag's or a variable's text (a list is
            /// comma-separated).
            pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
                match key {
                    $( stringify!($field) => {
                        self.$field = Some(SettingValue::parse(value).map_err(|reason| {
                            Error::invalid("config", key, value, reason)
                        })?);
                    } )*
                    _ => return Err(Error::invalid("config", key, value, "no such setting")),
                }
                Ok(())
            }
        }

        /// Every setting, in declaration order.
        pub const SETTINGS: &[SettingDef] = &[
            $( SettingDef {
                key: stringify!($field),
                doc: concat!($($doc, "\n"),+),
                default: || ($default).to_string(),
                secret: settings!(@secret $($secret)?),
            }, )*
        ];
    };
    (@secret) => { false };
    (@secret secret) => { true };
}

/// One setting's declaration: what the flags, variables and docs are derived from.
#[derive(Debug, Clone, Copy)]
pub struct SettingDef {
    /// The config file's key; the flag is `--` and the key with `-` for `_`, the
    /// variable `HALYARD_` and the key in capitals.
    pub key: &'static str,
    /// What it sets (the doc comment's lines).
    pub doc: &'static str,
    /// What an unset setting means, as text.
    pub default: fn() -> String,
    /// A secret: its value is never shown (in `--help` or the environment).
    pub secret: bool,
}

impl SettingDef {
    /// The command-line flag, without its dashes: `lease-ttl`.
    pub fn flag(&self) -> String {
        self.key.replace('_', "-")
    }

    /// The environment variable: `HALYARD_LEASE_TTL`.
    pub fn env(&self) -> String {
        format!("HALYARD_{}", self.key.to_uppercase())
    }

    /// The doc as one line.
    pub fn help(&self) -> String {
        self.doc.split_whitespace().collect::<Vec<_>>().join(" ")
    }
}

/// A setting's type, parsed from a flag's or a variable's text.
trait SettingValue: Sized {
    fn parse(text: &str) -> std::result::Result<Self, String>;
}

macro_rules! setting_value_from_str {
    ($($t:ty),*) => {$(
        impl SettingValue for $t {
            fn parse(text: &str) -> std::result::Result<Self, String> {
                text.trim().parse().map_err(|e| format!("{e}"))
            }
        }
    )*};
}
setting_value_from_str!(String, PathBuf, u64, u32, usize);

impl SettingValue for Vec<String> {
    fn parse(text: &str) -> std::result::Result<Self, String> {
        Ok(text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect())
    }
}

settings! {
    /// `HOST:PORT` to listen on.
    listen: String, default: format!(
        "127.0.0.1:{DEFAULT_SCHEDULER_PORT} (scheduler, standalone), 127.0.0.1:{DEFAULT_EXECUTOR_PORT} (executor)"
    );
    /// `HOST:PORT` other nodes use to reach this one.
    advertise: String, default: "`listen`";
    /// Node id.
    id: String, default: "ROLE-HOSTNAME-PORT";
    /// etcd endpoints, comma-separated; required by `scheduler` and `executor`, while
    /// `standalone` uses its embedded coordinator without it.
    etcd: Vec<String>, default: "none";
    /// The CA certificate (PEM) of etcd's server certificate: the connection to etcd is
    /// TLS.
    etcd_ca: PathBuf, default: "none: plaintext";
    /// This node's client certificate (PEM) for an etcd started with `--client-cert-auth`.
    etcd_cert: PathBuf, default: "none";
    /// The private key of `etcd_cert` (PEM).
    etcd_key: PathBuf, default: "none";
    /// An etcd user (etcd's own authentication, `etcdctl auth enable`).
    etcd_user: String, default: "none";
    /// The etcd user's password; never logged or shown.
    etcd_password: String, default: "none", secret;
    /// Key prefix of this cluster in etcd (several clusters can share one etcd).
    etcd_root: String, default: DEFAULT_ETCD_ROOT;
    /// Seconds a scheduler or executor started while etcd cannot be reached keeps trying
    /// (with backoff, 0.25 s doubling to 5 s, each failure logged) before it exits; a
    /// refused user or password, or an etcd certificate `etcd_ca` did not sign, ends it at
    /// once.
    etcd_wait_secs: u64, default: DEFAULT_ETCD_WAIT_SECS;
    /// Object store URL: `file:///dir` or `s3://bucket/prefix`.
    store: String, default: "`data_dir`/store";
    /// Folder for local state and the default object store.
    data_dir: PathBuf, default: DEFAULT_DATA_DIR;
    /// File holding the cluster's admin key (`hk_…`): the node's own credential. A node
    /// listening on loopback makes it (mode 0600) when it is missing; any other node needs
    /// it.
    key_file: PathBuf, default: "`data_dir`/admin.key";
    /// Folders and buckets jobs and SQL may read and write, comma-separated: folders,
    /// `file://` URLs, `s3://bucket` or `s3://bucket/prefix`. Anything else (`..`, a
    /// symbolic link out of a root, another bucket) is refused before it is touched.
    data_roots: Vec<String>, default: "`data_dir`, the working directory and `store`";
    /// Scheduler: most unfinished jobs one API key may have at once.
    jobs_per_key: u32, default: DEFAULT_JOBS_PER_KEY;
    /// Scheduler: days the audit log keeps an event (the leader deletes older ones
    /// hourly); 0 keeps every event.
    audit_days: u32, default: DEFAULT_AUDIT_DAYS;
    /// Scheduler: hours between the leader's garbage collections of the object store
    /// (`halyard gc` runs one at once); 0: never.
    gc_hours: u64, default: crate::gc::DEFAULT_GC_HOURS;
    /// Garbage collection: minutes an object is left alone after it was written, whatever
    /// the records say.
    gc_grace_mins: u64, default: crate::gc::DEFAULT_GC_GRACE_MINS;
    /// Garbage collection: failed or cancelled jobs whose checkpoints and feature tables
    /// are kept for `halyard resume`, newest first.
    keep_checkpoints: u32, default: crate::gc::DEFAULT_KEEP_CHECKPOINTS;
    /// Garbage collection: days an ended job's feature table is kept; 0 keeps it for ever.
    keep_feature_days: u32, default: crate::gc::DEFAULT_KEEP_FEATURE_DAYS;
    /// This node's TLS certificate chain (PEM): its port serves TLS.
    tls_cert: PathBuf, default: "none: plaintext, loopback only";
    /// The private key of `tls_cert` (PEM).
    tls_key: PathBuf, default: "none";
    /// The cluster's CA certificate (PEM): calls between nodes use mutual TLS, and routes
    /// only nodes may call need a client certificate it signed.
    tls_ca: PathBuf, default: "none";
    /// Client-side encryption of what nodes write to the object store (artifacts,
    /// feature tables, checkpoints, event files; every scheduler and executor needs it): a
    /// 64-hex-digit AES-256 key (several, comma-separated, while rotating: the first
    /// seals, every one opens); never logged or shown.
    encryption_key: String, default: "none", secret;
    /// A file holding the encryption keys (64 hex digits, one per line, the sealing key
    /// first), instead of `encryption_key`.
    encryption_key_file: PathBuf, default: "none";
    /// Lease time-to-live in seconds: a dead executor or leader is noticed within this.
    lease_ttl: u64, default: DEFAULT_LEASE_TTL_SECS;
    /// Executor: CPU slots offered to tasks.
    cpu_slots: u32, default: "all cores (standalone: cores / executors)";
    /// Executor: memory offered to tasks, MiB; and, counted apart, to the deployed models
    /// the leader places on it (docs/serving.md).
    memory_mb: u64, default: DEFAULT_MEMORY_MB;
    /// Executor: GPUs offered.
    gpus: u32, default: 0;
    /// Executor: MiB its SQL work folder (shuffle files and results, in `TMPDIR`) may
    /// hold: a task that would start past it fails naming the folder and the budget (a task
    /// also fails before writing when its disk has less than 64 MiB left); 0: no budget.
    disk_budget_mb: u64, default: 0;
    /// Standalone: executors started in the process.
    executors: u32, default: DEFAULT_EXECUTORS;
    /// Serving: most records an executor scores in one micro-batch.
    max_batch: usize, default: DEFAULT_MAX_BATCH;
    /// Serving: longest a micro-batch waits for more requests, in microseconds; 0 scores
    /// a lone request at once and batches only what queues under load.
    batch_wait_us: u64, default: 0;
    /// Serving: a request of at most this many records to a logistic regression or an MLP
    /// is scored on plain arrays, without candle's allocation per operation (about 4× less
    /// time for one record); larger batches use candle's matrix products, faster from about
    /// five rows on. 0: candle for every request.
    plain_rows: usize, default: DEFAULT_PLAIN_ROWS;
    /// `HOST:PORT` of the SQL (Ballista) service: the leader's scheduler, an executor's
    /// data (Arrow Flight) service; advertised through the coordinator (port 0 picks a
    /// free one).
    sql_listen: String, default: "the `listen` host, a free port";
    /// S3 endpoint URL of an S3-compatible server, such as `http://127.0.0.1:9000`.
    s3_endpoint: String, default: "AWS_ENDPOINT_URL, else AWS";
    /// S3 region.
    s3_region: String, default: "AWS_REGION, else us-east-1";
    /// S3 access key id.
    s3_access_key_id: String, default: "AWS_ACCESS_KEY_ID";
    /// S3 secret access key; never logged or shown.
    s3_secret_access_key: String, default: "AWS_SECRET_ACCESS_KEY", secret;
    /// CA certificates (a PEM bundle) to trust for an `https://` S3 endpoint, beside the
    /// system's (a private S3 server's own CA).
    s3_ca_file: PathBuf, default: "the system's roots only";
    /// Seconds an S3 read or write is retried, with backoff and jitter, while the server
    /// is unreachable or failing, before the task fails (serving keeps what it loaded).
    s3_retry_secs: u64, default: crate::store::DEFAULT_S3_RETRY_SECS;
}

impl Settings {
    /// Read a TOML config file (the keys of [`SETTINGS`]).
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

    /// The S3 settings.
    pub fn s3(&self) -> S3Config {
        S3Config {
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            access_key_id: self.s3_access_key_id.clone(),
            secret_access_key: self.s3_secret_access_key.clone(),
            ca_file: self.s3_ca_file.clone(),
            retry_secs: self.s3_retry_secs,
        }
    }

    /// `self` with the S3 settings of `s3`.
    pub fn with_s3(self, s3: S3Config) -> Settings {
        Settings {
            s3_endpoint: s3.endpoint,
            s3_region: s3.region,
            s3_access_key_id: s3.access_key_id,
            s3_secret_access_key: s3.secret_access_key,
            s3_ca_file: s3.ca_file,
            s3_retry_secs: s3.retry_secs,
            ..self
        }
    }
}

/// `docs/configuration.md`'s table of settings, generated from [`SETTINGS`].
pub fn settings_table() -> String {
    let mut out = String::from(
        "| file key | flag | variable | default | what it sets |\n|---|---|---|---|---|\n",
    );
    for s in SETTINGS {
        out.push_str(&format!(
            "| `{}` | `--{}` | `{}` | {} | {} |\n",
            s.key,
            s.flag(),
            s.env(),
            (s.default)(),
            s.help()
        ));
    }
    out
}

/// Default scheduler port.
pub const DEFAULT_SCHEDULER_PORT: u16 = 7070;
/// Default executor port.
pub const DEFAULT_EXECUTOR_PORT: u16 = 7071;
/// Default lease TTL, seconds: how long a dead node goes unnoticed at most.
pub const DEFAULT_LEASE_TTL_SECS: u64 = 5;
/// Default key prefix in etcd.
pub const DEFAULT_ETCD_ROOT: &str = "/halyard";

/// Default of `etcd_wait_secs`: as long as the object store's retries.
pub const DEFAULT_ETCD_WAIT_SECS: u64 = 120;
/// Most unfinished jobs one key may have.
pub const DEFAULT_JOBS_PER_KEY: u32 = 16;
/// Days the audit log keeps an event.
pub const DEFAULT_AUDIT_DAYS: u32 = 90;
/// Default folder of local state (standalone's store).
pub const DEFAULT_DATA_DIR: &str = "halyard-data";
/// Default memory an executor offers, MiB.
pub const DEFAULT_MEMORY_MB: u64 = 4096;
/// Default executors of a standalone cluster.
pub const DEFAULT_EXECUTORS: u32 = 2;
/// Default most records of a serving micro-batch.
pub const DEFAULT_MAX_BATCH: usize = 256;
/// Records a request may have at most to be scored on plain arrays.
pub const DEFAULT_PLAIN_ROWS: usize = 4;

/// Where coordination state lives.
#[derive(Debug, Clone)]
pub enum CoordinatorConfig {
    /// A real etcd cluster.
    Etcd {
        /// Endpoints.
        endpoints: Vec<String>,
        /// Key prefix.
        root: String,
        /// TLS and user authentication.
        access: EtcdAccess,
    },
    /// In-process (standalone mode), kept in a journal file.
    Embedded {
        /// The journal (`<data dir>/coordinator.journal`).
        journal: PathBuf,
    },
}

impl CoordinatorConfig {
    /// Embedded unless etcd endpoints are set.
    pub fn from_settings(s: &Settings) -> Result<Self> {
        let access = EtcdAccess {
            ca: s.etcd_ca.clone(),
            cert: match (&s.etcd_cert, &s.etcd_key) {
                (Some(c), Some(k)) => Some((c.clone(), k.clone())),
                (None, None) => None,
                (Some(p), None) | (None, Some(p)) => {
                    return Err(Error::invalid(
                        "config",
                        "etcd_cert",
                        p.display(),
                        "--etcd-cert and --etcd-key come together",
                    ));
                }
            },
            user: match (&s.etcd_user, &s.etcd_password) {
                (Some(u), Some(p)) => Some((u.clone(), p.clone())),
                (None, None) => None,
                _ => {
                    return Err(Error::invalid(
                        "config",
                        "etcd_user",
                        s.etcd_user.as_deref().unwrap_or("(none)"),
                        "--etcd-user and --etcd-password come together",
                    ));
                }
            },
        };
        Ok(match &s.etcd {
            Some(endpoints) if !endpoints.is_empty() => CoordinatorConfig::Etcd {
                endpoints: endpoints.clone(),
                root: s
                    .etcd_root
                    .clone()
                    .unwrap_or_else(|| DEFAULT_ETCD_ROOT.into()),
                access,
            },
            _ => CoordinatorConfig::Embedded {
                journal: data_dir(s).join("coordinator.journal"),
            },
        })
    }

    /// [`connect`](Self::connect), trying again with backoff (0.25 s doubling to 5 s) while
    /// etcd cannot be reached, for up to `wait`: a node started before etcd, or during its
    /// restart, waits for it instead of exiting. Refused credentials
    /// ([`Error::CoordinatorRefused`]) end it at once.
    pub async fn connect_waiting(&self, wait: std::time::Duration) -> Result<Coordinator> {
        let started = tokio::time::Instant::now();
        let mut pause = std::time::Duration::from_millis(250);
        loop {
            match self.connect().await {
                Err(Error::Coordinator(why)) if started.elapsed() + pause < wait => {
                    tracing::warn!(error = %why, retry_in = ?pause, waited = ?started.elapsed(), "etcd cannot be reached yet: trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_secs(5));
                }
                other => return other,
            }
        }
    }

    /// Connect to etcd; the embedded coordinator cannot be shared between processes,
    /// so a scheduler or executor needs etcd.
    pub async fn connect(&self) -> Result<Coordinator> {
        match self {
            CoordinatorConfig::Etcd {
                endpoints,
                root,
                access,
            } => {
                let kv = EtcdKv::connect(endpoints, access).await?;
                Ok(Coordinator::new(Arc::new(kv), root))
            }
            CoordinatorConfig::Embedded { journal } => Ok(Coordinator::new(
                Arc::new(EmbeddedKv::open(journal)?),
                DEFAULT_ETCD_ROOT,
            )),
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
    /// The file of the cluster's admin key, the node's own credential.
    pub key_file: PathBuf,
    /// Where jobs and SQL may read and write.
    pub roots: Roots,
    /// Most unfinished jobs one key may have.
    pub jobs_per_key: u32,
    /// TLS of its port and its calls to other nodes.
    pub tls: Option<TlsFiles>,
    /// Object store URL (the event log's Parquet files).
    pub store_url: String,
    /// How long the audit log keeps an event; `None`: for ever.
    pub audit_retention: Option<Duration>,
    /// The folder of the node's event log (`<data dir>/events`).
    pub events_dir: PathBuf,
    /// What garbage collection may remove.
    pub gc: crate::gc::GcPolicy,
    /// Time between the leader's garbage collections; `None`: never.
    pub gc_every: Option<Duration>,
    /// Client-side encryption: its event files, and the feature tables and event files
    /// its SQL scheduler reads.
    pub sealer: Option<Arc<Sealer>>,
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
            coordinator: CoordinatorConfig::from_settings(s)?,
            lease_ttl: Duration::from_secs(lease_ttl(s)?),
            sql_listen: sql_listen(s, &listen),
            advertise_host: host_of(s.advertise.as_deref().unwrap_or(&listen)).to_string(),
            s3: s.s3(),
            key_file: key_file(s),
            roots: data_roots(s, &store_url(s)?)?,
            sealer: Sealer::from_settings(s)?.map(Arc::new),
            jobs_per_key: s.jobs_per_key.unwrap_or(DEFAULT_JOBS_PER_KEY),
            tls: TlsFiles::from_settings(s)?,
            store_url: store_url(s)?,
            events_dir: events_dir(s),
            audit_retention: match s.audit_days.unwrap_or(DEFAULT_AUDIT_DAYS) {
                0 => None,
                days => Some(Duration::from_secs(u64::from(days) * 86_400)),
            },
            gc: gc_policy(s),
            gc_every: match s.gc_hours.unwrap_or(crate::gc::DEFAULT_GC_HOURS) {
                0 => None,
                hours => Some(Duration::from_secs(hours * 3600)),
            },
            listen,
            tick: Duration::from_millis(100),
            max_attempts: 5,
        })
    }
}

/// What garbage collection may remove.
fn gc_policy(s: &Settings) -> crate::gc::GcPolicy {
    use crate::gc::*;
    GcPolicy::new(
        s.gc_grace_mins.unwrap_or(DEFAULT_GC_GRACE_MINS),
        s.keep_checkpoints.unwrap_or(DEFAULT_KEEP_CHECKPOINTS),
        s.keep_feature_days.unwrap_or(DEFAULT_KEEP_FEATURE_DAYS),
    )
}

/// The folder of local state.
fn data_dir(s: &Settings) -> PathBuf {
    s.data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
}

/// The folder of a node's event log.
fn events_dir(s: &Settings) -> PathBuf {
    data_dir(s).join("events")
}

/// The file of the cluster's admin key.
fn key_file(s: &Settings) -> PathBuf {
    s.key_file
        .clone()
        .unwrap_or_else(|| data_dir(s).join(crate::auth::ADMIN_KEY_FILE))
}

/// The object store's URL: `store`, else the data directory's `store` folder (made).
fn store_url(s: &Settings) -> Result<String> {
    match &s.store {
        Some(url) => Ok(url.clone()),
        None => file_url(&data_dir(s).join("store")),
    }
}

/// The keys and the store's URL of client-side encryption, for a command that reads the
/// store with SQL on this machine (`halyard sql`): from the environment the nodes take
/// them from (`HALYARD_ENCRYPTION_KEY_FILE` or `HALYARD_ENCRYPTION_KEY`, `HALYARD_STORE`,
/// `HALYARD_DATA_DIR`); `None` without a key.
pub fn sealing_from_env() -> Result<Option<(String, Arc<Sealer>)>> {
    let mut s = Settings::default();
    for def in SETTINGS
        .iter()
        .filter(|d| ["encryption_key", "encryption_key_file", "store", "data_dir"].contains(&d.key))
    {
        if let Ok(value) = std::env::var(def.env()) {
            s.set(def.key, &value)?;
        }
    }
    match Sealer::from_settings(&s)? {
        Some(sealer) => Ok(Some((store_url(&s)?, Arc::new(sealer)))),
        None => Ok(None),
    }
}

/// The data roots: those set, else the data directory and the working directory; the
/// object store is always one (feature tables are written there).
pub fn data_roots(s: &Settings, store_url: &str) -> Result<Roots> {
    let cwd = std::env::current_dir().map_err(|source| Error::Io {
        path: PathBuf::from("."),
        source,
    })?;
    let entries = match &s.data_roots {
        Some(list) if !list.is_empty() => list.clone(),
        _ => vec![data_dir(s).display().to_string(), cwd.display().to_string()],
    };
    Roots::parse(&entries, &cwd)?.with(store_url)
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
    let ttl = s.lease_ttl.unwrap_or(DEFAULT_LEASE_TTL_SECS);
    if ttl < 2 {
        return Err(Error::invalid(
            "config",
            "lease_ttl",
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
    /// Bytes the SQL work folder may hold; `None`: no budget.
    pub disk_budget: Option<u64>,
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
    /// Serving: most records a request may have to be scored on plain arrays.
    pub plain_rows: usize,
    /// `HOST:PORT` of the executor's SQL data service (Ballista's Arrow Flight).
    pub sql_listen: String,
    /// The file of the cluster's admin key, the node's own credential.
    pub key_file: PathBuf,
    /// Where jobs and SQL may read and write.
    pub roots: Roots,
    /// TLS of its port and its calls to other nodes.
    pub tls: Option<TlsFiles>,
    /// Client-side encryption of the store's objects.
    pub sealer: Option<Arc<Sealer>>,
    /// The folder of the node's event log (`<data dir>/events`).
    pub events_dir: PathBuf,
}

impl ExecutorConfig {
    /// Fill unset settings with defaults.
    pub fn from_settings(s: &Settings) -> Result<Self> {
        let listen = s
            .listen
            .clone()
            .unwrap_or_else(|| format!("127.0.0.1:{DEFAULT_EXECUTOR_PORT}"));
        let store_url = store_url(s)?;
        let sql_listen = sql_listen(s, &listen);
        let roots = data_roots(s, &store_url)?;
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
            memory_mb: s.memory_mb.unwrap_or(DEFAULT_MEMORY_MB),
            gpus: s.gpus.unwrap_or(0),
            disk_budget: s.disk_budget_mb.filter(|&mb| mb > 0).map(|mb| mb << 20),
            coordinator: CoordinatorConfig::from_settings(s)?,
            store_url,
            s3: s.s3(),
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
                None => DEFAULT_MAX_BATCH,
            },
            batch_wait: Duration::from_micros(s.batch_wait_us.unwrap_or(0)),
            plain_rows: s.plain_rows.unwrap_or(DEFAULT_PLAIN_ROWS),
            sql_listen,
            key_file: key_file(s),
            roots,
            tls: TlsFiles::from_settings(s)?,
            sealer: Sealer::from_settings(s)?.map(Arc::new),
            events_dir: events_dir(s),
        })
    }

    /// Open the artifact store.
    pub fn open_store(&self) -> Result<Store> {
        Ok(Store::open(&self.store_url, &self.s3)?.sealed(self.sealer.clone()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_configuration_md_lists_every_setting_as_declared() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
        let text = std::fs::read_to_string(&path).unwrap();
        let (begin, end) = (
            "<!-- settings: begin (generated) -->\n",
            "<!-- settings: end -->",
        );
        let a = text.find(begin).expect("the begin marker") + begin.len();
        let b = text.find(end).expect("the end marker");
        let table = settings_table();
        if text[a..b] == table {
            return;
        }
        if std::env::var_os("HALYARD_UPDATE_DOCS").is_some() {
            std::fs::write(&path, format!("{}{table}{}", &text[..a], &text[b..])).unwrap();
            return;
        }
        panic!(
            "{} is stale: run HALYARD_UPDATE_DOCS=1 cargo test -p halyard-core --lib config",
            path.display()
        );
    }

    #[test]
    fn flags_and_variables_set_each_setting_by_its_type() {
        let mut s = Settings::default();
        s.set("etcd", "a:2379, b:2379").unwrap();
        s.set("lease_ttl", "7").unwrap();
        s.set("data_dir", "/tmp/x").unwrap();
        assert_eq!(
            s.etcd,
            Some(vec!["a:2379".to_string(), "b:2379".to_string()])
        );
        assert_eq!(s.lease_ttl, Some(7));
        assert_eq!(s.data_dir, Some(PathBuf::from("/tmp/x")));
        let err = s.set("lease_ttl", "soon").unwrap_err().to_string();
        assert!(err.contains("lease_ttl") && err.contains("soon"), "{err}");
        assert!(s.set("no_such_thing", "1").is_err());
        // Every declared setting is reachable by its key.
        for def in SETTINGS {
            Settings::default().set(def.key, "3").unwrap();
        }
    }

    #[test]
    fn layers_merge_key_by_key_and_a_file_uses_the_same_keys() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("halyard.toml");
        std::fs::write(
            &file,
            "lease_ttl = 9\nmemory_mb = 512\ns3_region = \"eu-west-1\"\n",
        )
        .unwrap();
        let from_file = Settings::from_file(&file).unwrap();
        let mut flags = Settings::default();
        flags.set("lease_ttl", "3").unwrap();
        let s = flags.or(from_file);
        assert_eq!(s.lease_ttl, Some(3));
        assert_eq!(s.memory_mb, Some(512));
        assert_eq!(s.s3().region.as_deref(), Some("eu-west-1"));
        std::fs::write(&file, "lease_ttl_secs = 9\n").unwrap();
        assert!(
            Settings::from_file(&file).is_err(),
            "an unknown key is refused"
        );
    }
}
