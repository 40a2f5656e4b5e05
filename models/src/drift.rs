//! Drift of a served model's inputs against its training data, as Evidently scores it by
//! default for more than 1,000 rows: the Wasserstein distance divided by the training
//! standard deviation for numeric columns, the Jensen–Shannon distance (natural log) for
//! categorical ones, each flagged at 0.1; the population stability index (PSI) beside both.
//!
//! The training data is summarised once, at training time, into a [`Reference`] kept in
//! the artifact's manifest: per numeric column its quantile bins (edges, the share of
//! rows in each, the missing share) and standard deviation; per categorical column its
//! most frequent categories' shares. Serving counts recent records into the same bins
//! ([`Sketch`]: a fixed number of counters per column, whatever the traffic), and scores
//! whole windows of [`WINDOW`] records. The distances are computed on the bins: the
//! Wasserstein distance between the two binned distributions with each bin's mass at its
//! midpoint (exact for those, an approximation of the distance between the raw values).

use std::collections::HashMap;

use arrow::array::RecordBatch;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Result;
use crate::json_records::Record;
use crate::preprocess::{
    ColumnEncoding, Preprocessor, bucket_of, concat_column, numeric_values, quantile_edges,
    string_values,
};

/// Quantile bins per numeric column.
pub const BINS: usize = 20;
/// Categories kept per categorical column (the others share one slot).
pub const CATEGORIES: usize = 50;
/// A score at or above this flags drift (Evidently's default for both distances).
pub const THRESHOLD: f64 = 0.1;
/// Records per scored window.
pub const WINDOW: u64 = 10_000;
/// Fewest records a window is scored with (Evidently's switch to the distances).
pub const MIN_ROWS: u64 = 1_000;
/// Share given to an empty bin in the PSI (Evidently's).
const PSI_FLOOR: f64 = 1e-4;

/// One input column's training distribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Profile {
    /// A number: bin `k` holds values in `[edges[k-1], edges[k])`; the last slot is missing.
    Numeric {
        /// Inner bin edges, ascending.
        edges: Vec<f64>,
        /// Each bin's midpoint (the outer bins' between the training minimum or maximum
        /// and their edge).
        points: Vec<f64>,
        /// Share of training rows per bin, then the missing share.
        shares: Vec<f64>,
        /// Training standard deviation (of the values present).
        std: f64,
    },
    /// A category: slot `k` is `categories[k]`, then every other value, then missing.
    Categorical {
        /// The most frequent training values.
        categories: Vec<String>,
        /// Share of training rows per slot.
        shares: Vec<f64>,
    },
}

impl Profile {
    /// Slots counted per record.
    pub fn slots(&self) -> usize {
        match self {
            Profile::Numeric { shares, .. } | Profile::Categorical { shares, .. } => shares.len(),
        }
    }
}

/// One column's reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnReference {
    /// The input column.
    pub name: String,
    /// Its training distribution.
    pub profile: Profile,
}

/// The training distributions of a model's input columns; part of the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Reference {
    /// One per raw input column (crosses are left out: their sources are here).
    pub columns: Vec<ColumnReference>,
}

fn shares(counts: &[u64]) -> Vec<f64> {
    let total: u64 = counts.iter().sum();
    counts
        .iter()
        .map(|&c| c as f64 / total.max(1) as f64)
        .collect()
}

impl Reference {
    /// Summarise the input columns of `preprocessor` over `batches`.
    pub fn fit(batches: &[RecordBatch], preprocessor: &Preprocessor) -> Result<Reference> {
        let mut columns = Vec::new();
        for col in preprocessor.columns.iter().filter(|c| c.sources.is_empty()) {
            let arrays = concat_column(batches, &col.name)?;
            let profile = match col.encoding {
                ColumnEncoding::Numeric { .. } | ColumnEncoding::Buckets { .. } => {
                    numeric_profile(numeric_values(&arrays)?)
                }
                ColumnEncoding::OneHot { .. } | ColumnEncoding::Hashed { .. } => {
                    categorical_profile(string_values(&arrays)?)
                }
                // A date drifts through its days (the numeric column of the same name).
                ColumnEncoding::DatePart { .. } => continue,
            };
            columns.push(ColumnReference {
                name: col.name.clone(),
                profile,
            });
        }
        Ok(Reference { columns })
    }
}

