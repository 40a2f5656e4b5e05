//! One task: read the data, train on a dedicated thread, publish, report.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use datafusion::prelude::SessionContext;
use halyard_core::coord::{Coordinator, Versioned};
use halyard_core::data::digest;
use halyard_core::data::{read_parquet_parts, read_table, sort_table};
use halyard_core::records::{TaskAssignment, TaskProgress, TaskState, now_ms};
use halyard_core::registry::ModelVersion;
use halyard_core::spec::SPLIT_COLUMN;
use halyard_core::spec::{
    CategoricalEncoding, ClassWeight, DeviceKind, ForecastSpec, JobSpec, ModelKind, OptimizerKind,
    SeriesLayout,
};
use halyard_core::store::{
    S3Config, Store, feature_shard_path, features_dir, features_manifest_path, publish_model,
    read_url,
};
use halyard_features::session::remote_context;
use halyard_features::stage::{FeatureTable, run_stage};
use halyard_models::artifact::{DataLineage, FORMAT, Manifest, tensor_shapes};
use halyard_models::device::{GPU_BUILD, Placement};
use halyard_models::forecast::data::{from_long_table, read_wide_csv};
use halyard_models::forecast::nbeats::NBeatsTrainConfig;
use halyard_models::forecast::{Series, split_last};
use halyard_models::logistic::{Optimizer, TrainConfig};
use halyard_models::pipeline::{
    MemberReport, ResponseConfig, ResponseKind, TrainedModel, train_forecaster,
    train_response_model,
};
use halyard_models::preprocess::{Encoding, FeatureConfig};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::error::{ExecutorError, Result};

/// The training device for a job: `auto` takes the GPU when this build has GPU support and
/// the executor advertises a GPU.
pub fn placement(spec: &JobSpec, gpus: u32) -> Placement {
    match spec.train.device {
        DeviceKind::Cpu => Placement::Cpu,
        DeviceKind::Gpu => Placement::Gpu,
        DeviceKind::Auto if GPU_BUILD && gpus > 0 => Placement::Gpu,
        DeviceKind::Auto => Placement::Cpu,
    }
}

/// The models crate's configs from a job spec.
pub(crate) fn model_configs(
    spec: &JobSpec,
    placement: Placement,
) -> (FeatureConfig, ResponseConfig) {
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
        split_column: None,
        numeric_buckets: spec.model.numeric_buckets,
        crosses: spec.data.crosses.clone(),
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
        weight_decay: spec.train.weight_decay,
        patience: spec.train.patience,
        positive_weight: 1.0,
        seed: spec.train.seed,
        placement,
    };
    let kind = match spec.model.kind {
        ModelKind::Mlp => ResponseKind::Mlp {
            hidden: spec.model.hidden.clone(),
            max_embedding: spec.model.max_embedding,
        },
        // A forecaster's spec never reaches the response path (it has `[forecast]`).
        ModelKind::LogisticRegression | ModelKind::Nbeats => ResponseKind::LogisticRegression,
    };
    (
        features,
        ResponseConfig {
            kind,
            train,
            ensemble: spec.model.ensemble,
            balance_classes: spec.train.class_weight == ClassWeight::Balanced,
        },
    )
}

/// The forecaster's training settings from a job spec.
pub(crate) fn forecast_config(
    f: &ForecastSpec,
    spec: &JobSpec,
    placement: Placement,
) -> NBeatsTrainConfig {
    NBeatsTrainConfig {
        steps: f.steps,
        batch_size: spec.train.batch_size,
        learning_rate: spec.train.learning_rate,
        history_horizons: f.history_horizons,
        lookbacks: f.lookbacks.clone(),
        blocks: f.blocks,
        layers: f.layers,
        width: f.width,
        seed: spec.train.seed,
        placement,
    }
}

/// Partitions per stage of a feature query on the cluster.
const SQL_PARTITIONS: usize = 4;

