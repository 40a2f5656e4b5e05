//! Preprocessing: raw Arrow columns into a dense, standardised feature matrix.
//!
//! Rules, fitted on the training rows only and recorded in the manifest:
//! - numeric columns are standardised (`(x - mean) / std`; `std = 1` for a constant column);
//!   a missing, NaN or infinite value becomes the mean (0 after scaling);
//! - categorical columns (strings, or numerics listed as categorical) are one-hot encoded
//!   over their `max_categories` most frequent values plus one `other` slot for the rest,
//!   unseen values and missing values; or hashed (FNV-1a) into `hash_buckets` columns;
//! - the label is 1 for the positive class and 0 otherwise.

use std::collections::{BTreeSet, HashMap};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Schema};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// How categorical columns become numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// One column per frequent value, plus `other`.
    OneHot,
    /// FNV-1a hash of the value into buckets.
    Hashed,
}

/// What to do with the columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureConfig {
    /// The label column.
    pub label: String,
    /// The positive class of a string label; `None`: yes/true/1/y in any case.
    pub positive: Option<String>,
    /// Columns left out.
    pub exclude: Vec<String>,
    /// Numeric columns to treat as categorical.
    pub categorical: Vec<String>,
    /// Categorical encoding.
    pub encoding: Encoding,
    /// One-hot: values kept per column.
    pub max_categories: usize,
    /// Hashed: buckets per column.
    pub hash_buckets: usize,
    /// Every `holdout_every`-th row (index % n == n - 1) is a test row, and the one before
    /// it (index % n == n - 2) a validation row: unless `split_column` is set.
    pub holdout_every: usize,
    /// A column saying each row's part (`train`, `validation` or `test`), as the feature
    /// stage writes it; it is never a feature.
    #[serde(default)]
    pub split_column: Option<String>,
    /// Also encode each numeric column as the one-hot of its training quantile bucket, with
    /// up to this many buckets (0: off). The MLP learns an embedding per bucket, which lets
    /// it follow thresholds and heavy tails that standardising hides.
    pub numeric_buckets: usize,
    /// Crossed categoricals: each list of columns becomes one more categorical column whose
    /// value joins theirs (`may|5`), so a model can learn their combinations.
    pub crosses: Vec<Vec<String>>,
}

/// How one input column is encoded; part of the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ColumnEncoding {
    /// Standardised number.
    Numeric {
        /// Training mean.
        mean: f64,
        /// Training standard deviation (1 for a constant column).
        std: f64,
    },
    /// One-hot over a vocabulary; the last slot is `other`.
    OneHot {
        /// Values in slot order.
        vocabulary: Vec<String>,
    },
    /// Hashed into buckets.
    Hashed {
        /// Bucket count.
        buckets: usize,
    },
    /// One-hot of the quantile bucket of a number: slot `k` holds values in
    /// `[edges[k-1], edges[k])`; the last slot holds missing and non-finite values.
    Buckets {
        /// Bucket edges, ascending.
        edges: Vec<f64>,
    },
    /// One-hot of a part of a date (the column's days since 1970-01-01 are its
    /// [`ColumnEncoding::Numeric`] feature); a missing date sets no slot.
    DatePart {
        /// Which part.
        part: DatePart,
    },
}

/// A calendar part of a date, one-hot encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatePart {
    /// Monday (slot 0) to Sunday (slot 6).
    Weekday,
    /// January (slot 0) to December (slot 11).
    Month,
}

impl DatePart {
    /// Slots it takes.
    pub fn width(self) -> usize {
        match self {
            DatePart::Weekday => 7,
            DatePart::Month => 12,
        }
    }

