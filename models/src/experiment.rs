//! Analysis of a campaign that already ran: a table with one row per customer, the
//! variant each got, the metrics observed and, optionally, a pre-experiment covariate and
//! a segment column. Every variant is compared with the control on every metric
//! ([`crate::stats`]): the SRM check first, then per metric a fixed-horizon test (two
//! proportions for a 0/1 metric, Welch for any other), the always-valid sequential
//! interval, CUPED when a covariate is named, and the smallest effect the test could
//! detect; then the same per segment.

use std::collections::BTreeMap;

use arrow::array::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::preprocess::{concat_column, numeric_values, string_values};
use crate::stats::{
    Comparison, Cuped, Moments, Sequential, Srm, cuped, detectable, proportions, ratio, ratio_of,
    sequential, srm, too_few, welch,
};

/// What to analyse.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalysisSpec {
    /// The column naming each row's variant.
    pub variant: String,
    /// The control's value in it.
    pub control: String,
    /// Metric columns (numeric or boolean); the first is the primary.
    pub metrics: Vec<String>,
    /// Ratio metrics, after the others: a name, the numerator's column and the
    /// denominator's (revenue per visit: `("revenue_per_visit", "revenue", "visits")`).
    pub ratios: Vec<(String, String, String)>,
    /// A pre-experiment covariate column for CUPED.
    pub covariate: Option<String>,
    /// A column to break the results down by.
    pub segment: Option<String>,
    /// The configured split, one weight per variant in the order of `variants` sorted by
    /// name; `None`: equal.
    pub split: Option<Vec<f64>>,
    /// Confidence of the intervals (0.95).
    pub confidence: f64,
    /// Power for the detectable effect (0.8).
    pub power: f64,
}

/// One variant against the control on one metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantResult {
    /// The variant.
    pub variant: String,
    /// Its observations.
    pub n: u64,
    /// Its mean (rate for a 0/1 metric).
    pub mean: f64,
    /// Fixed-horizon comparison with the control.
    pub fixed: Option<Comparison>,
    /// Always-valid interval and p-value.
    pub sequential: Option<Sequential>,
    /// CUPED, when a covariate is named.
    pub cuped: Option<Cuped>,
    /// The smallest difference the fixed-horizon test detects with the spec's power.
    pub detectable: Option<f64>,
    /// Why there is no comparison (too few observations, how many more).
    pub note: Option<String>,
}

/// One metric's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricResult {
    /// The column.
    pub metric: String,
    /// `binary` (every value 0 or 1), `continuous`, or `ratio` (`Σ numerator / Σ
    /// denominator`, compared by the delta method).
    pub kind: String,
    /// The control's observations and mean.
    pub control_n: u64,
    /// The control's mean.
    pub control_mean: f64,
    /// Each variant other than the control.
    pub variants: Vec<VariantResult>,
}

/// The analysis of one set of rows (all, or one segment).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    /// Rows.
    pub rows: u64,
    /// Observations per variant, sorted by name.
    pub counts: Vec<(String, u64)>,
    /// The sample-ratio-mismatch check.
    pub srm: Option<Srm>,
    /// Per metric, the primary first.
    pub metrics: Vec<MetricResult>,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The control variant.
    pub control: String,
    /// Confidence of the intervals.
    pub confidence: f64,
    /// The covariate, when given.
    pub covariate: Option<String>,
    /// Over all rows.
    pub overall: Analysis,
    /// The segment column and each of its values' analysis.
    pub segments: Vec<(String, Analysis)>,
}

fn bad(message: String) -> ModelError {
    ModelError::Unsupported(message)
}

