//! The job spec: one TOML file that says what to train, on what, and with which resources.
//!
//! Parsing refuses unknown keys; [`JobSpec::validate`] checks every value against its rule
//! (the rule tables of `rules.rs`, one per section) and names the field, the value and the
//! rule. The `[search]` section is `search.rs`. Every field is documented in
//! `docs/job-spec.md`; keep the two in step.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

mod check;
mod rules;
mod score;
mod search;
mod stage;

pub use score::{AudienceRule, Pick, ScoreSpec};
pub use search::{Dist, Params, SearchSpec, Strategy, apply};
pub use stage::Stage;

/// A whole job spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Job and model name: the artifact lands under `models/<name>/<version>/`.
    pub name: String,
    /// Free text shown in listings.
    #[serde(default)]
    pub description: String,
    /// Where the training data is and how to read it (a `[features]` job may leave it
    /// out when it needs no label or column rules).
    #[serde(default)]
    pub data: DataSpec,
    /// Which model and its hyperparameters.
    #[serde(default)]
    pub model: ModelSpec,
    /// Training settings.
    #[serde(default)]
    pub train: TrainSpec,
    /// What the job needs from an executor.
    #[serde(default)]
    pub resources: ResourceSpec,
    /// Forecasting jobs (`[model] type = "nbeats"`): horizon, layout of the series.
    #[serde(default)]
    pub forecast: Option<ForecastSpec>,
    /// Feature engineering in SQL, run on the cluster before training; its output replaces
    /// `[data] source` as the training input.
    #[serde(default)]
    pub features: Option<FeaturesSpec>,
    /// Hyperparameter search: trials of this spec with sampled parameters, run as tasks
    /// across the executors; the best is published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchSpec>,
    /// Batch scoring: a registered model scores the table and the scores become an
    /// audience; the job trains nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<ScoreSpec>,
}

/// The `[features]` section: named sources, SQL over them, the split rule and the shards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeaturesSpec {
    /// The tables the SQL reads (`[[features.sources]]`).
    pub sources: Vec<SourceSpec>,
    /// One query whose result is the feature table.
    #[serde(default)]
    pub sql: Option<String>,
    /// Or named steps (`[[features.steps]]`), each a view the next can read; the last
    /// step's result is the feature table.
    #[serde(default)]
    pub steps: Vec<StepSpec>,
    /// How rows are divided into train, validation and test (response models need one;
    /// a forecaster holds out the last `horizon` points of every series itself).
    #[serde(default)]
    pub split: Option<SplitSpec>,
    /// Parquet files the feature table is written as (in parallel, one query each).
    #[serde(default = "default_shards")]
    pub shards: usize,
    /// Column whose hash assigns a row to a shard (default: the split's key or column; a
    /// forecaster's series id keeps each series in one shard).
    #[serde(default)]
    pub shard_key: Option<String>,
    /// Read the feature table of this job instead of running the stage (a search's trials
    /// share the search job's table). Set by the leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_of: Option<String>,
}

/// One named source table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// The table's name in the SQL.
    pub name: String,
    /// A file or folder (relative to the spec file), `file://` or `s3://bucket/key` URL. A
    /// folder (ending in `/`) reads every file in it, which must share one schema.
    pub path: String,
    /// `csv`, `parquet` or `json` (newline-delimited); taken from the extension (of a
    /// folder's first file) when absent.
    #[serde(default)]
    pub format: Option<SourceFormat>,
    /// CSV field separator.
    #[serde(default = "default_delimiter")]
    pub delimiter: String,
    /// Whether CSV files start with a header line.
    #[serde(default = "default_true")]
    pub has_header: bool,
    /// Add a column of this name holding each row's 0-based position in the file (one file
    /// only): what index-based split protocols need.
    #[serde(default)]
    pub row_index: Option<String>,
    /// Column types stated instead of inferred, as in `[data] types` (CSV, Parquet and
    /// JSON sources: a column is cast to its stated type).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub types: BTreeMap<String, ColumnType>,
    /// CSV cells read as missing values besides empty and whitespace-only ones, as in
    /// `[data] missing`.
    #[serde(default = "default_missing")]
    pub missing: Vec<String>,
    /// How dates are written when they are not ISO 8601, as in `[data] date_format`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date_format: Option<String>,
}

/// Formats a feature source can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    /// Delimited text.
    Csv,
    /// Apache Parquet.
    Parquet,
    /// Newline-delimited JSON.
    Json,
}

