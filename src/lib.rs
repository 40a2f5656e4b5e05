//! The `halyard` binary's library: composes the roles. `halyard standalone` is a scheduler
//! and N executors in one process sharing the embedded coordinator and a local folder as
//! object store; tests start whole clusters in-process through [`start_standalone`].

pub mod train;

use std::path::PathBuf;

use halyard_core::config::{
    CoordinatorConfig, DEFAULT_DATA_DIR, DEFAULT_EXECUTORS, ExecutorConfig, SchedulerConfig,
    Settings,
};
use halyard_executor::{ExecutorHandle, start_executor};
use halyard_scheduler::{SchedulerHandle, start_scheduler};
use tracing::info;

/// Errors of composing a cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Settings or coordination.
    #[error(transparent)]
    Core(#[from] halyard_core::Error),
    /// The scheduler did not start.
    #[error(transparent)]
    Scheduler(#[from] halyard_scheduler::SchedulerError),
    /// An executor did not start.
    #[error(transparent)]
    Executor(#[from] halyard_executor::ExecutorError),
    /// A role that needs etcd was started without it.
    #[error(
        "halyard {0} needs etcd: pass --etcd HOST:PORT or set HALYARD_ETCD (for a one-process cluster without etcd, run `halyard standalone`)"
    )]
    NeedsEtcd(String),
}

/// The options of `halyard scheduler` and `halyard executor` need etcd.
fn require_etcd(s: &Settings, role: &str) -> Result<(), Error> {
    if s.etcd.as_ref().is_none_or(|e| e.is_empty()) {
        return Err(Error::NeedsEtcd(role.to_string()));
    }
    Ok(())
}

/// How long a node started without etcd in reach waits for it.
fn etcd_wait(s: &Settings) -> std::time::Duration {
    std::time::Duration::from_secs(
        s.etcd_wait_secs
            .unwrap_or(halyard_core::config::DEFAULT_ETCD_WAIT_SECS),
    )
}

/// Wait for Ctrl-C or SIGTERM.
async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// `halyard standalone`: run a standalone cluster until Ctrl-C or SIGTERM.
pub async fn run_standalone(settings: Settings) -> Result<(), Error> {
    let cluster = start_standalone(settings).await?;
    eprintln!(
        "halyard standalone: API on {}, {} executors, models in {}; admin key in {} (the CLI on this machine finds it); Ctrl-C stops",
        cluster.scheduler.addr,
        cluster.executors.len(),
        cluster.store_url,
        cluster.key_file.display()
    );
    wait_for_signal().await;
    cluster.stop().await;
    Ok(())
}

/// `halyard scheduler`: run a scheduler on etcd until Ctrl-C or SIGTERM.
pub async fn run_scheduler(settings: Settings) -> Result<(), Error> {
    require_etcd(&settings, "scheduler")?;
    let cfg = SchedulerConfig::from_settings(&settings)?;
    let coord = cfg
        .coordinator
        .connect_waiting(etcd_wait(&settings))
        .await?;
    let handle = start_scheduler(cfg, coord).await?;
    wait_for_signal().await;
    handle.stop().await;
    Ok(())
}

/// `halyard executor`: run an executor on etcd until Ctrl-C or SIGTERM.
pub async fn run_executor(settings: Settings) -> Result<(), Error> {
    require_etcd(&settings, "executor")?;
    let cfg = ExecutorConfig::from_settings(&settings)?;
    let coord = cfg
        .coordinator
        .connect_waiting(etcd_wait(&settings))
        .await?;
    let handle = start_executor(cfg, coord).await?;
    wait_for_signal().await;
    handle.stop().await;
    Ok(())
}

/// `halyard reseal`: seal again with the first encryption key every object of the store
/// sealed with another (key rotation); what it did, in words.
pub async fn reseal(settings: Settings) -> Result<String, Error> {
    let cfg = ExecutorConfig::from_settings(&settings)?;
    let store = cfg.open_store()?;
    let (seen, resealed) = store.reseal().await?;
    let key = cfg.sealer.as_ref().map_or("none", |s| s.id()).to_string();
    Ok(format!(
        "{resealed} of {seen} objects in {} sealed again with key {key}; objects sealed with an older key: none left",
        store.url()
    ))
}

/// A running standalone cluster.
pub struct Standalone {
    /// The scheduler (its `addr` is the cluster's API).
    pub scheduler: SchedulerHandle,
    /// The executors.
    pub executors: Vec<ExecutorHandle>,
    /// The object store's URL.
    pub store_url: String,
    /// The file holding the cluster's admin key (mode 0600).
    pub key_file: PathBuf,
    /// The admin key (`hk_…`): what the local CLI sends.
    pub admin_key: String,
    /// The coordination store its nodes share.
    pub coord: halyard_core::coord::Coordinator,
}

impl Standalone {
    /// Stop everything.
    pub async fn stop(self) {
        for e in self.executors {
            e.stop().await;
        }
        self.scheduler.stop().await;
    }
}

/// Start a scheduler and `executors` executors in this process. Coordination is embedded
/// unless `etcd` is set; the object store is `<data_dir>/store` unless `store` is set.
pub async fn start_standalone(settings: Settings) -> Result<Standalone, Error> {
    let data_dir = settings
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let settings = Settings {
        data_dir: Some(data_dir),
        ..settings
    };
    let coord = CoordinatorConfig::from_settings(&settings)?
        .connect()
        .await?;
    let mut sched_cfg = SchedulerConfig::from_settings(&settings)?;
    if settings.id.is_none() {
        sched_cfg.id = "standalone".into();
    }
    let n = settings.executors.unwrap_or(DEFAULT_EXECUTORS).max(1);
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get() as u32);
    let key_file = sched_cfg.key_file.clone();
    let scheduler = start_scheduler(sched_cfg, coord.clone()).await?;
    // The scheduler made the key file on its first start, or read the one there.
    let admin_key = std::fs::read_to_string(&key_file)
        .map_err(|source| halyard_core::Error::Io {
            path: key_file.clone(),
            source,
        })?
        .trim()
        .to_string();
    let mut executors = Vec::new();
    for i in 0..n {
        let exec_settings = Settings {
            listen: Some("127.0.0.1:0".into()),
            advertise: None,
            id: Some(format!("standalone-executor-{i}")),
            cpu_slots: Some(settings.cpu_slots.unwrap_or((cores / n).max(1))),
            ..settings.clone()
        };
        let cfg = ExecutorConfig::from_settings(&exec_settings)?;
        executors.push(start_executor(cfg, coord.clone()).await?);
    }
    // Every executor resolves the same store from the same settings.
    let store_url = ExecutorConfig::from_settings(&settings)?.store_url;
    info!(addr = %scheduler.addr, executors = n, store = %store_url, "standalone cluster up");
    Ok(Standalone {
        scheduler,
        executors,
        store_url,
        key_file,
        admin_key,
        coord,
    })
}