fn numeric_profile(values: Vec<f64>) -> Profile {
    let mut present: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let edges = quantile_edges(&mut present, BINS);
    let (lo, hi) = match (present.first(), present.last()) {
        (Some(lo), Some(hi)) => (*lo, *hi),
        _ => (0.0, 0.0),
    };
    let mut bounds = vec![lo];
    bounds.extend(&edges);
    bounds.push(hi);
    let points = bounds.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
    let mut counts = vec![0u64; edges.len() + 2];
    for v in &values {
        counts[bucket_of(*v, &edges).min(edges.len() + 1)] += 1;
    }
    let n = present.len().max(1) as f64;
    let mean = present.iter().sum::<f64>() / n;
    let std = (present.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    Profile::Numeric {
        edges,
        points,
        shares: shares(&counts),
        std,
    }
}

fn categorical_profile(values: Vec<Option<String>>) -> Profile {
    let mut freq: HashMap<&str, u64> = HashMap::new();
    for v in values.iter().flatten() {
        *freq.entry(v.as_str()).or_default() += 1;
    }
    let mut by_count: Vec<(&str, u64)> = freq.into_iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    by_count.truncate(CATEGORIES);
    let categories: Vec<String> = by_count.iter().map(|(v, _)| v.to_string()).collect();
    let index: HashMap<&str, usize> = by_count
        .iter()
        .enumerate()
        .map(|(i, (v, _))| (*v, i))
        .collect();
    let mut counts = vec![0u64; categories.len() + 2];
    for v in &values {
        let slot = match v {
            None => categories.len() + 1,
            Some(s) => index.get(s.as_str()).copied().unwrap_or(categories.len()),
        };
        counts[slot] += 1;
    }
    Profile::Categorical {
        categories,
        shares: shares(&counts),
    }
}

/// A JSON value as the category string training saw (numbers as written, `None` missing).
fn category_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Counts of recent records in a reference's slots: bounded memory, one pass per record.
#[derive(Debug, Clone)]
pub struct Sketch {
    reference: Reference,
    /// Per categorical column, its categories' slots.
    index: Vec<HashMap<String, usize>>,
    counts: Vec<Vec<u64>>,
    rows: u64,
}

impl Sketch {
    /// Empty counts over `reference`'s slots.
    pub fn new(reference: Reference) -> Self {
        let index = reference
            .columns
            .iter()
            .map(|c| match &c.profile {
                Profile::Categorical { categories, .. } => categories
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (v.clone(), i))
                    .collect(),
                Profile::Numeric { .. } => HashMap::new(),
            })
            .collect();
        let counts = reference
            .columns
            .iter()
            .map(|c| vec![0; c.profile.slots()])
            .collect();
        Sketch {
            reference,
            index,
            counts,
            rows: 0,
        }
    }

    /// Records counted.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Count one record (a column it lacks counts as missing).
    pub fn observe(&mut self, record: &Record) {
        for (k, col) in self.reference.columns.iter().enumerate() {
            let value = record.get(&col.name);
            let slot = match &col.profile {
                Profile::Numeric { edges, .. } => {
                    let x = match value {
                        Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
                        Some(Value::Bool(b)) => f64::from(u8::from(*b)),
                        // A date column's values: days since 1970-01-01.
                        Some(Value::String(s)) => {
                            crate::preprocess::parse_days(s).unwrap_or(f64::NAN)
                        }
                        _ => f64::NAN,
                    };
                    bucket_of(x, edges).min(edges.len() + 1)
                }
                Profile::Categorical { categories, .. } => match category_of(value) {
                    None => categories.len() + 1,
                    Some(s) => self.index[k].get(&s).copied().unwrap_or(categories.len()),
                },
            };
            self.counts[k][slot] += 1;
        }
        self.rows += 1;
    }

    /// The counts so far as a window, and empty counts for the next.
    pub fn take(&mut self) -> Window {
        let counts = self
            .counts
            .iter_mut()
            .map(|c| std::mem::replace(c, vec![0; c.len()]))
            .collect();
        let rows = std::mem::take(&mut self.rows);
        Window {
            reference: self.reference.clone(),
            counts,
            rows,
        }
    }
}