impl SourceFormat {
    /// The name as written in a spec.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceFormat::Csv => "csv",
            SourceFormat::Parquet => "parquet",
            SourceFormat::Json => "json",
        }
    }
}

/// One named step of a feature pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// The view's name, readable by later steps.
    pub name: String,
    /// Its query.
    pub sql: String,
}

/// The rule that sends each row to train, validation or test: deterministic, so a rerun
/// (or another worker) puts every row in the same part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "lowercase", deny_unknown_fields)]
pub enum SplitSpec {
    /// By a stable hash of a key column (customers stay on one side).
    Hash {
        /// The key column.
        key: String,
        /// Share of rows in the test set, percent.
        test_percent: f64,
        /// Share of rows in the validation set, percent.
        #[serde(default)]
        validation_percent: f64,
    },
    /// By an integer key modulo `every` (with `row_index`, the file-order protocols such as
    /// bank marketing's `index % 5 == 4`).
    Modulo {
        /// The integer key column.
        key: String,
        /// The modulus.
        every: u64,
        /// Rows with `key % every == test_remainder` are test rows.
        test_remainder: u64,
        /// Rows with `key % every == validation_remainder` are validation rows.
        #[serde(default)]
        validation_remainder: Option<u64>,
    },
    /// By time: rows at or after `test_from` are test rows (forecasting).
    Time {
        /// The date or timestamp column.
        column: String,
        /// First test time, as SQL compares it with the column (`2012-08-01`).
        test_from: String,
        /// First validation time (before `test_from`).
        #[serde(default)]
        validation_from: Option<String>,
    },
}

impl SplitSpec {
    /// The column the rule reads.
    pub fn column(&self) -> &str {
        match self {
            SplitSpec::Hash { key, .. } | SplitSpec::Modulo { key, .. } => key,
            SplitSpec::Time { column, .. } => column,
        }
    }
}

/// The column the feature stage adds to say which part a row is in: `train`,
/// `validation` or `test`.
pub const SPLIT_COLUMN: &str = "halyard_split";

fn default_shards() -> usize {
    2
}

/// The `[forecast]` section of a forecasting job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForecastSpec {
    /// Steps to forecast.
    pub horizon: usize,
    /// Seasonal period (24 for hourly data with a daily cycle; MASE's lag).
    #[serde(default = "default_period")]
    pub period: usize,
    /// `wide` (one line per series, the M4 layout) or `long` (one row per observation).
    #[serde(default)]
    pub layout: SeriesLayout,
    /// Long layout: the column naming the series.
    #[serde(default)]
    pub id_column: Option<String>,
    /// Long layout: the column holding the values.
    #[serde(default)]
    pub value_column: Option<String>,
    /// Long layout: covariate columns known in advance (holiday, promotion flags).
    #[serde(default)]
    pub covariates: Vec<String>,
    /// Long layout: the column that orders each series' rows (needed when `[features]`
    /// builds the input: its shards keep no row order).
    #[serde(default)]
    pub time_column: Option<String>,
    /// The true futures for the test metrics, same layout and series order as the source
    /// (wide layout). Without it, the last `horizon` points of every series are held out.
    #[serde(default)]
    pub test_source: Option<String>,
    /// Input windows of the ensemble members, as multiples of the horizon.
    #[serde(default = "default_lookbacks")]
    pub lookbacks: Vec<usize>,
    /// Blocks per member.
    #[serde(default = "default_blocks")]
    pub blocks: usize,
    /// Fully connected layers per block.
    #[serde(default = "default_layers")]
    pub layers: usize,
    /// Width of those layers.
    #[serde(default = "default_width")]
    pub width: usize,
    /// Training windows end within the last `history_horizons * horizon` points.
    #[serde(default = "default_history_horizons")]
    pub history_horizons: usize,
    /// Gradient steps per member.
    #[serde(default = "default_steps")]
    pub steps: usize,
}

/// How series are laid out in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeriesLayout {
    /// `"id","v1","v2",…` per line, empty trailing cells (M4).
    #[default]
    Wide,
    /// One row per observation: id, value and covariate columns.
    Long,
}