/// The leader's SQL endpoint, waiting a little for a new leader to advertise it.
async fn sql_endpoint(coord: &Coordinator) -> Result<String> {
    for _ in 0..40 {
        if let Some(e) = coord.sql_endpoint().await? {
            return Ok(e);
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    Err(ExecutorError::Sql(
        "no SQL scheduler is advertised: the leading scheduler runs one; check its log".into(),
    ))
}

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

/// A context on the cluster's SQL (Ballista) scheduler.
pub(crate) async fn sql_context(
    coord: &Coordinator,
    s3: &S3Config,
    log: &mut (dyn FnMut(String) + Send),
) -> Result<SessionContext> {
    let endpoint = sql_endpoint(coord).await?;
    log(format!(
        "features: running the SQL on the cluster (scheduler {endpoint})"
    ));
    Ok(remote_context(&endpoint, s3, SQL_PARTITIONS).await?)
}

/// One task and what its executor lends it.
pub(crate) struct Task {
    /// The assignment, as read (reports are fenced on it).
    pub a: Versioned<TaskAssignment>,
    pub coord: Coordinator,
    pub store: Store,
    pub s3: S3Config,
    /// GPUs the executor advertises.
    pub gpus: u32,
    /// Set when the task must stop.
    pub cancel: Arc<AtomicBool>,
    /// Where a data-parallel group's chunks for this executor arrive.
    pub boxes: halyard_collective::Mailboxes,
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
}

pub(crate) async fn run(t: Task) {
    let a = &t.a;
    let mut progress = TaskProgress::started(&a.value);
    progress.log(format!("attempt {} started", a.value.attempt));
    if !t.report(&progress).await {
        return;
    }
    match train_and_publish(&t, &mut progress).await {
        Ok(()) if a.value.rank != 0 => {
            info!(job = %a.value.job_id, rank = a.value.rank, "worker done");
            return;
        }
        Ok(()) => {
            progress.state = TaskState::Succeeded;
            if progress.artifact.is_some() {
                progress.log("published");
            }
        }
        Err(ExecutorError::Model(halyard_models::ModelError::Cancelled)) => {
            info!(job = %a.value.job_id, "task stopped");
            return;
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
}

async fn train_and_publish(t: &Task, progress: &mut TaskProgress) -> Result<()> {
    let spec = &t.a.value.spec;
    let (trained, lineage) = if spec.train.workers.is_some() {
        use crate::parallel::Worked;
        match crate::parallel::train(t, progress).await? {
            Worked::Model(m) => *m,
            // Ranks other than 0 publish nothing.
            Worked::Done => return Ok(()),
            Worked::Paused { valid_loss, epoch } => {
                progress
                    .metrics
                    .insert("epochs_trained".into(), f64::from(epoch));
                if let Some(l) = valid_loss {
                    progress.metrics.insert("valid_log_loss".into(), l);
                }
                progress.log(format!("paused after epoch {epoch}, checkpointed"));
                return Ok(());
            }
        }
    } else {
        train_alone(t, progress).await?
    };
    if !spec.train.publish {
        progress.metrics = trained.metrics;
        progress
            .metrics
            .insert("epochs_trained".into(), f64::from(progress.epoch));
        progress.log("trained; not published ([train] publish = false)");
        return Ok(());
    }
    publish(&t.a, &t.coord, &t.store, progress, trained, lineage).await
}

async fn train_alone(t: &Task, progress: &mut TaskProgress) -> Result<Trained> {
    let (a, spec) = (&t.a, &t.a.value.spec);
    let input = if spec.features.is_some() {
        let ctx = sql_context(&t.coord, &t.s3, &mut |line| progress.log(line)).await?;
        t.report(progress).await;
        let dir = features_dir(&a.value.feature_job());
        feature_input(&ctx, spec, &t.store, &dir, &t.s3, &mut |line| {
            progress.log(line)
        })
        .await?
    } else {
        read_inputs(spec, &t.s3, &mut |line| progress.log(line)).await?
    };
    let placement = placement(spec, t.gpus);
    progress.log(format!(
        "training {} on the {placement}",
        spec.model.kind.as_str()
    ));
    t.report(progress).await;
    let (mut rx, done_rx) = spawn_training(
        &a.value.job_id,
        input,
        spec.clone(),
        placement,
        t.cancel.clone(),
    )?;
    while let Some(r) = rx.recv().await {
        progress.epoch = r.epoch;
        progress.loss = Some(r.loss);
        progress.log(r.line);
        if !t.report(progress).await {
            t.cancel.store(true, Ordering::Relaxed);
        }
    }
    let trained = done_rx
        .await
        .map_err(|_| ExecutorError::Panicked("training thread vanished".into()))??;
    if t.cancelled() {
        return Err(halyard_models::ModelError::Cancelled.into());
    }
    Ok(trained)
}

/// Allocate a version, write the artifact and register it (only while the assignment
/// stands).
async fn publish(
    a: &Versioned<TaskAssignment>,
    coord: &Coordinator,
    store: &Store,
    progress: &mut TaskProgress,
    trained: TrainedModel,
    lineage: DataLineage,
) -> Result<()> {
    let spec = &a.value.spec;
    let version = coord.next_model_version(&spec.name).await?;
    let manifest = Manifest {
        format: FORMAT.into(),
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
    };
    let weights = trained.weights;
    let manifest_bytes = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    let record = ModelVersion {
        name: spec.name.clone(),
        version,
        artifact: String::new(),
        model_type: spec.model.kind.as_str().to_string(),
        metrics: trained.metrics.clone(),
        job_id: a.value.job_id.clone(),
        data_source: manifest.data.source.clone(),
        data_digest: manifest.data.digest.clone(),
        created_ms: manifest.created_ms,
    };
    let url = publish_model(
        store,
        &spec.name,
        version,
        Bytes::from(weights),
        Bytes::from(manifest_bytes),
    )
    .await?;
    // Registered only while the assignment stands: a task taken away publishes nothing.
    coord
        .register_version(
            a,
            &ModelVersion {
                artifact: url.clone(),
                ..record
            },
        )
        .await?;
    info!(job = %a.value.job_id, %url, version, "model published");
    progress.metrics = trained.metrics;
    progress.artifact = Some(url);
    progress.model_version = Some(version);
    Ok(())
}

/// A progress line from the training thread.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Epoch (response models) or step (forecasters).
    pub epoch: u32,
    /// Training loss.
    pub loss: f64,
    /// A line for the job's log.
    pub line: String,
}

/// What a job trains on: its source file, or the Parquet shards its feature stage wrote.
#[derive(Debug, Clone)]
pub struct Input {
    /// The source file's bytes (one part), or the feature table's shards.
    pub parts: Vec<Bytes>,
    /// Forecasting: the test source's bytes.
    pub test: Option<Bytes>,
    /// The feature table's location and identity (`sha256:` of its manifest), when the
    /// parts are its shards.
    pub features: Option<(String, String)>,
    /// Rows of every shard of the feature table (all of them, also those not read).
    pub shard_rows: Vec<u64>,
    /// The shard number of each part.
    pub shards: Vec<usize>,
}

impl Input {
    /// Where the data came from, for the model's lineage.
    pub fn location<'a>(&'a self, spec: &'a JobSpec) -> &'a str {
        self.features.as_ref().map_or(&spec.data.source, |(l, _)| l)
    }

    /// The rows as one table.
    pub fn table(&self, spec: &JobSpec) -> Result<halyard_core::data::Table> {
        let (table, origin) = match &self.features {
            Some((location, digest)) => (
                read_parquet_parts(&self.parts, location, digest.clone())?,
                location.as_str(),
            ),
            None => (
                read_table(&self.parts[0], &spec.data, &spec.data.source)?,
                spec.data.source.as_str(),
            ),
        };
        // Series are read in time order. Shards hold their rows in whatever order the
        // engine wrote them: a feature table is ordered by every column, so the same table
        // trains the same model on any engine.
        let mut by: Vec<String> = spec
            .forecast
            .as_ref()
            .and_then(|f| Some(vec![f.id_column.clone()?, f.time_column.clone()?]))
            .unwrap_or_default();
        if self.features.is_some() {
            for f in table.schema.fields() {
                if !by.contains(f.name()) {
                    by.push(f.name().clone());
                }
            }
        }
        if by.is_empty() {
            return Ok(table);
        }
        let by: Vec<&str> = by.iter().map(String::as_str).collect();
        Ok(sort_table(table, &by, origin)?)
    }
}

/// Read a job's data source (and its forecast test source), logging each read. A job with
/// `[features]` reads its feature table instead ([`feature_input`]).
pub async fn read_inputs(
    spec: &JobSpec,
    s3: &S3Config,
    log: &mut (dyn FnMut(String) + Send),
) -> Result<Input> {
    let source = &spec.data.source;
    let bytes = read_url(source, s3).await?;
    log(format!("read {} bytes from {source}", bytes.len()));
    Ok(Input {
        parts: vec![bytes],
        test: read_test_source(spec, s3, log).await?,
        features: None,
        shard_rows: Vec::new(),
        shards: Vec::new(),
    })
}

async fn read_test_source(
    spec: &JobSpec,
    s3: &S3Config,
    log: &mut (dyn FnMut(String) + Send),
) -> Result<Option<Bytes>> {
    Ok(
        match spec.forecast.as_ref().and_then(|f| f.test_source.clone()) {
            Some(url) => {
                let b = read_url(&url, s3).await?;
                log(format!("read {} bytes from {url}", b.len()));
                Some(b)
            }
            None => None,
        },
    )
}

/// Run a job's feature stage on `ctx` (a Ballista cluster's, or a single-process context)
/// into `dir` of `store`, unless an earlier attempt already wrote the whole table there;
/// then read the shards.
pub async fn feature_input(
    ctx: &SessionContext,
    spec: &JobSpec,
    store: &Store,
    dir: &str,
    s3: &S3Config,
    log: &mut (dyn FnMut(String) + Send),
) -> Result<Input> {
    let Some(features) = &spec.features else {
        return read_inputs(spec, s3, log).await;
    };
    let manifest_path = features_manifest_path(dir);
    let manifest = match store.get(&manifest_path).await {
        Ok(bytes) => {
            log(format!(
                "features: reusing the table an earlier attempt wrote to {}",
                store.url_of(dir)
            ));
            bytes
        }
        Err(halyard_core::Error::NotFound { .. }) => {
            let table = run_stage(ctx, features, &spec.data.label, &store.url_of(dir), log).await?;
            let bytes =
                Bytes::from(serde_json::to_vec_pretty(&table).expect("feature table serialises"));
            store.put(&manifest_path, bytes.clone()).await?;
            bytes
        }
        Err(e) => return Err(e.into()),
    };
    let mut input = read_feature_table(store, dir, &manifest, None, log).await?;
    input.test = read_test_source(spec, s3, log).await?;
    Ok(input)
}

/// Read the shards of the feature table whose manifest (`features.json`'s bytes) is
/// `manifest`: all of them, or with `only = Some((rank, workers))` those whose number is
/// `rank` modulo `workers`.
pub(crate) async fn read_feature_table(
    store: &Store,
    dir: &str,
    manifest: &Bytes,
    only: Option<(usize, usize)>,
    log: &mut (dyn FnMut(String) + Send),
) -> Result<Input> {
    let manifest_path = features_manifest_path(dir);
    let table: FeatureTable =
        serde_json::from_slice(manifest).map_err(|e| halyard_features::FeatureError::Output {
            location: store.url_of(&manifest_path),
            message: e.to_string(),
        })?;
    let mut parts = Vec::with_capacity(table.shards.len());
    let mut shards = Vec::with_capacity(table.shards.len());
    for (i, shard) in table.shards.iter().enumerate() {
        if only.is_none_or(|(rank, workers)| i % workers == rank) {
            parts.push(store.get(&feature_shard_path(dir, &shard.file)).await?);
            shards.push(i);
        }
    }
    let read: usize = parts.iter().map(Bytes::len).sum();
    log(format!(
        "features: read {} of {} shard(s) ({} rows in all), {read} bytes",
        parts.len(),
        table.shards.len(),
        table.rows
    ));
    Ok(Input {
        parts,
        test: None,
        features: Some((store.url_of(dir), digest(manifest))),
        shard_rows: table.shards.iter().map(|s| s.rows).collect(),
        shards,
    })
}

type Trained = (TrainedModel, DataLineage);

/// Train on a dedicated OS thread (training is CPU-bound and must not stall the runtime).
/// Progress lines arrive on the channel; the result on the oneshot.
pub fn spawn_training(
    name: &str,
    input: Input,
    spec: JobSpec,
    placement: Placement,
    cancel: Arc<AtomicBool>,
) -> Result<(
    mpsc::UnboundedReceiver<Progress>,
    oneshot::Receiver<Result<Trained>>,
)> {
    let (tx, rx) = mpsc::unbounded_channel::<Progress>();
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("train-{name}"))
        .spawn(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                train_blocking(&input, &spec, placement, &cancel, &tx)
            }))
            .unwrap_or_else(|p| Err(ExecutorError::Panicked(panic_message(p.as_ref()))));
            let _ = done_tx.send(result);
        })
        .map_err(|e| ExecutorError::Panicked(e.to_string()))?;
    Ok((rx, done_rx))
}