    /// The slot of the date `days` after 1970-01-01 (a Thursday); `None` when missing.
    pub fn slot(self, days: f64) -> Option<usize> {
        use chrono::Datelike;
        if !days.is_finite() {
            return None;
        }
        let day = days.floor() as i64;
        match self {
            DatePart::Weekday => Some((day + 3).rem_euclid(7) as usize),
            DatePart::Month => {
                let date = chrono::DateTime::from_timestamp(day.checked_mul(86_400)?, 0)?;
                Some(date.month0() as usize)
            }
        }
    }
}

/// Whether a column of this type is a date or a time: read as days since 1970-01-01.
pub fn is_temporal(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(..)
    )
}

/// Whether a column trained as `source_type` (an Arrow type's name) was a date or a time.
pub fn is_temporal_name(source_type: &str) -> bool {
    source_type.starts_with("Date") || source_type.starts_with("Timestamp")
}

/// Days since 1970-01-01 of an ISO date (`2024-05-01`) or date and time
/// (`2024-05-01T10:30:00`, with a space, fractions or an offset), as a request sends it.
pub fn parse_days(s: &str) -> Option<f64> {
    let s = s.trim();
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Some(d.and_hms_opt(0, 0, 0)?.and_utc().timestamp() as f64 / 86_400.0);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis() as f64 / 86_400_000.0);
    }
    [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|f| chrono::NaiveDateTime::parse_from_str(s, f).ok())
    .map(|t| t.and_utc().timestamp_millis() as f64 / 86_400_000.0)
}

/// Up to `n` buckets' inner edges at the quantiles of `values` (sorted, finite), ties merged.
pub(crate) fn quantile_edges(values: &mut [f64], n: usize) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    let mut edges: Vec<f64> = Vec::new();
    if values.is_empty() {
        return edges;
    }
    for k in 1..n {
        let v = values[(k * values.len() / n).min(values.len() - 1)];
        if edges.last().is_none_or(|e| v > *e) && v > values[0] {
            edges.push(v);
        }
    }
    edges
}

/// The bucket of `v` among `edges` (the last slot for a non-finite value).
pub fn bucket_of(v: f64, edges: &[f64]) -> usize {
    if !v.is_finite() {
        return edges.len() + 1;
    }
    edges.partition_point(|e| *e <= v)
}

/// One input column of the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureColumn {
    /// Column name in the raw data (for a cross, the joined names).
    pub name: String,
    /// A cross: the raw columns whose string values, joined with `|`, are this column's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    /// Arrow type it had in the training data.
    pub source_type: String,
    /// First slot in the feature vector.
    pub offset: usize,
    /// Slots it takes.
    pub width: usize,
    /// Encoding.
    pub encoding: ColumnEncoding,
}

/// A fitted preprocessor: everything needed to turn raw records into model input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocessor {
    /// The label column.
    pub label: String,
    /// The positive class of a string label.
    pub positive: Option<String>,
    /// Input columns in order.
    pub columns: Vec<FeatureColumn>,
    /// Length of the feature vector.
    pub dim: usize,
    /// A missing, NaN or infinite numeric value stays NaN instead of becoming the mean
    /// (boosted trees send it to the better side of each split); false for every other
    /// model, and in artifacts written before the field.
    #[serde(default)]
    pub keep_missing: bool,
    /// The label is a number (boosted trees fitting an L2, L1 or Poisson objective), not a
    /// class: read as it is; false in artifacts written before the field.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub numeric_label: bool,
}

/// A dense matrix of rows and their labels.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Encoded {
    /// Row-major features, `rows * dim`.
    pub x: Vec<f32>,
    /// Labels, 0 or 1.
    pub y: Vec<f32>,
    /// Row count.
    pub rows: usize,
    /// Features per row.
    pub dim: usize,
}

impl Encoded {
    /// Split the rows in two, keeping their order: those where `second(i)` is false, then
    /// those where it is true.
    pub fn partition(&self, second: impl Fn(usize) -> bool) -> (Encoded, Encoded) {
        let mut parts = (Encoded::default(), Encoded::default());
        for part in [&mut parts.0, &mut parts.1] {
            part.dim = self.dim;
        }
        for i in 0..self.rows {
            let part = if second(i) {
                &mut parts.1
            } else {
                &mut parts.0
            };
            part.x.extend_from_slice(self.row(i));
            if let Some(y) = self.y.get(i) {
                part.y.push(*y);
            }
            part.rows += 1;
        }
        parts
    }