/// The `[data]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// A path (relative to the spec file), a `file://` URL or an `s3://bucket/key` URL.
    /// Left out when `[features]` builds the input.
    #[serde(default)]
    pub source: String,
    /// `csv` or `parquet`; taken from the extension when absent.
    #[serde(default)]
    pub format: Option<DataFormat>,
    /// Field separator of a CSV file.
    #[serde(default = "default_delimiter")]
    pub delimiter: String,
    /// Whether the first CSV line holds the column names.
    #[serde(default = "default_true")]
    pub has_header: bool,
    /// The column to predict (response models; forecasting jobs leave it out).
    #[serde(default)]
    pub label: String,
    /// For a string label: the value that means a response (1). When absent, any of
    /// `yes`, `true`, `1`, `y` (any case) counts as 1.
    #[serde(default)]
    pub positive: Option<String>,
    /// Columns left out of the features (ids, leaky columns).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Numeric columns to treat as categorical (string columns always are).
    #[serde(default)]
    pub categorical: Vec<String>,
    /// Crossed categoricals: each list of two or more columns becomes one more categorical
    /// feature whose value joins theirs (`[["month", "day"]]`).
    #[serde(default)]
    pub crosses: Vec<Vec<String>>,
    /// An uplift job: the column that says who was treated (0 or 1). The model learns the
    /// treatment's effect on the label (a T-learner over `[model] type`), not the label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub treatment: Option<String>,
    /// Column types stated instead of inferred (`{ "nr.employed" = "float", signup =
    /// "date" }`): `int`, `float`, `bool`, `string`, `date` (YYYY-MM-DD) or `timestamp`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub types: BTreeMap<String, ColumnType>,
    /// CSV cells read as missing values, besides empty and whitespace-only ones (which
    /// always are).
    #[serde(default = "default_missing")]
    pub missing: Vec<String>,
    /// How dates are written when they are not ISO 8601: a `strftime` pattern such as
    /// `%d/%m/%Y` (day first) or `%m/%d/%Y %H:%M`. A text column whose every value reads
    /// with it becomes a date (a timestamp when the pattern has a time), and so does a
    /// column stated as `date` or `timestamp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date_format: Option<String>,
}

/// A column type a spec may state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    /// Whole numbers (64 bits).
    Int,
    /// Decimal numbers (64 bits).
    Float,
    /// `true`/`false`.
    Bool,
    /// Text: a category.
    String,
    /// A calendar date, `YYYY-MM-DD`.
    Date,
    /// A date and time, ISO 8601.
    Timestamp,
}

impl ColumnType {
    /// The Arrow type a column of this type is read as.
    pub fn arrow(self) -> arrow::datatypes::DataType {
        use arrow::datatypes::{DataType, TimeUnit};
        match self {
            ColumnType::Int => DataType::Int64,
            ColumnType::Float => DataType::Float64,
            ColumnType::Bool => DataType::Boolean,
            ColumnType::String => DataType::Utf8,
            ColumnType::Date => DataType::Date32,
            ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, None),
        }
    }
}

/// File format of a data source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// Comma (or `delimiter`) separated values.
    Csv,
    /// Apache Parquet.
    Parquet,
}

