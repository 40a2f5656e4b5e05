//! One task's life: report it started, read its input, train, publish, report the end.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use halyard_core::coord::{Coordinator, Versioned};
use halyard_core::data::digest;
use halyard_core::metrics::Metrics;
use halyard_core::records::{TaskAssignment, TaskProgress, TaskState, now_ms};
use halyard_core::registry::ModelVersion;
use halyard_core::store::{MANIFEST_FILE, Store, WEIGHTS_FILE, features_dir, publish_model};
use halyard_models::artifact::{DataLineage, Manifest, tensor_shapes};
use halyard_models::pipeline::TrainedModel;
use tracing::{info, warn};

use async_trait::async_trait;
use datafusion::prelude::SessionContext;
use halyard_core::spec::{JobSpec, Stage};
use halyard_features::session::DataAccess;
use halyard_models::device::Placement;

use crate::error::{ExecutorError, Result};
use crate::input::sql_context;
use crate::pipeline::{self, Flow, Grouped, Host, Run};
use crate::training::{Progress, Trained, placement};

/// Report, unless the assignment is gone; `false` means the task must stop. Only rank 0 of
/// a data-parallel group reports (the others stop when the leader takes their task away).
pub(crate) async fn report(
    coord: &Coordinator,
    a: &Versioned<TaskAssignment>,
    p: &TaskProgress,
) -> bool {
    if a.value.rank != 0 {
        return true;
    }
    match coord.report_progress(a, p).await {
        Ok(()) => true,
        Err(halyard_core::Error::Conflict { .. }) => false,
        Err(e) => {
            // A transient coordinator fault: keep training, report again later.
            warn!(job = %p.job_id, error = %e, "progress report failed");
            true
        }
    }
}

/// One task and what its executor lends it.
pub(crate) struct Task {
    /// The assignment, as read (reports are fenced on it).
    pub a: Versioned<TaskAssignment>,
    pub coord: Coordinator,
    pub store: Store,
    /// What the task's data may be, and how S3 is reached.
    pub data: DataAccess,
    /// GPUs the executor advertises.
    pub gpus: u32,
    /// Set when the task must stop.
    pub cancel: Arc<AtomicBool>,
    /// Where a data-parallel group's chunks for this executor arrive.
    pub boxes: halyard_collective::Mailboxes,
    /// The node's own key, for its calls to other nodes (the all-reduce ring).
    pub key: halyard_core::auth::BearerKey,
    /// The same key's text, for the SQL scheduler.
    pub token: Arc<str>,
    /// TLS for calls to other nodes (the all-reduce ring).
    pub tls: Option<halyard_core::tls::Tls>,
    /// The executor's metrics.
    pub metrics: Metrics,
}

impl Task {
    /// Report, unless the assignment is gone; `false` means the task must stop.
    pub(crate) async fn report(&self, p: &TaskProgress) -> bool {
        report(&self.coord, &self.a, p).await
    }

    /// Whether the task was told to stop.
    pub(crate) fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// Show the job's last training loss in the executor's metrics.
    pub(crate) fn loss(&self, p: &TaskProgress) {
        if let Some(loss) = p.loss {
            let job = self.a.value.job_id.as_str();
            self.metrics
                .training_loss
                .with_label_values(&[job])
                .set(loss);
        }
    }

    /// Show the job's training throughput (rows per second) in the executor's metrics.
    pub(crate) fn rate(&self, rows_per_second: f64) {
        let job = self.a.value.job_id.as_str();
        self.metrics
            .training_rows_per_second
            .with_label_values(&[job])
            .set(rows_per_second);
    }

    /// Drop the job's series: it no longer trains here.
    fn forget(&self) {
        let job = self.a.value.job_id.as_str();
        let _ = self.metrics.training_loss.remove_label_values(&[job]);
        let _ = self
            .metrics
            .training_rows_per_second
            .remove_label_values(&[job]);
    }
}

pub(crate) async fn run(t: Task) {
    let started = std::time::Instant::now();
    let outcome = run_task(&t).await;
    t.forget();
    t.metrics
        .task_seconds
        .with_label_values(&[outcome])
        .observe(started.elapsed().as_secs_f64());
}

