//! DataFusion session states for each place a query runs: single-process (standalone's
//! reference and the benchmark's baseline), a Ballista client, and the Ballista scheduler
//! and executors. Every one knows Halyard's UDFs and object stores.

use std::sync::Arc;

use ballista::prelude::SessionContextExt;
use ballista_core::extension::{
    EndpointOverrideFn, SessionConfigExt, ballista_aggregate_functions, ballista_scalar_functions,
    ballista_window_functions,
};
use ballista_core::utils::{GrpcClientConfig, create_grpc_client_endpoint};
use datafusion::execution::SessionState;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::prelude::{SessionConfig, SessionContext};
use halyard_core::confine::Roots;
use halyard_core::seal::Sealer;
use halyard_core::store::S3Config;
use tonic::transport::{ClientTlsConfig, Endpoint};

use crate::error::Result;
use crate::sealed::Sealing;
use crate::stores::Stores;
use crate::udf;

/// What a process's queries may read and write, and how it reaches S3.
#[derive(Debug, Clone)]
pub struct DataAccess {
    /// S3 settings (the secret is redacted from `Debug`).
    pub s3: S3Config,
    /// The folders and buckets queries may touch.
    pub roots: Roots,
    /// Seals the feature tables and event files the SQL cluster keeps in Halyard's store.
    pub sealing: Option<Sealing>,
}

impl DataAccess {
    /// A node's access: within `roots`, sealing the feature tables and event files in its
    /// store at `store_url` with `sealer`'s keys when it has any.
    pub fn node(
        s3: &S3Config,
        roots: &Roots,
        store_url: &str,
        sealer: Option<&Arc<Sealer>>,
    ) -> halyard_core::Result<DataAccess> {
        Ok(DataAccess {
            s3: s3.clone(),
            roots: roots.clone(),
            sealing: sealer
                .map(|s| Sealing::new(store_url, s.clone()))
                .transpose()?,
        })
    }

    /// Access to anything this process's user may touch: a user's own process
    /// (`halyard sql --local`, `halyard train`, a client planning for the cluster, which
    /// confines what it runs).
    pub fn unconfined(s3: &S3Config) -> DataAccess {
        DataAccess {
            s3: s3.clone(),
            roots: Roots::any(),
            sealing: None,
        }
    }
}

/// The runtime every node uses: Halyard's object stores, confined to the roots.
pub fn runtime(access: &DataAccess) -> Result<Arc<RuntimeEnv>> {
    Ok(RuntimeEnvBuilder::new()
        .with_object_store_registry(Arc::new(Stores::new(
            access.s3.clone(),
            access.roots.clone(),
            access.sealing.clone(),
        )))
        .build_arc()?)
}

/// Session settings shared by every context: `partitions` parallel partitions per stage.
pub fn config(partitions: usize) -> SessionConfig {
    SessionConfig::new_with_ballista()
        .with_target_partitions(partitions.max(1))
        .with_information_schema(true)
        // Ballista 55's adaptive planner loses track of a query whose executor dies (the
        // reset stages never finish: tests/features.rs kills one mid-query); the static
        // planner reruns the lost stages.
        .set_bool(
            ballista_core::config::BALLISTA_ADAPTIVE_PLANNER_ENABLED,
            false,
        )
        // The sort shuffle's default 256 MiB per-task budget spilled a 10-million-row
        // shuffle to disk in 136 small pieces per task (`halyard bench features`).
        .set_u64(
            ballista_core::config::BALLISTA_SHUFFLE_SORT_BASED_MEMORY_LIMIT_PER_TASK_BYTES,
            SHUFFLE_TASK_BUFFER_BYTES,
        )
}

/// Bytes a shuffle-writing task buffers before it spills.
pub const SHUFFLE_TASK_BUFFER_BYTES: u64 = 1 << 30;

/// A plain DataFusion state with the shared settings and the object stores.
fn client_state(config: SessionConfig, access: &DataAccess) -> Result<SessionState> {
    Ok(SessionStateBuilder::new()
        .with_default_features()
        .with_config(config)
        .with_runtime_env(runtime(access)?)
        .build())
}