/// The `[model]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Model family.
    #[serde(rename = "type", default)]
    pub kind: ModelKind,
    /// How categorical columns become numbers.
    #[serde(default)]
    pub encoding: CategoricalEncoding,
    /// One-hot: the most frequent values kept per column; the rest share one `other` slot.
    #[serde(default = "default_max_categories")]
    pub max_categories: usize,
    /// Hashed: buckets per column.
    #[serde(default = "default_hash_buckets")]
    pub hash_buckets: usize,
    /// L2 penalty on the logistic regression's weights.
    #[serde(default = "default_l2")]
    pub l2: f64,
    /// Also encode each numeric column by its training quantile bucket (up to this many
    /// buckets; 0: off).
    #[serde(default)]
    pub numeric_buckets: usize,
    /// MLP: hidden layer widths.
    #[serde(default = "default_hidden")]
    pub hidden: Vec<usize>,
    /// MLP: the widest embedding of a categorical column.
    #[serde(default = "default_max_embedding")]
    pub max_embedding: usize,
    /// Members trained with consecutive seeds and averaged.
    #[serde(default = "default_ensemble")]
    pub ensemble: usize,
    /// k-means: the cluster counts to try; the one with the best silhouette on held-out
    /// rows is kept.
    #[serde(default = "default_k")]
    pub k: Vec<usize>,
    /// Uplift jobs (`[data] treatment`): the meta-learner.
    #[serde(default)]
    pub uplift: UpliftLearner,
    /// GBDT: what the trees fit: `binary` (a response, 0/1 or yes/no labels), `l2` or `l1`
    /// (a number: squared or absolute error), `poisson` (a count ≥ 0).
    #[serde(default)]
    pub objective: Objective,
    /// GBDT: boosting rounds (the most, with early stopping).
    #[serde(default = "default_trees")]
    pub trees: usize,
    /// GBDT: the trees' learning rate (the shrinkage of each tree's leaf values); absent:
    /// `[train] learning_rate`. A blend's MLP keeps `[train] learning_rate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shrinkage: Option<f64>,
    /// GBDT: leaves per tree.
    #[serde(default = "default_num_leaves")]
    pub num_leaves: usize,
    /// GBDT: levels per tree (0: no limit beyond `num_leaves`).
    #[serde(default)]
    pub max_depth: usize,
    /// GBDT: training rows a leaf needs at least.
    #[serde(default = "default_min_data_in_leaf")]
    pub min_data_in_leaf: usize,
    /// GBDT: sum of hessians a leaf needs at least.
    #[serde(default = "default_min_sum_hessian")]
    pub min_sum_hessian: f64,
    /// GBDT: L1 penalty on leaf values.
    #[serde(default)]
    pub lambda_l1: f64,
    /// GBDT: L2 penalty on leaf values.
    #[serde(default)]
    pub lambda_l2: f64,
    /// GBDT: bins per numeric column.
    #[serde(default = "default_max_bins")]
    pub max_bins: usize,
    /// GBDT: share of the input columns each tree may split on.
    #[serde(default = "default_fraction")]
    pub feature_fraction: f64,
    /// GBDT: share of the training rows each tree is grown on.
    #[serde(default = "default_fraction")]
    pub bagging_fraction: f64,
    /// GBDT: stop after this many trees without a better validation loss (the objective's)
    /// and keep the best (0: never stop early).
    #[serde(default = "default_early_stopping")]
    pub early_stopping: usize,
}

fn default_trees() -> usize {
    500
}
fn default_num_leaves() -> usize {
    31
}
fn default_min_data_in_leaf() -> usize {
    20
}
fn default_min_sum_hessian() -> f64 {
    1e-3
}
fn default_max_bins() -> usize {
    255
}
fn default_fraction() -> f64 {
    1.0
}
fn default_early_stopping() -> usize {
    50
}

/// What boosted trees fit (LightGBM's objectives of the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// Binary log loss: a response probability.
    #[default]
    Binary,
    /// Squared error: a number (the conditional mean).
    L2,
    /// Absolute error: a number (the conditional median), robust to outliers.
    L1,
    /// Poisson log likelihood: a count ≥ 0 (the expected count).
    Poisson,
}

impl Objective {
    /// Its name in a job spec.
    pub fn as_str(self) -> &'static str {
        match self {
            Objective::Binary => "binary",
            Objective::L2 => "l2",
            Objective::L1 => "l1",
            Objective::Poisson => "poisson",
        }
    }
}

/// How an uplift job learns the treatment's effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpliftLearner {
    /// Two models, one per arm; the uplift is the difference of their probabilities.
    #[default]
    TLearner,
    /// The two arm models, then models of each arm's imputed effects, blended by the
    /// treated share (Künzel et al. 2019).
    XLearner,
}

/// Model families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Logistic regression for response prediction.
    #[default]
    LogisticRegression,
    /// MLP with embeddings for response prediction.
    Mlp,
    /// Gradient-boosted trees for response prediction.
    Gbdt,
    /// The MLP and the boosted trees trained on the same rows, their probabilities
    /// averaged with a weight fitted on the validation rows.
    Blend,
    /// N-BEATS ensemble for trend forecasting (needs `[forecast]`).
    Nbeats,
    /// k-means customer segmentation (`[data] label`, when given, only profiles the
    /// segments).
    Kmeans,
}

impl ModelKind {
    /// The name as written in a spec.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::LogisticRegression => "logistic_regression",
            ModelKind::Mlp => "mlp",
            ModelKind::Gbdt => "gbdt",
            ModelKind::Blend => "blend",
            ModelKind::Nbeats => "nbeats",
            ModelKind::Kmeans => "kmeans",
        }
    }
}

