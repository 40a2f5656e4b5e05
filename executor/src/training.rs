//! Training on a dedicated OS thread: the device, the models crate's configs from a
//! spec, progress from the training loop, and the lineage recorded with a model.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use halyard_core::spec::SPLIT_COLUMN;
use halyard_core::spec::{
    CategoricalEncoding, ClassWeight, DeviceKind, ForecastSpec, JobSpec, ModelKind, Objective,
    OptimizerKind,
};
use halyard_models::artifact::DataLineage;
use halyard_models::device::{GPU_BUILD, Placement};
use halyard_models::forecast::nbeats::NBeatsTrainConfig;
use halyard_models::gbdt::{GbdtConfig, Objective as GbdtObjective};
use halyard_models::logistic::{Optimizer, TrainConfig};
use halyard_models::pipeline::{
    ClusterReport, MemberReport, ResponseConfig, ResponseKind, TrainedModel, train_forecaster,
    train_response_model, train_segments, train_uplift_model,
};
use halyard_models::preprocess::{Encoding, FeatureConfig};
use tokio::sync::{mpsc, oneshot};

use crate::error::{ExecutorError, Result};
use crate::input::{Input, read_series};

/// A job log's line for one k of a k-means job.
pub(crate) fn cluster_line(r: &ClusterReport) -> String {
    format!(
        "k-means k = {}: inertia {:.1}, held-out silhouette {:.4} ({} Lloyd iterations in the best run, {:.0}% of it initialising; {:.2} s)",
        r.k,
        r.inertia,
        r.silhouette,
        r.iterations,
        100.0 * r.init_share,
        r.seconds
    )
}

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
        ModelKind::Gbdt => ResponseKind::Gbdt(gbdt_config(spec)),
        ModelKind::Blend => ResponseKind::Blend {
            hidden: spec.model.hidden.clone(),
            max_embedding: spec.model.max_embedding,
            trees: gbdt_config(spec),
        },
        // A forecaster's spec never reaches the response path (it has `[forecast]`).
        ModelKind::LogisticRegression | ModelKind::Nbeats | ModelKind::Kmeans => {
            ResponseKind::LogisticRegression
        }
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

/// The boosted trees' settings from a job spec.
fn gbdt_config(spec: &JobSpec) -> GbdtConfig {
    let m = &spec.model;
    GbdtConfig {
        objective: match m.objective {
            Objective::Binary => GbdtObjective::Binary,
            Objective::L2 => GbdtObjective::L2,
            Objective::L1 => GbdtObjective::L1,
            Objective::Poisson => GbdtObjective::Poisson,
        },
        trees: m.trees,
        learning_rate: m.shrinkage.unwrap_or(spec.train.learning_rate),
        num_leaves: m.num_leaves,
        max_depth: m.max_depth,
        min_data_in_leaf: m.min_data_in_leaf,
        min_sum_hessian: m.min_sum_hessian,
        lambda_l1: m.lambda_l1,
        lambda_l2: m.lambda_l2,
        max_bins: m.max_bins,
        feature_fraction: m.feature_fraction,
        bagging_fraction: m.bagging_fraction,
        early_stopping: m.early_stopping,
    }
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

/// A progress line from the training thread.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Epoch (response models) or step (forecasters).
    pub epoch: u32,
    /// Training loss.
    pub loss: f64,
    /// Rows trained on since the previous report (0: not counted).
    pub rows: usize,
    /// A line for the job's log.
    pub line: String,
    /// Whether the line is for the log only (the data's profile), not a training report.
    pub note: bool,
}

/// Rows of a response model's input profiled at the start of its job's log.
pub(crate) const PROFILE_ROWS: usize = 100_000;

/// A trained model and the lineage of its data.
pub type Trained = (TrainedModel, DataLineage);

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