    /// No rows of `dim` features.
    pub fn empty(dim: usize) -> Encoded {
        Encoded {
            dim,
            ..Encoded::default()
        }
    }

    /// The labels of `rows`.
    pub fn labels(&self, rows: &[usize]) -> Vec<f32> {
        rows.iter().map(|&i| self.y[i]).collect()
    }

    /// Row `i`'s features.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.x[i * self.dim..(i + 1) * self.dim]
    }
}

/// The part of the data a row is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Fit on.
    Train,
    /// Fit on, except by models that stop early, which watch their loss on it.
    Validation,
    /// Held out for the test metrics.
    Test,
}

/// Every row's part: from the split column when the config names one, else by row index.
pub fn row_roles(batches: &[RecordBatch], cfg: &FeatureConfig) -> Result<Vec<Role>> {
    if let Some(col) = &cfg.split_column {
        return Ok(string_values(&concat_column(batches, col)?)?
            .into_iter()
            .map(|v| match v.as_deref() {
                Some("test") => Role::Test,
                Some("validation") => Role::Validation,
                _ => Role::Train,
            })
            .collect());
    }
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let every = cfg.holdout_every;
    Ok((0..rows)
        .map(|i| match i % every {
            r if r == every - 1 => Role::Test,
            r if r + 2 == every => Role::Validation,
            _ => Role::Train,
        })
        .collect())
}

fn is_numeric(dt: &DataType) -> bool {
    dt.is_numeric() || matches!(dt, DataType::Boolean)
}

fn column_names(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A column's arrays across batches, or an error listing the columns the data has.
pub(crate) fn concat_column(batches: &[RecordBatch], name: &str) -> Result<Vec<ArrayRef>> {
    batches
        .iter()
        .map(|b| {
            b.column_by_name(name)
                .cloned()
                .ok_or_else(|| ModelError::MissingColumn {
                    column: name.to_string(),
                    available: column_names(b.schema().as_ref()),
                })
        })
        .collect()
}

/// Column values as f64 (NaN for missing).
pub(crate) fn numeric_values(arrays: &[ArrayRef]) -> Result<Vec<f64>> {
    let internal = |e: arrow::error::ArrowError| ModelError::Internal(e.to_string());
    let mut out = Vec::new();
    for a in arrays {
        // Dates and times: days since 1970-01-01 (through milliseconds).
        let per_unit = if is_temporal(a.data_type()) {
            86_400_000.0
        } else {
            1.0
        };
        let a = if a.data_type() == &DataType::Boolean {
            cast(a, &DataType::UInt8).map_err(internal)?
        } else if is_temporal(a.data_type()) {
            let ms = cast(
                a,
                &DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None),
            )
            .map_err(internal)?;
            cast(&ms, &DataType::Int64).map_err(internal)?
        } else {
            a.clone()
        };
        let f = cast(&a, &DataType::Float64).map_err(internal)?;
        let f = f.as_primitive::<Float64Type>();
        out.extend((0..f.len()).map(|i| {
            if f.is_null(i) {
                f64::NAN
            } else {
                f.value(i) / per_unit
            }
        }));
    }
    Ok(out)
}

/// A 0/1 column (a treatment flag) as 0.0 and 1.0; any other value, or a missing one,
/// is an error naming the row (1-based).
pub fn binary_column(batches: &[RecordBatch], name: &str) -> Result<Vec<f32>> {
    let arrays = concat_column(batches, name)?;
    let bad = |what: String| {
        ModelError::Unsupported(format!(
            "treatment column {name:?}: {what}; it must hold 0 (control) or 1 (treated) in every row"
        ))
    };
    if !is_numeric(arrays[0].data_type()) {
        return Err(bad(format!("it is {}", arrays[0].data_type())));
    }
    zero_one(numeric_values(&arrays)?, |i, v| {
        bad(match v {
            None => format!("data row {} is missing", i + 1),
            Some(v) => format!("data row {} holds {v}", i + 1),
        })
    })
}