/// Categorical encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CategoricalEncoding {
    /// One column per frequent value.
    #[default]
    OneHot,
    /// Values hashed into `hash_buckets` columns.
    Hashed,
}

/// The `[train]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    /// Passes over the training rows.
    #[serde(default = "default_epochs")]
    pub epochs: u32,
    /// Rows per gradient step.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Step size of the optimizer.
    #[serde(default = "default_learning_rate")]
    pub learning_rate: f64,
    /// `adam` or `sgd`.
    #[serde(default)]
    pub optimizer: OptimizerKind,
    /// Seed of weight initialisation and shuffling.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Rows whose index `i` has `i % holdout_every == holdout_every - 1` are held out
    /// for the test metrics (5 gives the bank-marketing protocol: every fifth row).
    #[serde(default = "default_holdout_every")]
    pub holdout_every: usize,
    /// `cpu`, `gpu` or `auto`.
    #[serde(default)]
    pub device: DeviceKind,
    /// MLP: decoupled weight decay (AdamW).
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    /// MLP: epochs without a better validation loss before stopping (0: never stop early).
    #[serde(default = "default_patience")]
    pub patience: u32,
    /// `none`, or `balanced` to weigh positives by negatives / positives.
    #[serde(default)]
    pub class_weight: ClassWeight,
    /// Data-parallel training on this many executors at once (one worker each; MLP only).
    /// Absent: one executor trains alone, without the group machinery.
    #[serde(default)]
    pub workers: Option<u32>,
    /// Data-parallel: rank 0 checkpoints after this many steps (0: only by time).
    #[serde(default = "default_checkpoint_steps")]
    pub checkpoint_steps: u64,
    /// Data-parallel: rank 0 checkpoints after this many seconds (0: only by steps).
    #[serde(default = "default_checkpoint_secs")]
    pub checkpoint_secs: f64,
    /// Data-parallel: a peer silent for this long fails the step and the group.
    #[serde(default = "default_step_timeout_secs")]
    pub step_timeout_secs: f64,
    /// Data-parallel: continue from this (cancelled or failed) job's last checkpoint when
    /// this job has none of its own; `halyard resume JOB` sets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_from: Option<String>,
    /// Data-parallel: stop after this epoch, checkpoint, and report the validation loss
    /// (a search's rung); the job then publishes nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_after_epoch: Option<u32>,
    /// Publish the trained model (a search's trials do not; the search publishes the best).
    #[serde(default = "default_publish")]
    pub publish: bool,
}

fn default_publish() -> bool {
    true
}

fn default_checkpoint_steps() -> u64 {
    200
}

fn default_checkpoint_secs() -> f64 {
    60.0
}

fn default_step_timeout_secs() -> f64 {
    30.0
}

/// Class weighting of the loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClassWeight {
    /// Every row counts the same (best calibrated probabilities).
    #[default]
    None,
    /// Positives weighed by negatives / positives.
    Balanced,
}

/// Optimizers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Adam.
    #[default]
    Adam,
    /// Plain stochastic gradient descent.
    Sgd,
}

/// Training devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// A GPU when the executor has one, else the CPU.
    #[default]
    Auto,
    /// burn's flex backend on the CPU.
    Cpu,
    /// A GPU (needs an executor built with GPU support).
    Gpu,
}

/// The `[resources]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceSpec {
    /// CPU slots taken on the executor while the job runs.
    #[serde(default = "default_cpus")]
    pub cpus: u32,
    /// Memory the job expects to use, in MiB; placement needs an executor with this much.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u64,
    /// GPUs needed.
    #[serde(default)]
    pub gpus: u32,
}

