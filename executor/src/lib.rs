//! `halyard-executor`: a worker. Registers itself with a lease, keeps the lease alive, takes
//! the tasks the leader assigns to it, trains on its own threads (never on the async
//! runtime), publishes the model to object storage and reports progress. It also serves
//! the deployed models ([`halyard_serving::Host`]) and the prediction API on its port.
//!
//! **Invariants.** It reports on a task only while its assignment stands (the coordinator
//! fences the write). When its lease is lost it stops its tasks and takes no work until it
//! has registered again.

mod error;
mod input;
mod parallel;
pub mod pipeline;
mod score;
mod task;
mod training;

pub use input::{Input, JobSeries, read_inputs, read_series};
pub use training::{
    Progress, Trained, placement, spawn_training, test_forecasts, test_predictions,
};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use halyard_core::auth::{BearerKey, is_loopback, node_key};
use halyard_core::config::ExecutorConfig;
use halyard_core::coord::Coordinator;
use halyard_core::metrics::{Metrics, Node};
use halyard_core::proto::prediction_service_server::PredictionServiceServer;
use halyard_core::records::{ExecutorInfo, now_ms};
use halyard_core::store::Store;
use halyard_core::tls::{Tls, TlsFiles, require_beyond_loopback};
use halyard_features::cluster::SqlExecutor;
use halyard_features::session::DataAccess;
use halyard_serving::access::Door;
use halyard_serving::grpc::PredictionApi;
use halyard_serving::{BatchConfig, Gateway, Host};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use error::{ExecutorError, Result};

