//! `halyard-scheduler`: the control plane. Serves the job API (gRPC), campaigns for
//! leadership through the coordinator, and, while leader, places pending jobs on executors
//! with free slots, requeues the tasks of executors whose lease expired, and finishes jobs
//! from their executors' reports.
//!
//! **Invariants.** Only the leader changes a job's state, and every such write is fenced on
//! its leadership ([`halyard_core::coord`]). Nothing here lives only in memory: a standby
//! that takes over resumes from the coordinator's state.

mod error;
mod leader;
mod service;

use std::net::SocketAddr;

use halyard_core::config::SchedulerConfig;
use halyard_core::coord::Coordinator;
use halyard_core::proto::job_service_server::JobServiceServer;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
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
    let (listener, addr) = halyard_core::bind(&cfg.listen).await?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let svc = service::JobApi::new(coord.clone(), cfg.id.clone());
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<JobServiceServer<service::JobApi>>()
        .await;
    let mut rx = shutdown_rx.clone();
    let server = tokio::spawn(async move {
        let result = tonic::transport::Server::builder()
            .add_service(health)
            .add_service(JobServiceServer::new(svc))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                let _ = rx.wait_for(|stop| *stop).await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "scheduler api stopped");
        }
    });
    info!(id = %cfg.id, %addr, backend = coord.backend(), "scheduler listening");
    let leader = tokio::spawn(leader::run(cfg, coord, shutdown_rx));
    Ok(SchedulerHandle {
        addr,
        shutdown,
        tasks: vec![server, leader],
    })
}