fn default_delimiter() -> String {
    ",".into()
}
/// Cells read as missing by default (with empty and whitespace-only ones).
fn default_missing() -> Vec<String> {
    ["NA", "N/A", "null", "NULL", "?"]
        .map(String::from)
        .to_vec()
}
fn default_true() -> bool {
    true
}
/// `[model] max_categories` when the spec leaves it out.
pub const DEFAULT_MAX_CATEGORIES: usize = 64;
fn default_max_categories() -> usize {
    DEFAULT_MAX_CATEGORIES
}
fn default_hash_buckets() -> usize {
    256
}
fn default_l2() -> f64 {
    1e-4
}
fn default_epochs() -> u32 {
    10
}
fn default_batch_size() -> usize {
    256
}
fn default_learning_rate() -> f64 {
    0.05
}
fn default_seed() -> u64 {
    42
}
fn default_holdout_every() -> usize {
    5
}
fn default_period() -> usize {
    1
}
fn default_lookbacks() -> Vec<usize> {
    vec![2, 3, 4]
}
fn default_blocks() -> usize {
    6
}
fn default_layers() -> usize {
    3
}
fn default_width() -> usize {
    256
}
fn default_history_horizons() -> usize {
    10
}
fn default_steps() -> usize {
    1500
}
fn default_hidden() -> Vec<usize> {
    vec![128, 64]
}
fn default_max_embedding() -> usize {
    16
}
fn default_ensemble() -> usize {
    1
}
fn default_k() -> Vec<usize> {
    vec![8]
}
fn default_weight_decay() -> f64 {
    1e-4
}
fn default_patience() -> u32 {
    3
}
fn default_cpus() -> u32 {
    1
}
fn default_memory_mb() -> u64 {
    512
}

impl Default for ModelSpec {
    fn default() -> Self {
        ModelSpec {
            kind: ModelKind::default(),
            encoding: CategoricalEncoding::default(),
            max_categories: default_max_categories(),
            hash_buckets: default_hash_buckets(),
            l2: default_l2(),
            numeric_buckets: 0,
            hidden: default_hidden(),
            max_embedding: default_max_embedding(),
            ensemble: default_ensemble(),
            k: default_k(),
            uplift: UpliftLearner::default(),
            objective: Objective::default(),
            trees: default_trees(),
            shrinkage: None,
            num_leaves: default_num_leaves(),
            max_depth: 0,
            min_data_in_leaf: default_min_data_in_leaf(),
            min_sum_hessian: default_min_sum_hessian(),
            lambda_l1: 0.0,
            lambda_l2: 0.0,
            max_bins: default_max_bins(),
            feature_fraction: default_fraction(),
            bagging_fraction: default_fraction(),
            early_stopping: default_early_stopping(),
        }
    }
}

impl Default for TrainSpec {
    fn default() -> Self {
        TrainSpec {
            epochs: default_epochs(),
            batch_size: default_batch_size(),
            learning_rate: default_learning_rate(),
            optimizer: OptimizerKind::default(),
            seed: default_seed(),
            holdout_every: default_holdout_every(),
            device: DeviceKind::default(),
            weight_decay: default_weight_decay(),
            patience: default_patience(),
            class_weight: ClassWeight::default(),
            workers: None,
            checkpoint_steps: default_checkpoint_steps(),
            checkpoint_secs: default_checkpoint_secs(),
            step_timeout_secs: default_step_timeout_secs(),
            resume_from: None,
            stop_after_epoch: None,
            publish: true,
        }
    }
}

impl Default for DataSpec {
    fn default() -> Self {
        DataSpec {
            source: String::new(),
            format: None,
            delimiter: default_delimiter(),
            has_header: true,
            label: String::new(),
            positive: None,
            exclude: Vec::new(),
            categorical: Vec::new(),
            crosses: Vec::new(),
            treatment: None,
            types: BTreeMap::new(),
            missing: default_missing(),
            date_format: None,
        }
    }
}

impl Default for ResourceSpec {
    fn default() -> Self {
        ResourceSpec {
            cpus: default_cpus(),
            memory_mb: default_memory_mb(),
            gpus: 0,
        }
    }
}

impl DataSpec {
    /// How its CSV cells read.
    pub fn csv_rules(&self) -> crate::csv::CsvRules<'_> {
        crate::csv::CsvRules {
            section: "[data]".into(),
            has_header: self.has_header,
            delimiter: self.delimiter_byte(),
            types: &self.types,
            missing: &self.missing,
            date_format: self.date_format.as_deref(),
        }
    }

    /// The format, from `format` or else the source's extension.
    pub fn resolved_format(&self) -> Result<DataFormat> {
        self.format_at("[data]")
    }

    pub(super) fn format_at(&self, location: &str) -> Result<DataFormat> {
        if let Some(f) = self.format {
            return Ok(f);
        }
        let lower = self.source.to_ascii_lowercase();
        if [".csv", ".tsv", ".txt"].iter().any(|e| lower.ends_with(e)) {
            Ok(DataFormat::Csv)
        } else if [".parquet", ".pq"].iter().any(|e| lower.ends_with(e)) {
            Ok(DataFormat::Parquet)
        } else {
            Err(Error::invalid(
                location,
                "format",
                "(absent)",
                format!(
                    "cannot tell the format of {} from its extension: set format = \"csv\" or \"parquet\"",
                    self.source
                ),
            ))
        }
    }

    /// The delimiter as one byte.
    pub fn delimiter_byte(&self) -> u8 {
        self.delimiter.as_bytes().first().copied().unwrap_or(b',')
    }
}

