//! One task: read the data, train on a dedicated thread, publish, report.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use halyard_core::coord::{Coordinator, Versioned};
use halyard_core::data::read_table;
use halyard_core::records::{TaskAssignment, TaskProgress, TaskState, now_ms};
use halyard_core::spec::{CategoricalEncoding, JobSpec, OptimizerKind};
use halyard_core::store::{S3Config, Store, publish_model, read_url};
use halyard_models::artifact::{
    DataLineage, FORMAT, Manifest, linear_tensor_shapes, linear_to_safetensors,
};
use halyard_models::features::{Encoding, FeatureConfig};
use halyard_models::logistic::{EpochReport, Optimizer, TrainConfig};
use halyard_models::pipeline::{TrainedModel, train_response_model};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::error::{ExecutorError, Result};

/// The models crate's configs from a job spec.
pub(crate) fn model_configs(spec: &JobSpec) -> (FeatureConfig, TrainConfig) {
    let features = FeatureConfig {
        label: spec.data.label.clone(),
        positive: spec.data.positive.clone(),
        exclude: spec.data.exclude.clone(),
        categorical: spec.data.categorical.clone(),
        encoding: match spec.model.encoding {
            CategoricalEncoding::OneHot => Encoding::OneHot,
            CategoricalEncoding::Hashed => Encoding::Hashed,
        },
        max_categories: spec.model.max_categories,
        hash_buckets: spec.model.hash_buckets,
        holdout_every: spec.train.holdout_every,
    };
    let train = TrainConfig {
        epochs: spec.train.epochs,
        batch_size: spec.train.batch_size,
        learning_rate: spec.train.learning_rate,
        optimizer: match spec.train.optimizer {
            OptimizerKind::Adam => Optimizer::Adam,
            OptimizerKind::Sgd => Optimizer::Sgd,
        },
        l2: spec.model.l2,
        seed: spec.train.seed,
    };
    (features, train)
}

/// Report, unless the assignment is gone; `false` means the task must stop.
async fn report(coord: &Coordinator, a: &Versioned<TaskAssignment>, p: &TaskProgress) -> bool {
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

pub(crate) async fn run(
    a: Versioned<TaskAssignment>,
    coord: Coordinator,
    store: Store,
    s3: S3Config,
    cancel: Arc<AtomicBool>,
) {
    let mut progress = TaskProgress::started(&a.value);
    progress.log(format!("attempt {} started", a.value.attempt));
    if !report(&coord, &a, &progress).await {
        return;
    }
    match train_and_publish(&a, &coord, &store, &s3, &cancel, &mut progress).await {
        Ok(()) => {
            progress.state = TaskState::Succeeded;
            progress.log("published");
        }
        Err(ExecutorError::Model(halyard_models::ModelError::Cancelled)) => {
            info!(job = %a.value.job_id, "task stopped");
            return;
        }
        Err(e) => {
            warn!(job = %a.value.job_id, error = %e, "task failed");
            progress.state = TaskState::Failed;
            progress.error = Some(e.to_string());
            progress.log(format!("failed: {e}"));
        }
    }
    report(&coord, &a, &progress).await;
}

async fn train_and_publish(
    a: &Versioned<TaskAssignment>,
    coord: &Coordinator,
    store: &Store,
    s3: &S3Config,
    cancel: &Arc<AtomicBool>,
    progress: &mut TaskProgress,
) -> Result<()> {
    let spec = a.value.spec.clone();
    let source = spec.data.source.clone();
    let bytes = read_url(&source, s3).await?;
    progress.log(format!("read {} bytes from {source}", bytes.len()));
    report(coord, a, progress).await;

    let (tx, mut rx) = mpsc::unbounded_channel::<EpochReport>();
    let (done_tx, done_rx) = oneshot::channel();
    let thread_cancel = cancel.clone();
    let thread_spec = spec.clone();
    std::thread::Builder::new()
        .name(format!("train-{}", a.value.job_id))
        .spawn(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                train_blocking(&bytes, &thread_spec, &thread_cancel, &tx)
            }))
            .unwrap_or_else(|p| {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                Err(ExecutorError::Panicked(msg))
            });
            let _ = done_tx.send(result);
        })
        .map_err(|e| ExecutorError::Panicked(e.to_string()))?;

    while let Some(r) = rx.recv().await {
        progress.epoch = r.epoch;
        progress.loss = Some(r.loss);
        progress.log(format!("epoch {}/{} loss {:.5}", r.epoch, r.epochs, r.loss));
        if !report(coord, a, progress).await {
            cancel.store(true, Ordering::Relaxed);
        }
    }
    let (trained, lineage) = done_rx
        .await
        .map_err(|_| ExecutorError::Panicked("training thread vanished".into()))??;
    if cancel.load(Ordering::Relaxed) {
        return Err(halyard_models::ModelError::Cancelled.into());
    }

    let version = coord.next_model_version(&spec.name).await?;
    let manifest = Manifest {
        format: FORMAT.into(),
        name: spec.name.clone(),
        version,
        model_type: spec.model.kind.as_str().into(),
        preprocessor: trained.preprocessor.clone(),
        tensors: linear_tensor_shapes(trained.preprocessor.dim),
        metrics: trained.metrics.clone(),
        spec: serde_json::to_value(&spec).unwrap_or_default(),
        data: lineage,
        job_id: a.value.job_id.clone(),
        halyard_version: halyard_core::VERSION.into(),
        created_ms: now_ms(),
    };
    let weights = linear_to_safetensors(&trained.scorer)?;
    let manifest_bytes = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    let url = publish_model(
        store,
        &spec.name,
        version,
        Bytes::from(weights),
        Bytes::from(manifest_bytes),
    )
    .await?;
    info!(job = %a.value.job_id, %url, version, "model published");
    progress.metrics = trained.metrics;
    progress.artifact = Some(url);
    progress.model_version = Some(version);
    progress.epoch = spec.train.epochs;
    Ok(())
}

/// Parse and train, on the calling (dedicated) thread.
fn train_blocking(
    bytes: &Bytes,
    spec: &JobSpec,
    cancel: &AtomicBool,
    reports: &mpsc::UnboundedSender<EpochReport>,
) -> Result<(TrainedModel, DataLineage)> {
    let table = read_table(bytes, &spec.data, &spec.data.source)?;
    let (features, train) = model_configs(spec);
    let trained = train_response_model(&table.batches, &features, &train, |r| {
        let _ = reports.send(r);
        if cancel.load(Ordering::Relaxed) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;
    let lineage = DataLineage {
        source: spec.data.source.clone(),
        digest: table.digest,
        rows: table.rows,
        train_rows: trained.train_rows,
        test_rows: trained.test_rows,
    };
    Ok((trained, lineage))
}