/// A window of counted records and the reference they are compared with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// The training distributions.
    pub reference: Reference,
    /// Per column, records per slot.
    pub counts: Vec<Vec<u64>>,
    /// Records counted.
    pub rows: u64,
}

/// One column's drift over a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnDrift {
    /// The input column.
    pub name: String,
    /// `wasserstein` (normed by the training standard deviation) or `jensen_shannon`.
    pub method: String,
    /// The distance.
    pub score: f64,
    /// The population stability index over the same slots.
    pub psi: f64,
    /// Whether the score reaches [`THRESHOLD`].
    pub drifted: bool,
}

impl Window {
    /// Add another window's counts over the same reference (the windows of several
    /// executors serving one version); `false` when the references differ.
    pub fn merge(&mut self, other: &Window) -> bool {
        if other.reference != self.reference {
            return false;
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            for (a, b) in mine.iter_mut().zip(theirs) {
                *a += b;
            }
        }
        self.rows += other.rows;
        true
    }

    /// Every column's drift; empty when the window has fewer than [`MIN_ROWS`] records.
    pub fn scores(&self) -> Vec<ColumnDrift> {
        if self.rows < MIN_ROWS {
            return Vec::new();
        }
        self.reference
            .columns
            .iter()
            .zip(&self.counts)
            .map(|(col, counts)| {
                let current = shares(counts);
                let (method, score, psi) = match &col.profile {
                    Profile::Numeric {
                        points,
                        shares: reference,
                        std,
                        ..
                    } => {
                        // The distances compare the values present; the missing slot
                        // is last.
                        let present = points.len();
                        let w = wasserstein(points, &reference[..present], &current[..present]);
                        let normed = if *std > 0.0 {
                            w / std
                        } else if w > 0.0 {
                            f64::INFINITY
                        } else {
                            0.0
                        };
                        ("wasserstein", normed, psi(reference, &current))
                    }
                    Profile::Categorical {
                        shares: reference, ..
                    } => (
                        "jensen_shannon",
                        jensen_shannon(reference, &current),
                        psi(reference, &current),
                    ),
                };
                ColumnDrift {
                    name: col.name.clone(),
                    method: method.to_string(),
                    score,
                    psi,
                    drifted: score >= THRESHOLD,
                }
            })
            .collect()
    }
}

fn normalised(p: &[f64]) -> Vec<f64> {
    let total: f64 = p.iter().sum();
    if total > 0.0 {
        p.iter().map(|x| x / total).collect()
    } else {
        p.to_vec()
    }
}

/// The Wasserstein-1 distance between two distributions on the same ascending `points`
/// with weights `p` and `q` (each normalised to sum 1): the area between their CDFs.
pub fn wasserstein(points: &[f64], p: &[f64], q: &[f64]) -> f64 {
    let (p, q) = (normalised(p), normalised(q));
    let (mut fp, mut fq, mut area) = (0.0, 0.0, 0.0);
    for k in 0..points.len().saturating_sub(1) {
        fp += p[k];
        fq += q[k];
        area += (fp - fq).abs() * (points[k + 1] - points[k]);
    }
    area
}

/// The Jensen–Shannon distance (the square root of the divergence, natural log) between
/// two distributions over the same slots, as `scipy.spatial.distance.jensenshannon`.
pub fn jensen_shannon(p: &[f64], q: &[f64]) -> f64 {
    let (p, q) = (normalised(p), normalised(q));
    let kl = |a: &[f64], m: &[f64]| -> f64 {
        a.iter()
            .zip(m)
            .filter(|(x, _)| **x > 0.0)
            .map(|(x, y)| x * (x / y).ln())
            .sum()
    };
    let m: Vec<f64> = p.iter().zip(&q).map(|(a, b)| (a + b) / 2.0).collect();
    ((kl(&p, &m) + kl(&q, &m)) / 2.0).max(0.0).sqrt()
}