impl JobSpec {
    /// Parse and validate a spec. `origin` names the text in errors (a file name).
    pub fn from_toml(text: &str, origin: &str) -> Result<JobSpec> {
        let spec = JobSpec::parse_unchecked(text, origin)?;
        spec.validate(origin)?;
        Ok(spec)
    }

    /// Parse a spec's text without checking its rules (`JobSpec::problems` lists what
    /// breaks them): TOML syntax, unknown keys and wrong types are the only errors.
    pub fn parse_unchecked(text: &str, origin: &str) -> Result<JobSpec> {
        let mut spec: JobSpec = toml::from_str(text).map_err(|e| Error::Toml {
            source_name: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        // A scoring job's shards are assigned by its key unless it says otherwise.
        if let (Some(f), Some(s)) = (spec.features.as_mut(), spec.score.as_ref())
            && f.shard_key.is_none()
            && f.split.is_none()
        {
            f.shard_key = s.key.first().cloned();
        }
        Ok(spec)
    }

    /// The 1-based line where `field` is written in `section` (`""` for the top level,
    /// `"[train]"`, `"[score.audience]"`) of a spec's `text`; `None` when it is not written
    /// there (a default broke the rule, or the rule spans sections).
    pub fn line_of(text: &str, section: &str, field: &str) -> Option<usize> {
        let mut current = "";
        for (i, line) in text.lines().enumerate() {
            let t = line.split('#').next().unwrap_or("").trim();
            if t.starts_with('[') {
                current = t;
                continue;
            }
            if current == section && t.split('=').next().map(str::trim) == Some(field) {
                return Some(i + 1);
            }
        }
        None
    }

    /// Every broken rule of spec `text` (from `origin`), each with its line where the
    /// spec writes the field: `line 7: …`. `Err` when the text is not a job spec's TOML.
    pub fn problems_in(text: &str, origin: &str) -> Result<Vec<String>> {
        let problems = JobSpec::parse_unchecked(text, origin)?.problems(origin);
        Ok(problems
            .iter()
            .map(|e| {
                let line = match e {
                    Error::Invalid {
                        location, field, ..
                    } => {
                        let section = location.strip_prefix(origin).unwrap_or(location).trim();
                        JobSpec::line_of(text, section, field)
                    }
                    _ => None,
                };
                match line {
                    Some(n) => format!("line {n}: {e}"),
                    None => e.to_string(),
                }
            })
            .collect())
    }

    /// Read, parse and validate a spec file, and make a relative data source absolute
    /// against the file's folder.
    pub fn from_file(path: &Path) -> Result<JobSpec> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        JobSpec::from_text(&text, &path.display().to_string(), base)
    }

    /// Parse and validate a spec's `text` (from `origin`), and make its relative data
    /// sources absolute against folder `base`.
    pub fn from_text(text: &str, origin: &str, base: &Path) -> Result<JobSpec> {
        let mut spec = JobSpec::from_toml(text, origin)?;
        if !spec.data.source.trim().is_empty() {
            spec.data.source = resolve_source(&spec.data.source, base)?;
        }
        if let Some(f) = spec.features.as_mut() {
            for src in &mut f.sources {
                let folder = src.path.ends_with('/');
                src.path = resolve_source(&src.path, base)?;
                if folder && !src.path.ends_with('/') {
                    src.path.push('/');
                }
            }
        }
        if let Some(f) = spec.forecast.as_mut()
            && let Some(t) = f.test_source.as_mut()
        {
            *t = resolve_source(t, base)?;
        }
        Ok(spec)
    }

    /// The top-level `name` of a spec's text, even of a spec that does not validate (the
    /// audit log names what was submitted).
    pub fn name_in(text: &str) -> Option<String> {
        let doc: toml::Table = toml::from_str(text).ok()?;
        doc.get("name")?.as_str().map(String::from)
    }

    /// Every location the job reads: its data source, its feature sources and its forecast
    /// test source (each must lie under the cluster's data roots).
    pub fn locations(&self) -> Vec<&str> {
        let mut out = Vec::new();
        if !self.data.source.trim().is_empty() {
            out.push(self.data.source.as_str());
        }
        if let Some(f) = &self.features {
            out.extend(f.sources.iter().map(|s| s.path.as_str()));
        }
        if let Some(t) = self
            .forecast
            .as_ref()
            .and_then(|f| f.test_source.as_deref())
        {
            out.push(t);
        }
        out
    }

    /// Progress units a job counts to: epochs of a response model (trees of boosted trees
    /// and of a blend, whose MLP's epochs come first),
    /// or gradient steps over all members of a forecaster (the executor reports progress in
    /// the same units).
    pub fn progress_total(&self) -> u32 {
        match &self.forecast {
            Some(f) if self.model.kind == ModelKind::Nbeats => {
                u32::try_from(f.steps.saturating_mul(f.lookbacks.len())).unwrap_or(u32::MAX)
            }
            _ if matches!(self.model.kind, ModelKind::Gbdt | ModelKind::Blend) => {
                u32::try_from(self.model.trees).unwrap_or(u32::MAX)
            }
            _ => self.train.epochs,
        }
    }

    /// The spec as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a job spec always serialises")
    }
}

