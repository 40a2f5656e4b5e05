//! DataFusion session states for each place a query runs: single-process (standalone's
//! reference and the benchmark's baseline), a Ballista client, and the Ballista scheduler
//! and executors. Every one knows Halyard's UDFs and object stores.

use std::sync::Arc;

use ballista::prelude::SessionContextExt;
use ballista_core::extension::{
    SessionConfigExt, ballista_aggregate_functions, ballista_scalar_functions,
    ballista_window_functions,
};
use datafusion::execution::SessionState;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::prelude::{SessionConfig, SessionContext};
use halyard_core::confine::Roots;
use halyard_core::store::S3Config;

use crate::error::Result;
use crate::stores::Stores;
use crate::udf;

/// What a process's queries may read and write, and how it reaches S3.
#[derive(Debug, Clone)]
pub struct DataAccess {
    /// S3 settings (the secret is redacted from `Debug`).
    pub s3: S3Config,
    /// The folders and buckets queries may touch.
    pub roots: Roots,
}

impl DataAccess {
    /// Access to anything this process's user may touch: a user's own process
    /// (`halyard sql --local`, `halyard train`, a client planning for the cluster, which
    /// confines what it runs).
    pub fn unconfined(s3: &S3Config) -> DataAccess {
        DataAccess {
            s3: s3.clone(),
            roots: Roots::any(),
        }
    }
}

/// The runtime every node uses: Halyard's object stores, confined to the roots.
pub fn runtime(access: &DataAccess) -> Result<Arc<RuntimeEnv>> {
    Ok(RuntimeEnvBuilder::new()
        .with_object_store_registry(Arc::new(Stores::new(
            access.s3.clone(),
            access.roots.clone(),
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
/// `endpoint` (`HOST:PORT`), presenting `key` (the SQL port checks it).
pub async fn remote_context(
    endpoint: &str,
    key: Option<&str>,
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
    let state = client_state(config, access)?;
    let ctx = SessionContext::remote_with_state(&format!("df://{endpoint}"), state).await?;
    // Ballista's upgrade resets the function list to its own: add ours back.
    register_udfs(&ctx);
    Ok(ctx)
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