/// Run the task; how it ended (`succeeded`, `failed`, `stopped`, or `gone`: the
/// assignment was taken away before it started).
async fn run_task(t: &Task) -> &'static str {
    let a = &t.a;
    let mut progress = TaskProgress::started(&a.value);
    progress.log(format!("attempt {} started", a.value.attempt));
    if !t.report(&progress).await {
        return "gone";
    }
    let spec = &a.value.spec;
    let stages = a.value.stages();
    let run = Run {
        spec,
        store: &t.store,
        data: &t.data,
        table_dir: features_dir(&a.value.feature_job()),
    };
    let result = {
        let mut host = TaskHost {
            t,
            progress: &mut progress,
            last_epoch: None,
        };
        pipeline::run(&run, &stages, &mut host).await
    };
    match result {
        Ok(()) if a.value.rank != 0 => {
            info!(job = %a.value.job_id, rank = a.value.rank, "worker done");
            return "succeeded";
        }
        // Publishing wrote the last report, a success, with the registration.
        Ok(()) if progress.state == TaskState::Succeeded => return "succeeded",
        Ok(()) => succeeded(&mut progress),
        Err(ExecutorError::Model(halyard_models::ModelError::Cancelled)) => {
            info!(job = %a.value.job_id, "task stopped");
            return "stopped";
        }
        Err(e) => {
            warn!(job = %a.value.job_id, error = %e, "task failed");
            progress.state = TaskState::Failed;
            progress.retry = e.failure().is_retryable();
            progress.error = Some(e.to_string());
            progress.log(format!("failed: {e}"));
        }
    }
    t.report(&progress).await;
    match progress.state {
        TaskState::Succeeded => "succeeded",
        _ => "failed",
    }
}

/// The executor as a pipeline's host: progress goes to the coordinator (fenced on the
/// assignment), SQL to the cluster's SQL scheduler, models to the registry.
pub(crate) struct TaskHost<'a> {
    pub t: &'a Task,
    pub progress: &'a mut TaskProgress,
    /// When the last epoch ended (for the training throughput).
    pub last_epoch: Option<std::time::Instant>,
}

#[async_trait]
impl Host for TaskHost<'_> {
    fn log(&mut self, line: String) {
        self.progress.log(line);
    }

    async fn report(&mut self) -> bool {
        self.t.report(self.progress).await
    }

    fn progress(&mut self, p: &Progress) {
        self.progress.epoch = p.epoch;
        self.progress.loss = Some(p.loss);
        self.t.loss(self.progress);
        let now = std::time::Instant::now();
        if let Some(last) = self.last_epoch.replace(now)
            && p.rows > 0
        {
            let seconds = now.duration_since(last).as_secs_f64().max(1e-9);
            self.t.rate(p.rows as f64 / seconds);
        }
    }

    fn table_written(&mut self, rows: u64) {
        self.t.metrics.feature_rows.inc_by(rows);
    }

    async fn sql(&mut self) -> Result<SessionContext> {
        let t = self.t;
        sql_context(&t.coord, &t.token, t.tls.as_ref(), &t.data, &mut |line| {
            self.progress.log(line)
        })
        .await
    }

    fn cancel(&self) -> Arc<AtomicBool> {
        self.t.cancel.clone()
    }

    fn placement(&self, spec: &JobSpec) -> Placement {
        placement(spec, self.t.gpus)
    }

    async fn train_group(&mut self, run: &Run<'_>) -> Option<Result<Grouped>> {
        Some(crate::parallel::train(self.t, self.progress, run).await)
    }

    async fn publish(&mut self, (trained, lineage): Trained) -> Result<()> {
        let t = self.t;
        // Publishing that ends the task (rank 0 reports) writes its last report with the
        // registration.
        let last = t.a.value.rank == 0 && t.a.value.stages().last() == Some(&Stage::Publish);
        publish(
            &t.a,
            &t.coord,
            &t.store,
            self.progress,
            trained,
            lineage,
            last,
        )
        .await
    }

    fn unpublished(&mut self, metrics: BTreeMap<String, f64>) {
        let epoch = f64::from(self.progress.epoch);
        self.progress.metrics = metrics;
        self.progress
            .metrics
            .entry("epochs_trained".into())
            .or_insert(epoch);
    }

    async fn score(&mut self, run: &Run<'_>) -> Result<Flow> {
        crate::score::score(self.t, self.progress, run).await
    }

    async fn audience(&mut self, run: &Run<'_>) -> Result<()> {
        crate::score::audience(self.t, self.progress, run).await
    }
}

