//! The SQL cluster: an embedded Ballista scheduler in the leading Halyard scheduler and an
//! embedded Ballista executor in every Halyard executor, with the same id.
//!
//! Ballista 55 keeps its state in memory and has no failover: Halyard supplies it. The
//! leader advertises its SQL endpoint in the coordinator; every executor follows the
//! advertised endpoint and re-attaches its Ballista executor when leadership moves. When a
//! Halyard executor's lease expires, the leader tells its Ballista scheduler at once, so
//! the lost executor's tasks run again elsewhere (instead of after Ballista's own 180 s
//! heartbeat timeout).

use std::net::SocketAddr;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::extension::{BallistaConfigGrpcEndpoint, SessionConfigExt};
use ballista_core::flight_proxy_service::BallistaFlightProxyService;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_core::serde::BallistaCodec;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_core::serde::protobuf::scheduler_grpc_server::SchedulerGrpcServer;
use ballista_core::serde::protobuf::{ExecutorRegistration, ExecutorStoppedParams};
use ballista_core::serde::scheduler::{
    ExecutorOperatingSystemSpecification, ExecutorSpecification,
};
use ballista_core::utils::{GrpcServerConfig, create_grpc_server};
use ballista_core::{BALLISTA_PROTOCOL_VERSION, ConfigProducer, RuntimeProducer};
use ballista_executor::execution_loop::poll_loop;
use ballista_executor::executor::Executor;
use ballista_executor::flight_service::BallistaFlightService;
use ballista_executor::health::ExecutorHealth;
use ballista_executor::metrics::LoggingMetricsCollector;
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig as BallistaSchedulerConfig;
use ballista_scheduler::metrics::default_metrics_collector;
use ballista_scheduler::scheduler_server::SchedulerServer;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use halyard_core::auth::{BearerKey, Verifier};
use halyard_core::coord::Auditor;
use halyard_core::tls::Tls;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ServerTlsConfig};
use tracing::{info, warn};

use crate::door::SqlDoorLayer;
use crate::error::{FeatureError, Result};
use crate::session::{DataAccess, node_state, runtime, tls_endpoints, with_tls};

/// The largest gRPC message on the SQL cluster's ports.
const MAX_MESSAGE: usize = 64 << 20;

/// Ballista's gRPC server settings, serving TLS with `tls`.
fn grpc_server(tls: Option<ServerTlsConfig>) -> Result<tonic::transport::Server> {
    let server = create_grpc_server(&GrpcServerConfig::default());
    match tls {
        Some(tls) => server
            .tls_config(tls)
            .map_err(|e| FeatureError::Cluster(format!("cannot serve tls: {e}"))),
        None => Ok(server),
    }
}

/// A client of the SQL scheduler that presents the node's key.
type SchedulerClient = SchedulerGrpcClient<InterceptedService<Channel, BearerKey>>;

/// Connect to the SQL scheduler at `endpoint` (`HOST:PORT`) as this node (`key`, and its
/// certificate when the cluster serves TLS).
async fn scheduler_client(endpoint: &str, key: &str, tls: Option<&Tls>) -> Result<SchedulerClient> {
    let failed = |e: tonic::transport::Error| FeatureError::Cluster(format!("{endpoint}: {e}"));
    let channel = halyard_core::tls::endpoint(endpoint, tls.map(Tls::tonic_client))
        .map_err(failed)?
        .connect()
        .await
        .map_err(failed)?;
    let bearer = BearerKey::new(Some(key)).map_err(|e| FeatureError::Cluster(e.to_string()))?;
    Ok(SchedulerGrpcClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE))
}

/// A running Ballista scheduler, owned by the Halyard leader.
pub struct SqlScheduler {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The node's key, for its own calls.
    key: String,
    /// The node's TLS, when the port serves it.
    tls: Option<Tls>,
    ballista: SchedulerServer<LogicalPlanNode, PhysicalPlanNode>,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<()>,
}

