//! `halyard-scheduler`: the control plane. Serves the job API and the model registry
//! (gRPC) and the prediction gateway (HTTP/JSON and gRPC) on one port, campaigns for
//! leadership through the coordinator, and, while leader, places pending jobs on executors
//! with free slots, requeues the tasks of executors whose lease expired, and finishes jobs
//! from their executors' reports.
//!
//! **Invariants.** Only the leader changes a job's state, and every such write is fenced on
//! its leadership ([`halyard_core::coord`]). Nothing here lives only in memory: a standby
//! that takes over resumes from the coordinator's state.

mod console;
mod decide;
mod error;
mod keys;
mod leader;
mod models;
mod report;
mod service;

use std::net::SocketAddr;

use halyard_core::auth::{is_loopback, node_key};
use halyard_core::config::SchedulerConfig;
use halyard_core::coord::Coordinator;
use halyard_core::metrics::{Metrics, Node};
use halyard_core::proto::job_service_server::JobServiceServer;
use halyard_core::proto::key_service_server::KeyServiceServer;
use halyard_core::proto::model_service_server::ModelServiceServer;
use halyard_core::proto::prediction_service_server::PredictionServiceServer;
use halyard_core::tls::{TlsFiles, require_beyond_loopback};
use halyard_serving::Gateway;
use halyard_serving::access::Door;
use halyard_serving::grpc::PredictionApi;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

pub use error::{Result, SchedulerError};
pub use service::job_info;

/// A running scheduler.
pub struct SchedulerHandle {
    /// The address its API listens on.
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl SchedulerHandle {
    /// Stop serving, resign leadership if held, and wait for the tasks to end.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Start a scheduler: bind its API, then campaign for leadership in the background.
pub async fn start_scheduler(cfg: SchedulerConfig, coord: Coordinator) -> Result<SchedulerHandle> {
    // The node's own key (made on a loopback node's first start); every request is
    // checked against the keys in the coordinator. Checked before anything listens.
    let metrics = Metrics::new(Node::Scheduler);
    let coord = coord.timed(&metrics);
    let token = node_key(&cfg.key_file, is_loopback(&cfg.listen), &coord).await?;
    require_beyond_loopback(&cfg.listen, cfg.tls.as_ref())?;
    // The SQL (Ballista) port too: it serves TLS with the same certificate.
    require_beyond_loopback(&cfg.sql_listen, cfg.tls.as_ref())?;
    let tls = cfg.tls.as_ref().map(TlsFiles::load).transpose()?;
    let (listener, addr) = halyard_core::bind(&cfg.listen).await?;
    let door = Door::new(&coord, &cfg.id, tls.as_ref());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let store =
        halyard_core::store::Store::open(&cfg.store_url, &cfg.s3)?.sealed(cfg.sealer.clone());
    let svc = std::sync::Arc::new(service::JobApi::new(coord.clone(), &cfg, store.clone()));
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<JobServiceServer<service::JobApi>>()
        .await;
    // The prediction gateway: this node holds no model and forwards to executors.
    // Event files are sealed with the node's key, if any; the SQL cluster opens them.
    let events = halyard_core::events::EventLog::open(
        &cfg.events_dir,
        &cfg.id,
        store.clone(),
        coord.clone(),
    )?;
    let gateway = Gateway::new(
        cfg.id.clone(),
        coord.clone(),
        None,
        &token,
        tls.as_ref(),
        metrics.clone(),
        events,
    );
    let model_api = std::sync::Arc::new(models::ModelApi::new(
        coord.clone(),
        &cfg.id,
        gateway.clone(),
    ));
    let grpc = tonic::service::Routes::new(health)
        .add_service(JobServiceServer::from_arc(svc.clone()))
        .add_service(ModelServiceServer::from_arc(model_api.clone()))
        .add_service(PredictionServiceServer::new(PredictionApi::new(
            gateway.clone(),
        )))
        .add_service(KeyServiceServer::new(keys::KeyApi::new(
            coord.clone(),
            &cfg.id,
        )));
    let console = console::router(std::sync::Arc::new(console::Console {
        jobs: svc,
        models: model_api,
        verifier: door.verifier.clone(),
        tls: tls.is_some(),
        gateway: gateway.clone(),
        reads: Default::default(),
    }));
    let http = halyard_serving::http::router(gateway.clone()).merge(console);
    let api = halyard_serving::http::serve(
        listener,
        http,
        grpc,
        door.clone(),
        tls.clone(),
        shutdown_rx.clone(),
    );
    let server = tokio::spawn(async move {
        if let Err(e) = api.await {
            tracing::error!(error = %e, "scheduler api stopped");
        }
    });
    info!(id = %cfg.id, %addr, backend = coord.backend(), "scheduler listening");
    let routing = tokio::spawn(gateway.run(shutdown_rx.clone()));
    let sql_door = leader::SqlDoor {
        // The same verifier, so the node keeps one cache of keys.
        verifier: door.verifier.clone(),
        token,
        tls,
    };
    let leader = tokio::spawn(leader::run(
        cfg,
        coord,
        store,
        sql_door,
        metrics,
        shutdown_rx,
    ));
    Ok(SchedulerHandle {
        addr,
        shutdown,
        tasks: vec![server, routing, leader],
    })
}