/// A running executor.
pub struct ExecutorHandle {
    /// The address it listens on (prediction API over HTTP and gRPC, health).
    pub addr: SocketAddr,
    /// Its id.
    pub id: String,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl ExecutorHandle {
    /// Stop: cancel running tasks, revoke the lease, wait for the loops to end.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Start an executor: bind, register, then serve tasks in the background.
pub async fn start_executor(cfg: ExecutorConfig, coord: Coordinator) -> Result<ExecutorHandle> {
    let store = cfg.open_store()?;
    if cfg.gpus > 0 && !halyard_models::device::GPU_BUILD {
        warn!(
            gpus = cfg.gpus,
            "this executor advertises GPUs but was built without the `gpu` feature: GPU jobs placed here will fail; build with --features gpu"
        );
    }
    // The node's own key (made on a loopback node's first start); every request is
    // checked against the keys in the coordinator. Checked before anything listens.
    let metrics = Metrics::new(Node::Executor);
    let coord = coord.timed(&metrics);
    let token = node_key(&cfg.key_file, is_loopback(&cfg.listen), &coord).await?;
    require_beyond_loopback(&cfg.listen, cfg.tls.as_ref())?;
    // The SQL (Ballista) port too: it serves TLS with the same certificate.
    require_beyond_loopback(&cfg.sql_listen, cfg.tls.as_ref())?;
    let tls = cfg.tls.as_ref().map(TlsFiles::load).transpose()?;
    let (listener, addr) = halyard_core::bind(&cfg.listen).await?;
    let bearer = BearerKey::new(Some(&token))?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let advertise = if cfg.advertise.ends_with(":0") {
        addr.to_string()
    } else {
        cfg.advertise.clone()
    };
    // Event files are sealed with the node's key, if any; the SQL cluster opens them.
    let events = halyard_core::events::EventLog::open(
        &cfg.events_dir,
        &cfg.id,
        store.clone(),
        coord.clone(),
    )?;
    let host = Host::new(
        cfg.id.clone(),
        advertise.clone(),
        coord.clone(),
        store.clone(),
        BatchConfig {
            max_rows: cfg.max_batch,
            max_wait: cfg.batch_wait,
            plain_rows: cfg.plain_rows,
            ..BatchConfig::default()
        },
        metrics.clone(),
        events.clone(),
    );
    let gateway = Gateway::new(
        cfg.id.clone(),
        coord.clone(),
        Some(host.clone()),
        &token,
        tls.as_ref(),
        metrics.clone(),
        events,
    );
    let (_reporter, health) = tonic_health::server::health_reporter();
    // Data-parallel groups' ring links open here (an upgrade on this port, behind the door).
    let boxes = halyard_collective::Mailboxes::default();
    let grpc = tonic::service::Routes::new(health).add_service(PredictionServiceServer::new(
        PredictionApi::new(gateway.clone()),
    ));
    let http = halyard_serving::http::router(gateway.clone()).merge(boxes.router());
    let server = tokio::spawn(halyard_serving::http::serve(
        listener,
        http,
        grpc,
        Door::new(&coord, &cfg.id, tls.as_ref()),
        tls.clone(),
        shutdown_rx.clone(),
    ));
    let server = tokio::spawn(async move {
        if let Ok(Err(e)) = server.await {
            warn!(error = %e, "executor api stopped");
        }
    });
    let info = ExecutorInfo {
        id: cfg.id.clone(),
        address: advertise,
        cpu_slots: cfg.cpu_slots,
        memory_mb: cfg.memory_mb,
        gpus: cfg.gpus,
        version: halyard_core::VERSION.to_string(),
        started_ms: now_ms(),
    };
    let (sql_listener, _) = halyard_core::bind(&cfg.sql_listen).await?;
    let data = data_access(&cfg)?;
    let sql = SqlExecutor::start(
        &cfg.id,
        halyard_core::config::host_of(&info.address),
        sql_listener,
        cfg.cpu_slots.max(1) as usize,
        &data,
        &token,
        cfg.disk_budget,
        tls.as_ref(),
    )
    .await
    .map_err(|e| ExecutorError::Sql(e.to_string()))?;
    let lease = register_at_start(&coord, &info, &cfg).await?;
    info!(id = %cfg.id, %addr, slots = cfg.cpu_slots, store = %store.url(), "executor registered");
    let id = cfg.id.clone();
    let lease = Arc::new(AtomicI64::new(lease));
    let serving = tokio::spawn(host.run(lease.clone(), shutdown_rx.clone()));
    let routing = tokio::spawn(gateway.run(shutdown_rx.clone()));
    let sql = tokio::spawn(follow_sql_leader(sql, coord.clone(), shutdown_rx.clone()));
    let worker = tokio::spawn(run(
        cfg,
        coord,
        store,
        info,
        lease,
        Lent {
            boxes,
            bearer,
            tls,
            token: Arc::from(token.as_str()),
            metrics,
            data,
        },
        shutdown_rx,
    ));
    Ok(ExecutorHandle {
        addr,
        id,
        shutdown,
        tasks: vec![server, serving, routing, sql, worker],
    })
}

/// What this executor's SQL and jobs may read and write, and the keys its SQL seals with.
fn data_access(cfg: &ExecutorConfig) -> Result<DataAccess> {
    Ok(DataAccess::node(
        &cfg.s3,
        &cfg.roots,
        &cfg.store_url,
        cfg.sealer.as_ref(),
    )?)
}

/// Keep the embedded Ballista executor attached to the leader's SQL scheduler: it moves
/// when leadership moves.
async fn follow_sql_leader(
    mut sql: SqlExecutor,
    coord: Coordinator,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        match coord.sql_endpoint().await {
            Ok(endpoint) => sql.follow(endpoint.as_deref()),
            Err(e) => warn!(error = %e, "cannot read the sql endpoint"),
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
    sql.stop();
}

/// Register at start. An executor restarted at once after a crash finds its id still
/// held by its dead self's lease: it waits for that lease to end (two lease periods at
/// most) before it concludes that another live executor has the id.
async fn register_at_start(
    coord: &Coordinator,
    info: &ExecutorInfo,
    cfg: &ExecutorConfig,
) -> Result<i64> {
    let deadline =
        tokio::time::Instant::now() + 2 * cfg.lease_ttl + std::time::Duration::from_secs(1);
    let mut told = false;
    loop {
        match register(coord, info, cfg).await {
            Err(ExecutorError::Core(halyard_core::Error::IdInUse(id)))
                if tokio::time::Instant::now() < deadline =>
            {
                if !told {
                    info!(%id, lease_ttl = ?cfg.lease_ttl, "the id is still registered (a previous run's lease?): waiting for it to end");
                    told = true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            other => return other,
        }
    }
}

async fn register(coord: &Coordinator, info: &ExecutorInfo, cfg: &ExecutorConfig) -> Result<i64> {
    let lease = coord.grant_lease(cfg.lease_ttl).await?;
    if let Err(e) = coord.register_executor(info, lease).await {
        // Unused: let it go now rather than at the end of its time-to-live.
        let _ = coord.revoke(lease).await;
        return Err(e.into());
    }
    Ok(lease)
}

/// One running task: its cancel flag and the join handle of its driver.
struct Running {
    cancel: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

/// What the executor lends its tasks: for a data-parallel group to reach its peers, the
/// mailboxes their chunks arrive in and the node's key for pushing to the next rank; and
/// the node's metrics.
struct Lent {
    boxes: halyard_collective::Mailboxes,
    bearer: BearerKey,
    /// TLS for calls to other nodes.
    tls: Option<Tls>,
    /// The node key's text (the SQL scheduler's door reads it).
    token: Arc<str>,
    metrics: Metrics,
    /// What its jobs' SQL may read and write.
    data: DataAccess,
}

/// The executor's loop: keep the lease alive, start assigned tasks, stop revoked ones.
async fn run(
    cfg: ExecutorConfig,
    coord: Coordinator,
    store: Store,
    info: ExecutorInfo,
    lease_cell: Arc<AtomicI64>,
    lent: Lent,
    mut shutdown: watch::Receiver<bool>,
) {
    let Lent {
        boxes,
        bearer,
        tls,
        token,
        metrics,
        data,
    } = lent;
    let mut lease = lease_cell.load(Ordering::Relaxed);
    let renew_every = cfg.lease_ttl / 3;
    let mut renewed = std::time::Instant::now();
    let mut running: HashMap<(String, u32), Running> = HashMap::new();
    // A task assigned or taken away wakes the loop at once; the poll stays for a broken
    // watch and the lease.
    let wake = coord.task_wake(&cfg.id);
    loop {
        if *shutdown.borrow() {
            break;
        }
        if renewed.elapsed() >= renew_every {
            match coord.keep_alive(lease).await {
                Ok(()) => renewed = std::time::Instant::now(),
                Err(e) => {
                    // Lost (expired or unreachable): cancel every task, then register anew
                    // at once. The tasks end on their own (a step, an S3 retry can take a
                    // while); their assignments went with the lease, so nothing they write
                    // after is taken (writes are fenced on the assignment).
                    warn!(id = %cfg.id, error = %e, "lease lost; cancelling tasks and taking no work");
                    drop(cancel_all(&mut running));
                    match register(&coord, &info, &cfg).await {
                        Ok(l) => {
                            lease = l;
                            lease_cell.store(l, Ordering::Relaxed);
                            renewed = std::time::Instant::now();
                            info!(id = %cfg.id, "registered again");
                        }
                        Err(e) => warn!(error = %e, "cannot register again; retrying"),
                    }
                    tokio::time::sleep(cfg.poll).await;
                    continue;
                }
            }
        }
        match coord.tasks_for(&cfg.id).await {
            Ok(assigned) => {
                let used: u32 = assigned.iter().map(|a| a.value.spec.resources.cpus).sum();
                let slots = &metrics.executor_slots;
                slots.with_label_values(&["used"]).set(i64::from(used));
                slots
                    .with_label_values(&["free"])
                    .set(i64::from(cfg.cpu_slots.saturating_sub(used)));
                let current: Vec<(String, u32)> = assigned
                    .iter()
                    .map(|a| (a.value.job_id.clone(), a.value.attempt))
                    .collect();
                // Tasks taken away (cancelled, or requeued elsewhere) stop. A finished task
                // stays known until the leader releases its assignment, so it never runs twice.
                for (key, r) in &running {
                    if !current.contains(key) {
                        r.cancel.store(true, Ordering::Relaxed);
                    }
                }
                running.retain(|key, r| current.contains(key) || !r.handle.is_finished());
                for a in assigned {
                    let key = (a.value.job_id.clone(), a.value.attempt);
                    if running.contains_key(&key) {
                        continue;
                    }
                    info!(job = %a.value.job_id, attempt = a.value.attempt, "task started");
                    let cancel = Arc::new(AtomicBool::new(false));
                    let handle = tokio::spawn(task::run(task::Task {
                        a,
                        coord: coord.clone(),
                        store: store.clone(),
                        data: data.clone(),
                        gpus: cfg.gpus,
                        cancel: cancel.clone(),
                        boxes: boxes.clone(),
                        key: bearer.clone(),
                        token: token.clone(),
                        tls: tls.clone(),
                        metrics: metrics.clone(),
                    }));
                    running.insert(key, Running { cancel, handle });
                }
            }
            Err(e) => warn!(error = %e, "cannot read assignments"),
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.poll) => {}
            () = wake.changed() => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
    stop_all(&mut running).await;
    let _ = coord.revoke(lease).await;
    info!(id = %cfg.id, "executor stopped");
}

/// Cancel every task and forget it: each ends when it next looks at its flag.
fn cancel_all(running: &mut HashMap<(String, u32), Running>) -> Vec<JoinHandle<()>> {
    running
        .drain()
        .map(|(_, r)| {
            r.cancel.store(true, Ordering::Relaxed);
            r.handle
        })
        .collect()
}

/// Cancel every task and wait for each to end.
async fn stop_all(running: &mut HashMap<(String, u32), Running>) {
    for handle in cancel_all(running) {
        let _ = handle.await;
    }
}