impl SqlScheduler {
    /// Start a Ballista scheduler on `listener`, behind a door that checks every call's
    /// key with `verifier` ([`crate::door`]); `key` is the node's own. Its planning
    /// resolves data URLs with Halyard's object stores, confined to `access`'s roots.
    ///
    /// With `tls` the port serves TLS, the executors' calls need a certificate of the
    /// cluster's CA (when it has one), and clients fetch results through this port (the
    /// scheduler fetches them from the executors as a node), so the executors' Flight
    /// ports can refuse everyone but nodes.
    pub async fn start(
        listener: TcpListener,
        access: &DataAccess,
        verifier: Verifier,
        audit: Option<Auditor>,
        key: &str,
        tls: Option<&Tls>,
    ) -> Result<SqlScheduler> {
        let addr = listener
            .local_addr()
            .map_err(|e| FeatureError::Cluster(e.to_string()))?;
        let rt = runtime(access)?;
        let door = SqlDoorLayer::new(
            verifier,
            SessionContext::new_with_state(node_state(
                SessionConfig::new_with_ballista(),
                rt.clone(),
            )),
            access.roots.clone(),
        )
        .with_audit(audit)
        .with_node_certificates(tls.is_some_and(|t| t.mutual));
        let session_builder =
            Arc::new(move |config: SessionConfig| Ok(node_state(config, rt.clone())));
        let config_producer: ConfigProducer = Arc::new(SessionConfig::new_with_ballista);
        let name = format!("halyard-sql-{addr}");
        let cluster = BallistaCluster::new_memory(name.clone(), session_builder, config_producer);
        let config = BallistaSchedulerConfig {
            // A lost executor is reported by the leader from its lease; Ballista's own
            // heartbeat check is the backstop.
            executor_timeout_seconds: 60,
            expire_dead_executor_interval_seconds: 5,
            no_executors_grace_period_seconds: 60,
            executor_termination_grace_period: 0,
            // A failed shuffle fetch fails the query (its caller runs it again) instead of
            // rerunning map stages in place (see `executor_lost`).
            stage_max_failures: 1,
            enable_embedded_flight_proxy: tls.is_some(),
            ..BallistaSchedulerConfig::default()
        }
        .with_scheduler_policy(TaskSchedulingPolicy::PullStaged);
        let mut server: SchedulerServer<LogicalPlanNode, PhysicalPlanNode> = SchedulerServer::new(
            name,
            cluster,
            BallistaCodec::default(),
            Arc::new(config),
            default_metrics_collector()?,
        );
        server.init().await?;
        let grpc = SchedulerGrpcServer::new(server.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let proxy = tls.map(|tls| {
            FlightServiceServer::new(BallistaFlightProxyService::new(
                MAX_MESSAGE,
                MAX_MESSAGE,
                true,
                Some(Arc::new(BallistaConfigGrpcEndpoint::new(tls_endpoints(
                    tls.tonic_client(),
                    None,
                )))),
            ))
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
        });
        let listening = grpc_server(tls.map(Tls::tonic_server_for_clients))?;
        let (shutdown, mut rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let stop = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            if let Err(e) = listening
                .layer(door)
                .add_service(grpc)
                .add_optional_service(proxy)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop)
                .await
            {
                warn!(error = %e, "sql scheduler stopped");
            }
        });
        info!(%addr, tls = tls.is_some(), "sql scheduler (ballista) listening");
        Ok(SqlScheduler {
            addr,
            key: key.to_string(),
            tls: tls.cloned(),
            ballista: server,
            shutdown,
            server: task,
        })
    }

    /// Tell the scheduler an executor is gone. Every running query is cancelled first (its
    /// caller runs it again: [`crate::stage::collect_retrying`]), then the executor is
    /// removed. Ballista 55's own recovery of a running query, which reruns the lost
    /// shuffle output in place, returned rows twice in `tests/features.rs`; a whole rerun
    /// returns each row once.
    pub async fn executor_lost(&self, executor_id: &str, reason: &str) -> Result<()> {
        let running: Vec<_> = self
            .ballista
            .state
            .task_manager
            .get_running_job_cache()
            .keys()
            .cloned()
            .collect();
        for job in running {
            warn!(%job, executor = executor_id, "cancelling a sql query that ran on a lost executor; it runs again");
            self.ballista.cancel_job(job).await?;
        }
        scheduler_client(&self.addr.to_string(), &self.key, self.tls.as_ref())
            .await?
            .executor_stopped(ExecutorStoppedParams {
                executor_id: executor_id.to_string(),
                reason: reason.to_string(),
            })
            .await
            .map_err(|e| FeatureError::Cluster(e.message().to_string()))?;
        Ok(())
    }

    /// Stop serving (leadership lost or shutdown).
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.server.await;
    }
}

/// A Ballista executor embedded in a Halyard executor: a Flight service for shuffle data
/// and results, and a poll loop attached to the current SQL scheduler.
pub struct SqlExecutor {
    /// The address its Flight service listens on.
    pub addr: SocketAddr,
    executor: Arc<Executor>,
    /// Shuffle files and results; removed when the executor stops.
    work_dir: std::path::PathBuf,
    flight: JoinHandle<()>,
    attached: Option<(String, JoinHandle<()>)>,
    /// The node's key, presented to the SQL scheduler.
    key: String,
    /// The node's TLS, when the cluster serves it.
    tls: Option<Tls>,
}