/// A single-process DataFusion context with the UDFs and object stores.
pub fn local_context(access: &DataAccess, partitions: usize) -> Result<SessionContext> {
    let ctx = SessionContext::new_with_state(client_state(config(partitions), access)?);
    register_udfs(&ctx);
    Ok(ctx)
}

/// A context whose queries run on the Ballista cluster whose scheduler listens at
/// `endpoint` (`HOST:PORT`), presenting `key` (the SQL port checks it); over TLS with
/// `tls` when the cluster serves it (results then come through the scheduler).
pub async fn remote_context(
    endpoint: &str,
    key: Option<&str>,
    tls: Option<ClientTlsConfig>,
    access: &DataAccess,
    partitions: usize,
) -> Result<SessionContext> {
    let mut config = config(partitions);
    if let Some(key) = key {
        config = config.with_ballista_grpc_metadata(
            [(
                "authorization".to_string(),
                format!("Bearer {}", key.trim()),
            )]
            .into(),
        );
    }
    if let Some(tls) = tls {
        config = with_tls(config, tls_endpoints(tls, key));
    }
    let state = client_state(config, access)?;
    let ctx = SessionContext::remote_with_state(&format!("df://{endpoint}"), state).await?;
    // Ballista's upgrade resets the function list to its own: add ours back.
    register_udfs(&ctx);
    Ok(ctx)
}

/// The user agent's prefix that carries a key on Ballista's result fetches: they send no
/// metadata, so the SQL port's door reads the key there (only over TLS: the fetches go
/// through the scheduler only when it serves TLS).
pub const KEY_AGENT: &str = "halyard-key ";

/// `config` with every connection Ballista makes over TLS, as `endpoints` makes them
/// ([`tls_endpoints`]).
pub fn with_tls(config: SessionConfig, endpoints: EndpointOverrideFn) -> SessionConfig {
    config
        .with_ballista_use_tls(true)
        .with_ballista_override_create_grpc_client_endpoint(endpoints)
}

/// Ballista's endpoints made TLS: Ballista writes the scheduler's URL as `http://`
/// whatever `use_tls` says, so a plain endpoint is made again as `https://` (with
/// Ballista's default client settings); every endpoint then gets `tls`, and `key` in its
/// user agent.
pub fn tls_endpoints(tls: ClientTlsConfig, key: Option<&str>) -> EndpointOverrideFn {
    let agent = key.map(|k| format!("{KEY_AGENT}{}", k.trim()));
    Arc::new(move |endpoint: Endpoint| {
        let endpoint = if endpoint.uri().scheme() == Some(&http::uri::Scheme::HTTP) {
            let mut parts = endpoint.uri().clone().into_parts();
            parts.scheme = Some(http::uri::Scheme::HTTPS);
            create_grpc_client_endpoint(
                http::Uri::from_parts(parts)?,
                Some(&GrpcClientConfig::default()),
            )?
        } else {
            endpoint
        };
        let endpoint = endpoint.tls_config(tls.clone())?;
        Ok(match &agent {
            Some(agent) => endpoint.user_agent(agent.clone())?,
            None => endpoint,
        })
    })
}

fn register_udfs(ctx: &SessionContext) {
    for f in udf::all() {
        ctx.register_udf(f.as_ref().clone());
    }
}

/// The session state a Ballista scheduler or executor plans and runs with: Ballista's
/// functions and optimizer rules, Halyard's UDFs, and the object stores.
pub fn node_state(config: SessionConfig, runtime: Arc<RuntimeEnv>) -> SessionState {
    let mut scalar = ballista_scalar_functions();
    scalar.extend(udf::all());
    SessionStateBuilder::new()
        .with_default_features()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_optimizer_rules(ballista_core::optimizer::ballista_default_optimizer_rules())
        .with_scalar_functions(scalar)
        .with_aggregate_functions(ballista_aggregate_functions())
        .with_window_functions(ballista_window_functions())
        .build()
}