/// The population stability index of `current` against `reference` (shares over the same
/// slots; an empty slot counts as [`PSI_FLOOR`]).
pub fn psi(reference: &[f64], current: &[f64]) -> f64 {
    reference
        .iter()
        .zip(current)
        .map(|(r, c)| {
            let (r, c) = (r.max(PSI_FLOOR), c.max(PSI_FLOOR));
            (c - r) * (c / r).ln()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use rand_distr::{Distribution, Normal};

    fn record(x: f64, colour: &str) -> Record {
        let mut r = Record::new();
        r.insert("x".into(), serde_json::json!(x));
        r.insert("colour".into(), serde_json::json!(colour));
        r
    }

    fn reference(rng: &mut StdRng) -> Reference {
        let normal = Normal::new(0.0, 1.0).unwrap();
        let xs: Vec<f64> = (0..100_000).map(|_| normal.sample(rng)).collect();
        let colours: Vec<Option<String>> = (0..100_000)
            .map(|i| Some(["red", "green", "blue"][i % 3].to_string()))
            .collect();
        Reference {
            columns: vec![
                ColumnReference {
                    name: "x".into(),
                    profile: numeric_profile(xs),
                },
                ColumnReference {
                    name: "colour".into(),
                    profile: categorical_profile(colours),
                },
            ],
        }
    }

    /// Windows of 10,000 records flagged on `x`, of `windows`, with `x` shifted by `shift`
    /// standard deviations.
    fn flagged(shift: f64, windows: usize, seed: u64) -> usize {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut sketch = Sketch::new(reference(&mut rng));
        let normal = Normal::new(shift, 1.0).unwrap();
        let mut flagged = 0;
        for _ in 0..windows {
            for i in 0..WINDOW as usize {
                sketch.observe(&record(
                    normal.sample(&mut rng),
                    ["red", "green", "blue"][i % 3],
                ));
            }
            let scores = sketch.take().scores();
            assert!(!scores[1].drifted, "colour never moves: {scores:?}");
            flagged += usize::from(scores[0].drifted);
        }
        flagged
    }

    #[test]
    fn a_shift_of_a_fifth_of_a_standard_deviation_is_flagged_and_no_shift_is_not() {
        let shifted = flagged(0.2, 200, 1);
        let unshifted = flagged(0.0, 200, 2);
        eprintln!("windows flagged of 200: shifted {shifted}, unshifted {unshifted}");
        assert!(shifted >= 190, "shifted windows flagged: {shifted} of 200");
        assert!(
            unshifted <= 10,
            "unshifted windows flagged: {unshifted} of 200"
        );
    }

    #[test]
    fn a_new_category_and_missing_values_move_the_categorical_score() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut sketch = Sketch::new(reference(&mut rng));
        for i in 0..2_000 {
            let colour = if i % 4 == 0 {
                "purple"
            } else {
                ["red", "green", "blue"][i % 3]
            };
            let mut r = record(0.0, colour);
            if i % 10 == 0 {
                r.remove("x");
            }
            sketch.observe(&r);
        }
        let w = sketch.take();
        let scores = w.scores();
        assert_eq!(scores[1].method, "jensen_shannon");
        assert!(scores[1].drifted, "{scores:?}");
        // A tenth of x missing shows in the PSI (the distance compares present values).
        assert!(scores[0].psi > 0.1, "{scores:?}");
        // Under MIN_ROWS nothing is scored.
        sketch.observe(&record(0.0, "red"));
        assert!(sketch.take().scores().is_empty());
    }

    #[test]
    fn windows_merge_only_over_the_same_reference() {
        let mut rng = StdRng::seed_from_u64(4);
        let r = reference(&mut rng);
        let mut a = Sketch::new(r.clone());
        let mut b = Sketch::new(r);
        a.observe(&record(0.5, "red"));
        b.observe(&record(-0.5, "blue"));
        b.observe(&record(0.1, "green"));
        let mut w = a.take();
        assert!(w.merge(&b.take()));
        assert_eq!(w.rows, 3);
        assert_eq!(w.counts[1].iter().sum::<u64>(), 3);
        let mut other = Sketch::new(Reference::default()).take();
        assert!(!other.merge(&w));
    }
}