impl FeaturesSpec {
    /// The SQL text of the whole pipeline (for the job's lineage).
    pub fn queries(&self) -> Vec<(&str, &str)> {
        match &self.sql {
            Some(q) => vec![("features", q.as_str())],
            None => self
                .steps
                .iter()
                .map(|s| (s.name.as_str(), s.sql.as_str()))
                .collect(),
        }
    }
}

impl SourceSpec {
    /// A source `name` read from `path`, every other setting at its default.
    pub fn new(name: impl Into<String>, path: impl Into<String>) -> SourceSpec {
        SourceSpec {
            name: name.into(),
            path: path.into(),
            format: None,
            delimiter: default_delimiter(),
            has_header: true,
            row_index: None,
            types: BTreeMap::new(),
            missing: default_missing(),
            date_format: None,
        }
    }

    /// How its CSV cells read.
    pub fn csv_rules(&self) -> crate::csv::CsvRules<'_> {
        crate::csv::CsvRules {
            section: format!("[[features.sources]] ({:?})", self.name),
            has_header: self.has_header,
            delimiter: self.delimiter_byte(),
            types: &self.types,
            missing: &self.missing,
            date_format: self.date_format.as_deref(),
        }
    }

    /// The format, from `format` or else the path's extension.
    pub fn resolved_format(&self, at: &str) -> Result<SourceFormat> {
        if let Some(f) = self.format {
            return Ok(f);
        }
        let lower = self.path.to_ascii_lowercase();
        if [".csv", ".tsv", ".txt"].iter().any(|e| lower.ends_with(e)) {
            Ok(SourceFormat::Csv)
        } else if [".parquet", ".pq"].iter().any(|e| lower.ends_with(e)) {
            Ok(SourceFormat::Parquet)
        } else if [".json", ".jsonl", ".ndjson"]
            .iter()
            .any(|e| lower.ends_with(e))
        {
            Ok(SourceFormat::Json)
        } else {
            Err(Error::invalid(
                at,
                "sources.format",
                "(absent)",
                format!(
                    "cannot tell the format of source {:?} from its path: set format = \"csv\", \"parquet\" or \"json\"",
                    self.name
                ),
            ))
        }
    }

    /// The delimiter as one byte.
    pub fn delimiter_byte(&self) -> u8 {
        self.delimiter.as_bytes().first().copied().unwrap_or(b',')
    }
}

/// Whether `name` can name a job, model, audience or schedule: 1 to 64 letters, digits,
/// `-` or `_`, starting with a letter or digit.
pub fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
}

pub(super) fn is_identifier(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Turn a data source as written in a spec into a URL: URLs stay, relative paths are taken
/// from `base`, absolute paths become `file://` URLs.
pub fn resolve_source(source: &str, base: &Path) -> Result<String> {
    if source.contains("://") {
        return Ok(source.to_string());
    }
    let path = Path::new(source);
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        let base = if base.as_os_str().is_empty() {
            Path::new(".")
        } else {
            base
        };
        let base = std::fs::canonicalize(base).map_err(|source| Error::Io {
            path: base.to_path_buf(),
            source,
        })?;
        base.join(path)
    };
    Ok(format!("file://{}", abs.display()))
}