/// A metric or covariate column as numbers; a non-numeric type or a missing value is an
/// error naming the column (and the first missing row, 1-based).
fn numbers(batches: &[RecordBatch], name: &str, role: &str) -> Result<Vec<f64>> {
    let arrays = concat_column(batches, name)?;
    let dt = arrays[0].data_type();
    if !(dt.is_numeric() || *dt == arrow::datatypes::DataType::Boolean) {
        return Err(bad(format!(
            "{role} column {name:?} holds {dt}, not numbers: a {role} must be numeric or boolean"
        )));
    }
    let values = numeric_values(&arrays)?;
    if let Some(row) = values.iter().position(|v| !v.is_finite()) {
        let missing = values.iter().filter(|v| !v.is_finite()).count();
        return Err(bad(format!(
            "{role} column {name:?} has {missing} missing or non-finite value(s), the first at data row {}: fill them (0 where nothing happened) or filter those rows out",
            row + 1
        )));
    }
    Ok(values)
}

fn labels(batches: &[RecordBatch], name: &str) -> Result<Vec<String>> {
    Ok(string_values(&concat_column(batches, name)?)?
        .into_iter()
        .map(|v| v.unwrap_or_default())
        .collect())
}

/// Analyse `batches` as `spec` says.
pub fn analyze(batches: &[RecordBatch], spec: &AnalysisSpec) -> Result<Report> {
    if spec.metrics.is_empty() {
        return Err(bad("name at least one metric column".into()));
    }
    let variants = labels(batches, &spec.variant)?;
    let metrics: Vec<(String, Vec<f64>)> = spec
        .metrics
        .iter()
        .map(|m| Ok((m.clone(), numbers(batches, m, "metric")?)))
        .collect::<Result<_>>()?;
    let covariate = spec
        .covariate
        .as_deref()
        .map(|c| numbers(batches, c, "covariate"))
        .transpose()?;
    let ratios: Vec<(String, Vec<f64>, Vec<f64>)> = spec
        .ratios
        .iter()
        .map(|(name, num, den)| {
            Ok((
                name.clone(),
                numbers(batches, num, "ratio numerator")?,
                numbers(batches, den, "ratio denominator")?,
            ))
        })
        .collect::<Result<_>>()?;
    let mut names: Vec<String> = variants.clone();
    names.sort();
    names.dedup();
    if !names.contains(&spec.control) {
        return Err(bad(format!(
            "no row has control {:?} in column {:?}; its values are: {}",
            spec.control,
            spec.variant,
            names.join(", ")
        )));
    }
    if names.len() < 2 {
        return Err(bad(format!(
            "column {:?} holds only {:?}: an experiment needs a control and at least one variant",
            spec.variant, spec.control
        )));
    }
    if let Some(split) = &spec.split
        && split.len() != names.len()
    {
        return Err(bad(format!(
            "the split has {} weight(s) but column {:?} holds {} variants ({}): give one weight per variant, in that order",
            split.len(),
            spec.variant,
            names.len(),
            names.join(", ")
        )));
    }
    let binary: Vec<bool> = metrics
        .iter()
        .map(|(_, v)| v.iter().all(|x| *x == 0.0 || *x == 1.0))
        .collect();
    let all: Vec<usize> = (0..variants.len()).collect();
    let data = Data {
        variants: &variants,
        names: &names,
        metrics: &metrics,
        binary: &binary,
        covariate: covariate.as_deref(),
        ratios: &ratios,
    };
    let overall = data.analysis(&all, spec);
    let mut segments = Vec::new();
    if let Some(column) = &spec.segment {
        let values = labels(batches, column)?;
        let mut rows: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, v) in values.iter().enumerate() {
            rows.entry(v.as_str()).or_default().push(i);
        }
        for (value, rows) in rows {
            segments.push((value.to_string(), data.analysis(&rows, spec)));
        }
    }
    Ok(Report {
        control: spec.control.clone(),
        confidence: spec.confidence,
        covariate: spec.covariate.clone(),
        overall,
        segments,
    })
}

/// The columns, read.
struct Data<'a> {
    variants: &'a [String],
    names: &'a [String],
    metrics: &'a [(String, Vec<f64>)],
    binary: &'a [bool],
    covariate: Option<&'a [f64]>,
    ratios: &'a [(String, Vec<f64>, Vec<f64>)],
}