/// Memory a node needs to serve a version: its weights as read plus what loading derives
/// from them (`Runtime::derived_bytes`); the weights alone, with a warning, when they do
/// not load here.
fn serving_bytes(architecture: &halyard_models::artifact::Architecture, weights: &[u8]) -> u64 {
    let derived = match halyard_models::runtime::Runtime::new(architecture.clone(), weights) {
        Ok(runtime) => runtime.derived_bytes(),
        Err(e) => {
            warn!(error = %e, "the trained weights do not load for serving: only their size is recorded as the memory they need");
            0
        }
    };
    weights.len() as u64 + derived
}

/// Allocate a version, write the artifact and register it (only while the assignment
/// stands, and only as the job's first version: a run of an attempt whose earlier run
/// registered one reports that one). With `last` (publishing ends the task), the task's
/// last report, a success, goes in the registration's transaction: `progress` comes back
/// succeeded when it did.
async fn publish(
    a: &Versioned<TaskAssignment>,
    coord: &Coordinator,
    store: &Store,
    progress: &mut TaskProgress,
    trained: TrainedModel,
    lineage: DataLineage,
    last: bool,
) -> Result<()> {
    let spec = &a.value.spec;
    let version = coord.next_model_version(&spec.name).await?;
    let manifest = Manifest {
        format: trained.architecture.format().into(),
        name: spec.name.clone(),
        version,
        architecture: trained.architecture.clone(),
        tensors: tensor_shapes(&trained.weights)?,
        metrics: trained.metrics.clone(),
        spec: serde_json::to_value(spec).unwrap_or_default(),
        data: lineage,
        job_id: a.value.job_id.clone(),
        halyard_version: halyard_core::VERSION.into(),
        created_ms: now_ms(),
        reference: trained.reference,
    };
    let weights = trained.weights;
    let manifest_bytes = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    let record = ModelVersion {
        name: spec.name.clone(),
        version,
        artifact: String::new(),
        model_type: trained.architecture.kind().to_string(),
        metrics: trained.metrics.clone(),
        job_id: a.value.job_id.clone(),
        data_source: manifest.data.source.clone(),
        data_digest: manifest.data.digest.clone(),
        created_ms: manifest.created_ms,
        memory_bytes: serving_bytes(&trained.architecture, &weights),
        sealed_with: store.sealing_key().map(String::from),
        files: [
            (WEIGHTS_FILE.to_string(), digest(&weights)),
            (MANIFEST_FILE.to_string(), digest(&manifest_bytes)),
        ]
        .into(),
        profile: match &trained.architecture {
            halyard_models::artifact::Architecture::KMeans { profile, .. } => {
                serde_json::to_value(profile).ok()
            }
            halyard_models::artifact::Architecture::Gbdt { importance, .. } => {
                serde_json::to_value(importance).ok()
            }
            _ => None,
        },
        evaluation: trained
            .evaluation
            .as_ref()
            .and_then(|e| serde_json::to_value(e).ok()),
    };
    let url = publish_model(
        store,
        &spec.name,
        version,
        Bytes::from(weights),
        Bytes::from(manifest_bytes),
    )
    .await?;
    // Registered only while the assignment stands (a task taken away publishes nothing),
    // and only as the job's first version. What the task then reports; when publishing
    // ends the task, that report, a success, goes in the registration's transaction.
    let mut report = progress.clone();
    published(&mut report, trained.metrics, url.clone(), version);
    if last {
        succeeded(&mut report);
    }
    let record = ModelVersion {
        artifact: url.clone(),
        ..record
    };
    match coord
        .register_version(a, &record, last.then_some(&report))
        .await?
    {
        None => {
            info!(job = %a.value.job_id, %url, version, "model published");
            *progress = report;
        }
        Some(earlier) => {
            warn!(job = %a.value.job_id, version = earlier.version, unregistered = %url, "the job registered a version in an earlier run of this attempt: reporting it");
            progress.log(format!(
                "version {} was registered by an earlier run of this attempt, whose report was lost: reporting it ({url} stays unregistered, for garbage collection)",
                earlier.version
            ));
            published(progress, earlier.metrics, earlier.artifact, earlier.version);
        }
    }
    Ok(())
}

/// Record a published version in a task's report.
fn published(p: &mut TaskProgress, metrics: BTreeMap<String, f64>, url: String, version: u64) {
    p.metrics = metrics;
    p.artifact = Some(url);
    p.model_version = Some(version);
}

/// Mark a task's report a success (saying so in its log when it published a model).
fn succeeded(p: &mut TaskProgress) {
    p.state = TaskState::Succeeded;
    if p.artifact.is_some() {
        p.log("published");
    }
}