impl SqlExecutor {
    /// Start the Flight service on `listener`; `host` is the name other nodes reach this
    /// one by. `vcores` tasks run at once, reading and writing within `access`'s roots;
    /// `key` is the node's, presented to the scheduler. A task does not start once the
    /// work folder holds `disk_budget` bytes or its disk is full.
    ///
    /// With `tls` the Flight service serves TLS and, when the cluster has a CA, answers
    /// only nodes (a certificate the CA signed); this node reaches the scheduler and the
    /// other executors with its certificate.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        id: &str,
        host: &str,
        listener: TcpListener,
        vcores: usize,
        access: &DataAccess,
        key: &str,
        disk_budget: Option<u64>,
        tls: Option<&Tls>,
    ) -> Result<SqlExecutor> {
        let addr = listener
            .local_addr()
            .map_err(|e| FeatureError::Cluster(e.to_string()))?;
        // The folders executors killed on this machine left behind go first.
        let temp = std::env::temp_dir();
        crate::workdir::sweep(&temp);
        let work_dir = crate::workdir::make(&temp)?;
        let work_path = work_dir.clone();
        let work_dir = work_dir.display().to_string();
        let metadata = ExecutorRegistration {
            id: id.to_string(),
            host: Some(host.to_string()),
            port: u32::from(addr.port()),
            grpc_port: 0,
            specification: Some(
                ExecutorSpecification::default()
                    .with_vcores(vcores as u32)
                    .into(),
            ),
            os_info: Some(ExecutorOperatingSystemSpecification::default().into()),
            ballista_protocol_version: BALLISTA_PROTOCOL_VERSION,
        };
        let rt = runtime(access)?;
        let state = node_state(SessionConfig::new_with_ballista(), rt.clone());
        // Shuffle reads from the other executors go over TLS as this node (one endpoint
        // hook for every task).
        let endpoints = tls.map(|t| tls_endpoints(t.tonic_client(), None));
        let config_producer: ConfigProducer = Arc::new(move || match &endpoints {
            Some(e) => with_tls(SessionConfig::new_with_ballista(), e.clone()),
            None => SessionConfig::new_with_ballista(),
        });
        let runtime_producer: RuntimeProducer = Arc::new(move |_| Ok(rt.clone()));
        let executor = Arc::new(Executor::new(
            metadata,
            &work_dir,
            runtime_producer,
            config_producer,
            Arc::new(BallistaFunctionRegistry::from(&state)),
            Arc::new(LoggingMetricsCollector::default()),
            vcores,
            Arc::new(crate::workdir::BudgetedEngine::new(disk_budget)),
        ));
        let flight = FlightServiceServer::new(BallistaFlightService::new(work_dir))
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let mut listening = grpc_server(tls.map(Tls::tonic_server))?;
        let flight = tokio::spawn(async move {
            if let Err(e) = listening
                .add_service(flight)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await
            {
                warn!(error = %e, "sql executor flight service stopped");
            }
        });
        info!(%addr, id, tls = tls.is_some(), "sql executor (ballista) flight service listening");
        Ok(SqlExecutor {
            addr,
            executor,
            work_dir: work_path,
            flight,
            attached: None,
            key: key.to_string(),
            tls: tls.cloned(),
        })
    }

    /// Attach to the SQL scheduler at `endpoint` (`HOST:PORT`), leaving any other; `None`
    /// detaches. Nothing happens when already attached there.
    pub fn follow(&mut self, endpoint: Option<&str>) {
        if self.attached.as_ref().map(|(e, _)| e.as_str()) == endpoint {
            return;
        }
        if let Some((old, task)) = self.attached.take() {
            info!(endpoint = %old, "sql executor leaves its scheduler");
            task.abort();
        }
        let Some(endpoint) = endpoint else { return };
        let endpoint = endpoint.to_string();
        let attached_to = endpoint.clone();
        let executor = self.executor.clone();
        let key = self.key.clone();
        let tls = self.tls.clone();
        let task = tokio::spawn(async move {
            loop {
                match scheduler_client(&endpoint, &key, tls.as_ref()).await {
                    Ok(client) => {
                        info!(%endpoint, "sql executor attached");
                        if let Err(e) = poll_loop(
                            client,
                            executor.clone(),
                            BallistaCodec::<LogicalPlanNode, PhysicalPlanNode>::default(),
                            None,
                            None,
                            ExecutorHealth::new(),
                        )
                        .await
                        {
                            warn!(%endpoint, error = %e, "sql executor poll loop ended; attaching again");
                        }
                    }
                    Err(e) => {
                        warn!(%endpoint, error = %e, "cannot reach the sql scheduler; retrying")
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        });
        self.attached = Some((attached_to, task));
    }

    /// Stop the poll loop and the Flight service, and remove the work folder.
    pub fn stop(mut self) {
        self.follow(None);
        self.flight.abort();
        if let Err(e) = std::fs::remove_dir_all(&self.work_dir) {
            warn!(dir = %self.work_dir.display(), error = %e, "cannot remove the sql work folder");
        }
    }
}