impl Data<'_> {
    fn analysis(&self, rows: &[usize], spec: &AnalysisSpec) -> Analysis {
        let index: BTreeMap<&str, usize> = self
            .names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        let group: Vec<usize> = rows
            .iter()
            .map(|&r| index[self.variants[r].as_str()])
            .collect();
        let mut counts = vec![0u64; self.names.len()];
        for g in &group {
            counts[*g] += 1;
        }
        let weights = spec
            .split
            .clone()
            .unwrap_or_else(|| vec![1.0; self.names.len()]);
        let control = index[spec.control.as_str()];
        let metrics = self
            .metrics
            .iter()
            .zip(self.binary)
            .map(|((name, values), &binary)| {
                let mut m = vec![Moments::default(); self.names.len()];
                for (&r, &g) in rows.iter().zip(&group) {
                    m[g].add(values[r], self.covariate.map_or(0.0, |c| c[r]));
                }
                let c = &m[control];
                MetricResult {
                    metric: name.clone(),
                    kind: if binary { "binary" } else { "continuous" }.into(),
                    control_n: c.n,
                    control_mean: c.mean_y,
                    variants: (0..self.names.len())
                        .filter(|&g| g != control)
                        .map(|g| {
                            compare(
                                &self.names[g],
                                c,
                                &m[g],
                                binary,
                                self.covariate.is_some(),
                                spec,
                            )
                        })
                        .collect(),
                }
            })
            .chain(self.ratios.iter().map(|(name, num, den)| {
                let mut m = vec![Moments::default(); self.names.len()];
                for (&r, &g) in rows.iter().zip(&group) {
                    m[g].add(num[r], den[r]);
                }
                let c = &m[control];
                MetricResult {
                    metric: name.clone(),
                    kind: "ratio".into(),
                    control_n: c.n,
                    control_mean: ratio_of(c).map_or(f64::NAN, |(r, _)| r),
                    variants: (0..self.names.len())
                        .filter(|&g| g != control)
                        .map(|g| compare_ratio(&self.names[g], c, &m[g], spec))
                        .collect(),
                }
            }))
            .collect();
        Analysis {
            rows: rows.len() as u64,
            counts: self
                .names
                .iter()
                .cloned()
                .zip(counts.iter().copied())
                .collect(),
            srm: srm(&counts, &weights),
            metrics,
        }
    }
}

/// A variant against the control on a ratio metric (`y` the numerator, `x` the
/// denominator).
fn compare_ratio(
    name: &str,
    control: &Moments,
    variant: &Moments,
    spec: &AnalysisSpec,
) -> VariantResult {
    let fixed = ratio(control, variant, spec.confidence);
    VariantResult {
        variant: name.to_string(),
        n: variant.n,
        mean: ratio_of(variant).map_or(f64::NAN, |(r, _)| r),
        sequential: fixed
            .as_ref()
            .map(|f| sequential(f.difference, f.se, control.n + variant.n, spec.confidence)),
        cuped: None,
        detectable: fixed
            .as_ref()
            .map(|f| detectable(f.se, spec.confidence, spec.power)),
        note: fixed.is_none().then(|| {
            "no comparison: a group has fewer than two observations or no denominator (its sum is 0)"
                .to_string()
        }),
        fixed,
    }
}

fn compare(
    name: &str,
    control: &Moments,
    variant: &Moments,
    binary: bool,
    with_covariate: bool,
    spec: &AnalysisSpec,
) -> VariantResult {
    let mut r = VariantResult {
        variant: name.to_string(),
        n: variant.n,
        mean: variant.mean_y,
        fixed: None,
        sequential: None,
        cuped: None,
        detectable: None,
        note: too_few(control, variant, binary).map(|s| s.to_string()),
    };
    if r.note.is_some() {
        return r;
    }
    let fixed = if binary {
        proportions(control, variant, spec.confidence)
    } else {
        welch(control, variant, spec.confidence)
    };
    r.sequential = Some(sequential(
        fixed.difference,
        fixed.se,
        control.n + variant.n,
        spec.confidence,
    ));
    r.detectable = Some(detectable(fixed.se, spec.confidence, spec.power));
    r.cuped = if with_covariate {
        cuped(control, variant, spec.confidence)
    } else {
        None
    };
    r.fixed = Some(fixed);
    r
}