/// Values that must be 0 or 1, as 0.0 and 1.0; `bad(row, value)` (0-based row, `None`
/// for a missing value) makes the error for any other.
fn zero_one(values: Vec<f64>, bad: impl Fn(usize, Option<f64>) -> ModelError) -> Result<Vec<f32>> {
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| match v {
            0.0 => Ok(0.0),
            1.0 => Ok(1.0),
            v if v.is_nan() => Err(bad(i, None)),
            v => Err(bad(i, Some(v))),
        })
        .collect()
}

/// Column values as strings (`None` for missing).
pub(crate) fn string_values(arrays: &[ArrayRef]) -> Result<Vec<Option<String>>> {
    let mut out = Vec::new();
    for a in arrays {
        let s = cast(a, &DataType::Utf8).map_err(|e| ModelError::Internal(e.to_string()))?;
        let s = s.as_string::<i32>();
        out.extend((0..s.len()).map(|i| (!s.is_null(i)).then(|| s.value(i).to_string())));
    }
    Ok(out)
}

/// The values of a categorical column: its own, or for a cross its sources' joined.
fn column_strings(batches: &[RecordBatch], col: &FeatureColumn) -> Result<Vec<Option<String>>> {
    if col.sources.is_empty() {
        string_values(&concat_column(batches, &col.name)?)
    } else {
        cross_values(batches, &col.sources)
    }
}

/// The joined values of crossed columns (`None` when any is missing).
fn cross_values(batches: &[RecordBatch], sources: &[String]) -> Result<Vec<Option<String>>> {
    let parts: Vec<Vec<Option<String>>> = sources
        .iter()
        .map(|c| string_values(&concat_column(batches, c)?))
        .collect::<Result<_>>()?;
    let rows = parts.first().map_or(0, Vec::len);
    Ok((0..rows)
        .map(|i| {
            parts
                .iter()
                .map(|p| p[i].clone())
                .collect::<Option<Vec<String>>>()
                .map(|v| v.join("|"))
        })
        .collect())
}

/// A one-hot vocabulary: the `max_categories` most frequent values among the training rows.
fn one_hot(values: &[Option<String>], roles: &[Role], cfg: &FeatureConfig) -> ColumnEncoding {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for (i, v) in values.iter().enumerate() {
        if let Some(v) = v
            && roles[i] != Role::Test
        {
            *counts.entry(v.as_str()).or_default() += 1;
        }
    }
    let mut by_count: Vec<(&str, usize)> = counts.into_iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    by_count.truncate(cfg.max_categories);
    ColumnEncoding::OneHot {
        vocabulary: by_count.into_iter().map(|(v, _)| v.to_string()).collect(),
    }
}

/// FNV-1a, 64 bit: stable across processes and versions (unlike std's hasher).
pub fn fnv1a(s: &str) -> u64 {
    fnv1a_bytes(s.bytes())
}