/// A response model's epoch for the job's log: `[member m/M |model: ]UNIT e/E loss l[
/// validation log loss v]`, the unit being `epoch` or, for boosted trees, `trees` (whose
/// losses are their objective's, `validation loss v`: log loss for a response, squared or
/// absolute error or Poisson loss for a number).
pub(crate) fn epoch_line(r: &MemberReport, unit: &str) -> String {
    let e = &r.epoch;
    let member = match r.model {
        Some(model) => format!("{model}: "),
        None if r.members > 1 => format!("member {}/{} ", r.member + 1, r.members),
        None => String::new(),
    };
    let valid = e
        .valid_loss
        .map(|v| {
            let name = if unit == "trees" { "loss" } else { "log loss" };
            format!(" validation {name} {v:.5}")
        })
        .unwrap_or_default();
    format!(
        "{member}{unit} {}/{} loss {:.5}{valid}",
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
                rows: 0,
                line: format!(
                    "member {}/{} step {}/{} scaled MAE {:.5}",
                    r.member + 1,
                    r.members,
                    r.step,
                    r.steps,
                    r.loss
                ),
                note: false,
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
    for line in profile_lines(&table, input.location(spec), spec) {
        let _ = reports.send(Progress {
            epoch: 0,
            loss: f64::NAN,
            rows: 0,
            line,
            note: true,
        });
    }
    let (mut features, rc) = model_configs(spec, placement);
    if input.features.is_some() {
        features.split_column = Some(SPLIT_COLUMN.to_string());
    }
    let report = |r: MemberReport| {
        // Boosted trees (alone or a blend's) report every few trees.
        let trees = spec.model.kind == ModelKind::Gbdt
            || r.model == Some(halyard_models::pipeline::TREES_PART);
        let _ = reports.send(Progress {
            epoch: r.epoch.epoch,
            loss: r.epoch.loss,
            // An epoch is one pass over the training rows; trees report every few trees,
            // which are not counted.
            rows: if trees { 0 } else { table.rows },
            line: epoch_line(&r, if trees { "trees" } else { "epoch" }),
            note: false,
        });
        flow()
    };
    let trained = match &spec.data.treatment {
        _ if spec.model.kind == ModelKind::Kmeans => {
            let mut tried = 0;
            train_segments(
                &table.batches,
                &features,
                &spec.model.k,
                spec.train.seed,
                |r| {
                    tried += 1;
                    let _ = reports.send(Progress {
                        epoch: tried,
                        loss: r.inertia,
                        rows: 0,
                        line: cluster_line(r),
                        note: false,
                    });
                    flow()
                },
            )?
        }
        Some(t) => {
            let x = spec.model.uplift == halyard_core::spec::UpliftLearner::XLearner;
            train_uplift_model(&table.batches, &features, t, x, &rc, report)?
        }
        None => train_response_model(&table.batches, &features, &rc, report)?,
    };
    let lineage = lineage(input.location(spec), table.digest, table.rows, &trained);
    Ok((trained, lineage))
}

/// A forecaster's forecasts of its held-out points as CSV, one row per series and step:
/// `series`, `step` (1 to the horizon), the `actual` value and the model's `forecast`.
/// `None` for a response model.
pub fn test_forecasts(
    spec: &JobSpec,
    input: &Input,
    trained: &TrainedModel,
) -> Result<Option<String>> {
    use std::fmt::Write;
    let Some(f) = &spec.forecast else {
        return Ok(None);
    };
    let series = read_series(input, spec, f)?;
    let h = series
        .test
        .iter()
        .map(|s| s.values.len())
        .min()
        .unwrap_or(0)
        .min(f.horizon);
    let runtime =
        halyard_models::runtime::Runtime::new(trained.architecture.clone(), &trained.weights)?;
    let ours = runtime.forecast(&series.train, h)?;
    let mut out = String::from("series,step,actual,forecast\n");
    for ((s, test), fc) in series.train.iter().zip(&series.test).zip(&ours) {
        let id = if s.id.contains([',', '"', '\n']) {
            format!("\"{}\"", s.id.replace('"', "\"\""))
        } else {
            s.id.clone()
        };
        for (step, (actual, forecast)) in test.values.iter().zip(fc).take(h).enumerate() {
            let _ = writeln!(out, "{id},{},{actual},{forecast}", step + 1);
        }
    }
    Ok(Some(out))
}

/// The profile of a response model's input (its first [`PROFILE_ROWS`] rows) as lines
/// for the start of its job's log (`halyard profile`'s table).
fn profile_lines(table: &halyard_core::data::Table, location: &str, spec: &JobSpec) -> Vec<String> {
    use halyard_core::profile::{head, profile, render};
    let label = Some(spec.data.label.as_str()).filter(|l| !l.is_empty());
    let sample = head(table, PROFILE_ROWS);
    let name = if table.rows > PROFILE_ROWS {
        format!("{location} (its first {PROFILE_ROWS} rows)")
    } else {
        location.to_string()
    };
    match profile(&sample, &name, label, &spec.data.exclude) {
        Ok(p) => render(&p).lines().map(|l| format!("data: {l}")).collect(),
        Err(e) => vec![format!("data: no profile ({e})")],
    }
}

/// The test rows' predictions of a model just trained on `input` as CSV: each row's
/// index in the input (`row`), its excluded columns (ids), the label and the model's
/// `score` (response probability; uplift; segment). `None` for a forecaster
/// ([`test_forecasts`]).
pub fn test_predictions(
    spec: &JobSpec,
    input: &Input,
    trained: &TrainedModel,
) -> Result<Option<Vec<u8>>> {
    use arrow::array::{ArrayRef, Float32Array, RecordBatch, UInt32Array, UInt64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    if spec.forecast.is_some() {
        return Ok(None);
    }
    let internal = |e: String| ExecutorError::Invalid(format!("test predictions: {e}"));
    let table = input.table(spec)?;
    let (mut features, _) = model_configs(spec, Placement::Cpu);
    if input.features.is_some() {
        features.split_column = Some(SPLIT_COLUMN.to_string());
    }
    let roles = halyard_models::preprocess::row_roles(&table.batches, &features)?;
    let runtime =
        halyard_models::runtime::Runtime::new(trained.architecture.clone(), &trained.weights)?;
    let scores = runtime.score(&table.batches)?;
    let test: Vec<u32> = roles
        .iter()
        .enumerate()
        .filter(|(_, r)| **r == halyard_models::preprocess::Role::Test)
        .map(|(i, _)| i as u32)
        .collect();
    let all = arrow::compute::concat_batches(&table.schema, &table.batches)
        .map_err(|e| internal(e.to_string()))?;
    let indices = UInt32Array::from(test.clone());
    let mut fields = vec![Field::new("row", DataType::UInt64, false)];
    let mut columns: Vec<ArrayRef> = vec![Arc::new(UInt64Array::from(
        test.iter().map(|&i| u64::from(i)).collect::<Vec<_>>(),
    ))];
    let keep = spec
        .data
        .exclude
        .iter()
        .chain(std::iter::once(&spec.data.label))
        .filter(|c| !c.is_empty());
    for name in keep {
        let Ok(i) = table.schema.index_of(name) else {
            continue;
        };
        let taken = arrow::compute::take(all.column(i), &indices, None)
            .map_err(|e| internal(e.to_string()))?;
        fields.push(Field::new(name, taken.data_type().clone(), true));
        columns.push(taken);
    }
    fields.push(Field::new("score", DataType::Float32, false));
    columns.push(Arc::new(Float32Array::from(
        test.iter().map(|&i| scores[i as usize]).collect::<Vec<_>>(),
    )));
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(|e| internal(e.to_string()))?;
    let mut out = Vec::new();
    {
        let mut w = arrow::csv::Writer::new(&mut out);
        w.write(&batch).map_err(|e| internal(e.to_string()))?;
    }
    Ok(Some(out))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_takes_a_gpu_only_when_the_build_and_the_executor_have_one() {
        let spec = |device: &str| {
            JobSpec::from_toml(
                &format!(
                    "name = \"p\"\n[data]\nsource = \"x.csv\"\nlabel = \"y\"\n[train]\ndevice = \"{device}\"\n[resources]\ngpus = 1\n"
                ),
                "test",
            )
            .unwrap()
        };
        let gpu_if_built = if GPU_BUILD {
            Placement::Gpu
        } else {
            Placement::Cpu
        };
        // (device, GPUs the executor advertises, placement)
        for (device, gpus, want) in [
            ("cpu", 1, Placement::Cpu),
            ("gpu", 0, Placement::Gpu),
            ("auto", 0, Placement::Cpu),
            ("auto", 1, gpu_if_built),
        ] {
            assert_eq!(
                placement(&spec(device), gpus),
                want,
                "{device} with {gpus} GPU(s)"
            );
        }
    }
}