/// What a caught panic said.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// A response model's epoch for the job's log: `[member m/M ]epoch e/E loss l[ validation
/// log loss v]`.
pub(crate) fn epoch_line(r: &MemberReport) -> String {
    let e = &r.epoch;
    let member = if r.members > 1 {
        format!("member {}/{} ", r.member + 1, r.members)
    } else {
        String::new()
    };
    let valid = e
        .valid_loss
        .map(|v| format!(" validation log loss {v:.5}"))
        .unwrap_or_default();
    format!(
        "{member}epoch {}/{} loss {:.5}{valid}",
        e.epoch, e.epochs, e.loss
    )
}

/// Parse and train, on the calling (dedicated) thread.
fn train_blocking(
    input: &Input,
    spec: &JobSpec,
    placement: Placement,
    cancel: &AtomicBool,
    reports: &mpsc::UnboundedSender<Progress>,
) -> Result<(TrainedModel, DataLineage)> {
    let flow = || {
        if cancel.load(Ordering::Relaxed) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    if let Some(f) = &spec.forecast {
        let series = read_series(input, spec, f)?;
        let (train, test) = (series.train, series.test);
        let tc = forecast_config(f, spec, placement);
        let trained = train_forecaster(&train, &test, f.horizon, f.period, &tc, |r| {
            let _ = reports.send(Progress {
                // Steps over all members, the units of JobSpec::progress_total.
                epoch: u32::try_from(r.member * r.steps + r.step).unwrap_or(u32::MAX),
                loss: r.loss,
                line: format!(
                    "member {}/{} step {}/{} scaled MAE {:.5}",
                    r.member + 1,
                    r.members,
                    r.step,
                    r.steps,
                    r.loss
                ),
            });
            flow()
        })?;
        let lineage = lineage(
            input.location(spec),
            series.digest,
            series.in_source,
            &trained,
        );
        return Ok((trained, lineage));
    }
    let table = input.table(spec)?;
    let (mut features, rc) = model_configs(spec, placement);
    if input.features.is_some() {
        features.split_column = Some(SPLIT_COLUMN.to_string());
    }
    let trained = train_response_model(&table.batches, &features, &rc, |r| {
        let _ = reports.send(Progress {
            epoch: r.epoch.epoch,
            loss: r.epoch.loss,
            line: epoch_line(&r),
        });
        flow()
    })?;
    let lineage = lineage(input.location(spec), table.digest, table.rows, &trained);
    Ok((trained, lineage))
}

pub(crate) fn lineage(
    source: &str,
    digest: String,
    rows: usize,
    trained: &TrainedModel,
) -> DataLineage {
    DataLineage {
        source: source.to_string(),
        digest,
        rows,
        train_rows: trained.train_rows,
        test_rows: trained.test_rows,
    }
}

/// A forecasting job's series.
pub struct JobSeries {
    /// Histories to train on.
    pub train: Vec<Series>,
    /// Their true futures, for the test metrics.
    pub test: Vec<Series>,
    /// Series in the source.
    pub in_source: usize,
    /// `sha256:<hex>` of the source.
    pub digest: String,
}

/// Training and test series of a forecasting job: the test source's futures, or else the
/// last `horizon` points of every series held out.
pub fn read_series(input: &Input, spec: &JobSpec, f: &ForecastSpec) -> Result<JobSeries> {
    let source = input.location(spec);
    let (series, digest) = match f.layout {
        SeriesLayout::Wide => (
            read_wide_csv(&String::from_utf8_lossy(&input.parts[0]), source)?,
            digest(&input.parts[0]),
        ),
        SeriesLayout::Long => {
            let table = input.table(spec)?;
            let id = f.id_column.clone().unwrap_or_default();
            let value = f.value_column.clone().unwrap_or_default();
            (
                from_long_table(&table.batches, &id, &value, &f.covariates)?,
                table.digest,
            )
        }
    };
    let in_source = series.len();
    let (train, test) = match &input.test {
        Some(t) => {
            let origin = f.test_source.clone().unwrap_or_default();
            (series, read_wide_csv(&String::from_utf8_lossy(t), &origin)?)
        }
        None => split_last(series, f.horizon),
    };
    Ok(JobSeries {
        train,
        test,
        in_source,
        digest,
    })
}