/// FNV-1a, 64 bit, of a byte sequence.
pub fn fnv1a_bytes(bytes: impl IntoIterator<Item = u8>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl Preprocessor {
    /// Fit on the training rows of `batches`.
    pub fn fit(batches: &[RecordBatch], cfg: &FeatureConfig) -> Result<Preprocessor> {
        let schema = batches
            .first()
            .map(|b| b.schema())
            .ok_or(ModelError::NoRows {
                purpose: "train on",
                rows: 0,
            })?;
        // (A model with no label, k-means, names none.)
        if !cfg.label.is_empty() && schema.field_with_name(&cfg.label).is_err() {
            return Err(ModelError::MissingColumn {
                column: cfg.label.clone(),
                available: column_names(&schema),
            });
        }
        for name in cfg.exclude.iter().chain(&cfg.categorical) {
            if schema.field_with_name(name).is_err() {
                return Err(ModelError::MissingColumn {
                    column: name.clone(),
                    available: column_names(&schema),
                });
            }
        }
        let roles = row_roles(batches, cfg)?;
        let excluded: BTreeSet<&str> = cfg
            .exclude
            .iter()
            .chain(&cfg.split_column)
            .map(String::as_str)
            .collect();
        let forced: BTreeSet<&str> = cfg.categorical.iter().map(String::as_str).collect();
        let mut columns = Vec::new();
        // Bucket columns, placed after the plain columns.
        let mut extra: Vec<FeatureColumn> = Vec::new();
        let mut offset = 0;
        for field in schema.fields() {
            let name = field.name();
            if name == &cfg.label || excluded.contains(name.as_str()) {
                continue;
            }
            let dt = field.data_type();
            let arrays = concat_column(batches, name)?;
            let temporal = is_temporal(dt);
            if temporal && !forced.contains(name.as_str()) {
                // A date: its days are the numeric feature below, its weekday and month
                // are one-hot parts.
                for part in [DatePart::Weekday, DatePart::Month] {
                    extra.push(FeatureColumn {
                        name: name.clone(),
                        sources: Vec::new(),
                        source_type: dt.to_string(),
                        offset: 0,
                        width: part.width(),
                        encoding: ColumnEncoding::DatePart { part },
                    });
                }
            }
            let encoding = if (is_numeric(dt) || temporal) && !forced.contains(name.as_str()) {
                let values = numeric_values(&arrays)?;
                let train: Vec<f64> = values
                    .iter()
                    .enumerate()
                    .filter(|(i, v)| roles[*i] != Role::Test && v.is_finite())
                    .map(|(_, v)| *v)
                    .collect();
                let n = train.len().max(1) as f64;
                let mean = train.iter().sum::<f64>() / n;
                let var = train.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
                let std = if var.sqrt() > 1e-12 { var.sqrt() } else { 1.0 };
                if cfg.numeric_buckets > 1 {
                    let mut train = train;
                    let edges = quantile_edges(&mut train, cfg.numeric_buckets);
                    let width = edges.len() + 2;
                    extra.push(FeatureColumn {
                        name: name.clone(),
                        sources: Vec::new(),
                        source_type: dt.to_string(),
                        offset: 0,
                        width,
                        encoding: ColumnEncoding::Buckets { edges },
                    });
                }
                ColumnEncoding::Numeric { mean, std }
            } else if matches!(
                dt,
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            ) || is_numeric(dt)
                || temporal
            {
                match cfg.encoding {
                    Encoding::Hashed => ColumnEncoding::Hashed {
                        buckets: cfg.hash_buckets,
                    },
                    Encoding::OneHot => one_hot(&string_values(&arrays)?, &roles, cfg),
                }
            } else {
                return Err(ModelError::UnsupportedType {
                    column: name.clone(),
                    data_type: dt.to_string(),
                });
            };
            let width = match &encoding {
                ColumnEncoding::Numeric { .. } => 1,
                ColumnEncoding::OneHot { vocabulary } => vocabulary.len() + 1,
                ColumnEncoding::Hashed { buckets } => *buckets,
                ColumnEncoding::Buckets { edges } => edges.len() + 2,
                ColumnEncoding::DatePart { part } => part.width(),
            };
            columns.push(FeatureColumn {
                name: name.clone(),
                sources: Vec::new(),
                source_type: dt.to_string(),
                offset,
                width,
                encoding,
            });
            offset += width;
        }
        for sources in &cfg.crosses {
            if sources.len() < 2 {
                return Err(ModelError::Unsupported(format!(
                    "a cross needs at least two columns, got {sources:?}"
                )));
            }
            let values = cross_values(batches, sources)?;
            let encoding = match cfg.encoding {
                Encoding::Hashed => ColumnEncoding::Hashed {
                    buckets: cfg.hash_buckets,
                },
                Encoding::OneHot => one_hot(&values, &roles, cfg),
            };
            let width = match &encoding {
                ColumnEncoding::OneHot { vocabulary } => vocabulary.len() + 1,
                ColumnEncoding::Hashed { buckets } => *buckets,
                _ => unreachable!("a cross is categorical"),
            };
            extra.push(FeatureColumn {
                name: sources.join("|"),
                sources: sources.clone(),
                source_type: "cross".into(),
                offset: 0,
                width,
                encoding,
            });
        }
        for mut c in extra {
            c.offset = offset;
            offset += c.width;
            columns.push(c);
        }
        Ok(Preprocessor {
            label: cfg.label.clone(),
            positive: cfg.positive.clone(),
            columns,
            dim: offset,
            keep_missing: false,
            numeric_label: false,
        })
    }

    /// A numeric value as model input: standardised; missing, NaN or infinite the mean (0),
    /// or NaN with [`Preprocessor::keep_missing`].
    pub fn standardised(&self, v: f64, mean: f64, std: f64) -> f32 {
        if v.is_finite() {
            ((v - mean) / std) as f32
        } else if self.keep_missing {
            f32::NAN
        } else {
            0.0
        }
    }

    /// What of `schema` does not fit the model's input: each column it needs that is
    /// missing, and each numeric one (standardised or bucketed) that is not a number.
    /// Empty: every row of such a table can be encoded.
    pub fn schema_problems(&self, schema: &Schema) -> Vec<String> {
        let mut out = Vec::new();
        for col in &self.columns {
            let raw: Vec<&str> = if col.sources.is_empty() {
                vec![col.name.as_str()]
            } else {
                col.sources.iter().map(String::as_str).collect()
            };
            for name in raw {
                match schema.field_with_name(name) {
                    Err(_) => out.push(format!(
                        "missing column {name:?} (trained as {})",
                        col.source_type
                    )),
                    Ok(f) if is_temporal_name(&col.source_type) => {
                        if !is_temporal(f.data_type()) {
                            out.push(format!(
                                "column {name:?} is {}, the model was trained on dates ({}): state its type ([data] types = {{ {name} = \"date\" }})",
                                f.data_type(),
                                col.source_type
                            ));
                        }
                    }
                    Ok(f) => {
                        let numeric = matches!(
                            col.encoding,
                            ColumnEncoding::Numeric { .. } | ColumnEncoding::Buckets { .. }
                        );
                        if numeric && !is_numeric(f.data_type()) {
                            out.push(format!(
                                "column {name:?} is {}, the model was trained on a number ({})",
                                f.data_type(),
                                col.source_type
                            ));
                        }
                    }
                }
            }
        }
        out
    }

    /// Encode the rows of `batches` selected by `keep(row_index)`. Labels are read when
    /// the label column is present (scoring input may lack it: labels are then empty).
    pub fn transform(
        &self,
        batches: &[RecordBatch],
        keep: impl Fn(usize) -> bool,
    ) -> Result<Encoded> {
        let total: usize = batches.iter().map(|b| b.num_rows()).sum();
        let selected: Vec<usize> = (0..total).filter(|&i| keep(i)).collect();
        let rows = selected.len();
        let mut x = vec![0f32; rows * self.dim];
        for col in &self.columns {
            match &col.encoding {
                ColumnEncoding::Numeric { mean, std } => {
                    let values = numeric_values(&concat_column(batches, &col.name)?)?;
                    for (r, &i) in selected.iter().enumerate() {
                        x[r * self.dim + col.offset] = self.standardised(values[i], *mean, *std);
                    }
                }
                ColumnEncoding::OneHot { vocabulary } => {
                    let index: HashMap<&str, usize> = vocabulary
                        .iter()
                        .enumerate()
                        .map(|(k, v)| (v.as_str(), k))
                        .collect();
                    let values = column_strings(batches, col)?;
                    for (r, &i) in selected.iter().enumerate() {
                        let slot = values[i]
                            .as_deref()
                            .and_then(|v| index.get(v).copied())
                            .unwrap_or(vocabulary.len());
                        x[r * self.dim + col.offset + slot] = 1.0;
                    }
                }
                ColumnEncoding::Buckets { edges } => {
                    let values = numeric_values(&concat_column(batches, &col.name)?)?;
                    for (r, &i) in selected.iter().enumerate() {
                        x[r * self.dim + col.offset + bucket_of(values[i], edges)] = 1.0;
                    }
                }
                ColumnEncoding::DatePart { part } => {
                    let days = numeric_values(&concat_column(batches, &col.name)?)?;
                    for (r, &i) in selected.iter().enumerate() {
                        if let Some(slot) = part.slot(days[i]) {
                            x[r * self.dim + col.offset + slot] = 1.0;
                        }
                    }
                }
                ColumnEncoding::Hashed { buckets } => {
                    let values = column_strings(batches, col)?;
                    for (r, &i) in selected.iter().enumerate() {
                        let v = values[i].as_deref().unwrap_or("");
                        let slot = (fnv1a(v) % *buckets as u64) as usize;
                        x[r * self.dim + col.offset + slot] = 1.0;
                    }
                }
            }
        }
        let has_label = batches
            .first()
            .is_some_and(|b| b.column_by_name(&self.label).is_some());
        let y = if has_label {
            let labels = self.labels(batches)?;
            selected.iter().map(|&i| labels[i]).collect()
        } else {
            Vec::new()
        };
        Ok(Encoded {
            x,
            y,
            rows,
            dim: self.dim,
        })
    }

    /// Every row's label as 0 or 1, or with [`Preprocessor::numeric_label`] as its number.
    fn labels(&self, batches: &[RecordBatch]) -> Result<Vec<f32>> {
        let arrays = concat_column(batches, &self.label)?;
        let dt = arrays[0].data_type().clone();
        if self.numeric_label {
            let bad = |i: usize, value: Option<String>| ModelError::BadNumericLabel {
                label: self.label.clone(),
                row: i + 1,
                value: value.unwrap_or_else(|| "(missing)".into()),
            };
            let finite = |v: f32| v.is_finite().then_some(v);
            return if is_numeric(&dt) {
                numeric_values(&arrays)?
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| {
                        finite(v as f32).ok_or_else(|| bad(i, (!v.is_nan()).then(|| v.to_string())))
                    })
                    .collect()
            } else {
                string_values(&arrays)?
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| {
                        v.as_deref()
                            .and_then(|t| t.trim().parse::<f32>().ok())
                            .and_then(finite)
                            .ok_or_else(|| bad(i, v))
                    })
                    .collect()
            };
        }
        let bad = |row: usize, value: String| ModelError::BadLabel {
            label: self.label.clone(),
            row: row + 1,
            value,
        };
        if is_numeric(&dt) && self.positive.is_none() {
            zero_one(numeric_values(&arrays)?, |i, v| {
                bad(i, v.map_or("(missing)".into(), |v| v.to_string()))
            })
        } else {
            string_values(&arrays)?
                .into_iter()
                .enumerate()
                .map(|(i, v)| {
                    let v = v.ok_or_else(|| bad(i, "(missing)".into()))?;
                    let t = v.trim();
                    let positive = match &self.positive {
                        Some(p) => t.eq_ignore_ascii_case(p),
                        None => ["yes", "true", "1", "y"]
                            .iter()
                            .any(|p| t.eq_ignore_ascii_case(p)),
                    };
                    Ok(if positive { 1.0 } else { 0.0 })
                })
                .collect()
        }
    }
}
