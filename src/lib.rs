//! The `halyard` binary's library: composes the roles. `halyard standalone` is a scheduler
//! and N executors in one process sharing the embedded coordinator and a local folder as
//! object store; tests start whole clusters in-process through [`start_standalone`].

pub mod train;

use std::path::PathBuf;

use halyard_core::config::{CoordinatorConfig, ExecutorConfig, SchedulerConfig, Settings};
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
}

/// A running standalone cluster.
pub struct Standalone {
    /// The scheduler (its `addr` is the cluster's API).
    pub scheduler: SchedulerHandle,
    /// The executors.
    pub executors: Vec<ExecutorHandle>,
    /// The object store's URL.
    pub store_url: String,
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

/// Default folder of standalone state.
pub const DEFAULT_DATA_DIR: &str = "halyard-data";

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
    let coord = CoordinatorConfig::from_settings(&settings)
        .connect()
        .await?;
    let mut sched_cfg = SchedulerConfig::from_settings(&settings)?;
    if settings.id.is_none() {
        sched_cfg.id = "standalone".into();
    }
    let n = settings.executors.unwrap_or(2).max(1);
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get() as u32);
    let scheduler = start_scheduler(sched_cfg, coord.clone()).await?;
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
    })
}
