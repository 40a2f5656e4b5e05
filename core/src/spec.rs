//! The job spec: one TOML file that says what to train, on what, and with which resources.
//!
//! Parsing refuses unknown keys; [`JobSpec::validate`] checks every value against its rule
//! and names the field, the value and the rule. Every field is documented in
//! `docs/job-spec.md`; keep the two in step.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A whole job spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Job and model name: the artifact lands under `models/<name>/<version>/`.
    pub name: String,
    /// Free text shown in listings.
    #[serde(default)]
    pub description: String,
    /// Where the training data is and how to read it.
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
}

/// The `[data]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// A path (relative to the spec file), a `file://` URL or an `s3://bucket/key` URL.
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
    /// The column to predict.
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
    /// L2 penalty on the weights.
    #[serde(default = "default_l2")]
    pub l2: f64,
}

/// Model families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Logistic regression for response prediction.
    #[default]
    LogisticRegression,
}

impl ModelKind {
    /// The name as written in a spec.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::LogisticRegression => "logistic_regression",
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
fn default_true() -> bool {
    true
}
fn default_max_categories() -> usize {
    64
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
    /// The format, from `format` or else the source's extension.
    pub fn resolved_format(&self) -> Result<DataFormat> {
        self.format_at("[data]")
    }

    fn format_at(&self, location: &str) -> Result<DataFormat> {
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
        let spec: JobSpec = toml::from_str(text).map_err(|e| Error::Toml {
            source_name: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        spec.validate(origin)?;
        Ok(spec)
    }

    /// Read, parse and validate a spec file, and make a relative data source absolute
    /// against the file's folder.
    pub fn from_file(path: &Path) -> Result<JobSpec> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut spec = JobSpec::from_toml(&text, &path.display().to_string())?;
        let base = path.parent().unwrap_or(Path::new("."));
        spec.data.source = resolve_source(&spec.data.source, base)?;
        Ok(spec)
    }

    /// The spec as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a job spec always serialises")
    }

    /// Check every value against its rule.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let at = |section: &str| {
            if section.is_empty() {
                origin.to_string()
            } else {
                format!("{origin} {section}")
            }
        };
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && self
                .name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric());
        if !name_ok {
            return Err(Error::invalid(
                at(""),
                "name",
                format!("{:?}", self.name),
                "must be 1 to 64 letters, digits, '-' or '_', starting with a letter or digit",
            ));
        }
        let d = &self.data;
        if d.source.trim().is_empty() {
            return Err(Error::invalid(
                at("[data]"),
                "source",
                "\"\"",
                "must name a file or URL",
            ));
        }
        d.format_at(&at("[data]"))?;
        if d.delimiter.len() != 1 {
            return Err(Error::invalid(
                at("[data]"),
                "delimiter",
                format!("{:?}", d.delimiter),
                "must be exactly one ASCII character",
            ));
        }
        if d.label.trim().is_empty() {
            return Err(Error::invalid(
                at("[data]"),
                "label",
                "\"\"",
                "must name the column to predict",
            ));
        }
        if d.exclude.contains(&d.label) {
            return Err(Error::invalid(
                at("[data]"),
                "exclude",
                format!("{:?}", d.exclude),
                format!("must not contain the label column {:?}", d.label),
            ));
        }
        let m = &self.model;
        if m.max_categories < 1 {
            return Err(Error::invalid(
                at("[model]"),
                "max_categories",
                m.max_categories,
                "must be at least 1",
            ));
        }
        if !(2..=1 << 20).contains(&m.hash_buckets) {
            return Err(Error::invalid(
                at("[model]"),
                "hash_buckets",
                m.hash_buckets,
                "must be between 2 and 1048576",
            ));
        }
        if !(m.l2.is_finite() && m.l2 >= 0.0) {
            return Err(Error::invalid(
                at("[model]"),
                "l2",
                m.l2,
                "must be a finite number >= 0",
            ));
        }
        let t = &self.train;
        if t.epochs < 1 {
            return Err(Error::invalid(
                at("[train]"),
                "epochs",
                t.epochs,
                "must be at least 1",
            ));
        }
        if t.epochs > 100_000 {
            return Err(Error::invalid(
                at("[train]"),
                "epochs",
                t.epochs,
                "must be at most 100000",
            ));
        }
        if t.batch_size < 1 {
            return Err(Error::invalid(
                at("[train]"),
                "batch_size",
                t.batch_size,
                "must be at least 1",
            ));
        }
        if !(t.learning_rate.is_finite() && t.learning_rate > 0.0) {
            return Err(Error::invalid(
                at("[train]"),
                "learning_rate",
                t.learning_rate,
                "must be > 0",
            ));
        }
        if t.holdout_every < 2 {
            return Err(Error::invalid(
                at("[train]"),
                "holdout_every",
                t.holdout_every,
                "must be at least 2 (every n-th row is held out for testing)",
            ));
        }
        if t.device == DeviceKind::Gpu && self.resources.gpus == 0 {
            return Err(Error::invalid(
                at("[resources]"),
                "gpus",
                0,
                "must be at least 1 when [train] device = \"gpu\"",
            ));
        }
        let r = &self.resources;
        if r.cpus < 1 {
            return Err(Error::invalid(
                at("[resources]"),
                "cpus",
                r.cpus,
                "must be at least 1",
            ));
        }
        if r.memory_mb < 1 {
            return Err(Error::invalid(
                at("[resources]"),
                "memory_mb",
                r.memory_mb,
                "must be at least 1",
            ));
        }
        Ok(())
    }
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
