//! What a model version's report draws (`halyard report`, the console's report page): its
//! held-out rows summed up as curves once, at training, small enough to keep in the
//! registry record beside the metrics.
//!
//! Curves follow scikit-learn's definitions (`roc_curve` with `drop_intermediate=False`,
//! `precision_recall_curve`, `calibration_curve` with uniform bins) and scikit-uplift's
//! Qini curve; `models/tests/evaluation.rs` checks them against scikit-learn on a committed
//! fixture.

use serde::{Deserialize, Serialize};

use crate::forecast::Series;
use crate::forecast::metrics::smape;

/// Points kept of a curve: a curve has a point per distinct score, thinned to this many.
pub const MAX_POINTS: usize = 201;
/// Bins of the calibration plot (equal width on [0, 1]).
pub const CALIBRATION_BINS: usize = 10;
/// Groups of the gains and lift chart (deciles).
pub const GROUPS: usize = 10;
/// Series of a forecaster's test set drawn in its report.
pub const SAMPLE_SERIES: usize = 6;
/// Past observations drawn before a sampled series' forecast, in horizons.
pub const HISTORY_HORIZONS: usize = 3;

/// A model version's held-out evaluation, by the kind of model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Evaluation {
    /// A response model's scores on its test rows.
    Response(ResponseCurves),
    /// An uplift model's ranking of its test rows.
    Uplift(UpliftCurves),
    /// A forecaster on its test windows.
    Forecast(ForecastSample),
    /// A model of numbers (boosted trees with an L2, L1 or Poisson objective) on its test
    /// rows.
    Regression(RegressionCurves),
}

/// A model of numbers on its test rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegressionCurves {
    /// Test rows.
    pub rows: usize,
    /// `(prediction, actual)` of up to [`MAX_POINTS`] test rows, evenly spaced in the
    /// test set's order.
    pub sample: Vec<(f64, f64)>,
    /// The rows ranked by prediction in [`GROUPS`] groups of (nearly) equal size, lowest
    /// first: each group's `(mean prediction, mean actual)`.
    pub deciles: Vec<(f64, f64)>,
}

/// A response model on its test rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseCurves {
    /// Test rows.
    pub rows: usize,
    /// Positive test rows.
    pub positives: usize,
    /// `(false positive rate, true positive rate)` from `(0, 0)` to `(1, 1)`, one point per
    /// distinct score (thresholds descending), thinned to [`MAX_POINTS`] and rounded to
    /// five decimals.
    pub roc: Vec<(f64, f64)>,
    /// `(recall, precision)`, one point per distinct score (thresholds descending), thinned.
    pub pr: Vec<(f64, f64)>,
    /// The calibration plot's non-empty bins.
    pub calibration: Vec<CalibrationBin>,
    /// The rows ranked by score in [`GROUPS`] groups of (nearly) equal size, best first.
    pub deciles: Vec<Decile>,
}

/// Rows whose predicted probability falls in one bin of the calibration plot.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CalibrationBin {
    /// Mean predicted probability.
    pub predicted: f64,
    /// Share of positives.
    pub observed: f64,
    /// Rows in the bin.
    pub rows: usize,
}

/// One group of the rows ranked by score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Decile {
    /// Rows in the group.
    pub rows: usize,
    /// Positives among them.
    pub positives: usize,
    /// `positives / rows`.
    pub rate: f64,
    /// The rate over the overall positive rate.
    pub lift: f64,
    /// Share of all positives in this group and the better ones (cumulative gain).
    pub gain: f64,
}

/// An uplift model on its test rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpliftCurves {
    /// Test rows.
    pub rows: usize,
    /// The Qini curve of the model's ranking (`(rows targeted, incremental responders)`,
    /// as `sklift.metrics.qini_curve`), thinned to [`MAX_POINTS`].
    pub qini: Vec<(f64, f64)>,
    /// The same for the pooled response model's ranking (targeting likely responders).
    pub response_ranking_qini: Vec<(f64, f64)>,
}

/// A forecaster on its test windows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForecastSample {
    /// Steps ahead scored.
    pub horizon: usize,
    /// Series scored.
    pub series_scored: usize,
    /// sMAPE per step ahead (1, 2, …), over every test series: the model's.
    pub step_smape: Vec<f64>,
    /// The same for the Naive2 baseline.
    pub step_smape_naive2: Vec<f64>,
    /// Up to [`SAMPLE_SERIES`] series spread over the test set.
    pub series: Vec<SeriesSample>,
}

/// One series of a forecaster's report: its recent past, the truth and the forecasts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesSample {
    /// Series id.
    pub id: String,
    /// The last observations before the forecast (up to [`HISTORY_HORIZONS`] horizons).
    pub history: Vec<f64>,
    /// What happened.
    pub actual: Vec<f64>,
    /// The model's forecast.
    pub forecast: Vec<f64>,
    /// Naive2's forecast.
    pub naive2: Vec<f64>,
}

/// Indices of `scores` by score, highest first (ties in row order).
fn ranked(scores: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    idx
}

/// `(false positives, true positives)` after each distinct score, highest first, from the
/// rows ranked by score (`idx`, [`ranked`]).
fn counts_by_threshold(idx: &[usize], scores: &[f32], labels: &[f32]) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    let (mut fp, mut tp) = (0.0, 0.0);
    for (k, &i) in idx.iter().enumerate() {
        if labels[i] > 0.5 {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        if idx.get(k + 1).is_none_or(|&j| scores[j] != scores[i]) {
            out.push((fp, tp));
        }
    }
    out
}

/// The ROC curve: `(false positive rate, true positive rate)` from `(0, 0)`, one point per
/// distinct score (`sklearn.metrics.roc_curve(drop_intermediate=False)`). Empty with one
/// class only.
pub fn roc_curve(scores: &[f32], labels: &[f32]) -> Vec<(f64, f64)> {
    roc_of(&counts_by_threshold(&ranked(scores), scores, labels))
}

/// The ROC curve from the counts by threshold.
fn roc_of(counts: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let Some(&(negatives, positives)) = counts.last() else {
        return Vec::new();
    };
    if negatives == 0.0 || positives == 0.0 {
        return Vec::new();
    }
    std::iter::once((0.0, 0.0))
        .chain(
            counts
                .iter()
                .map(|&(fp, tp)| (fp / negatives, tp / positives)),
        )
        .collect()
}

/// The precision–recall curve: `(recall, precision)` per distinct score, highest first
/// (`sklearn.metrics.precision_recall_curve`, without its closing `(0, 1)`). Empty without
/// positives.
pub fn pr_curve(scores: &[f32], labels: &[f32]) -> Vec<(f64, f64)> {
    pr_of(&counts_by_threshold(&ranked(scores), scores, labels))
}

/// The precision–recall curve from the counts by threshold.
fn pr_of(counts: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let positives = counts.last().map_or(0.0, |c| c.1);
    if positives == 0.0 {
        return Vec::new();
    }
    counts
        .iter()
        .map(|&(fp, tp)| (tp / positives, tp / (tp + fp)))
        .collect()
}

/// Rows by [`CALIBRATION_BINS`] equal-width bins of the predicted probability (bin `k`
/// holds `(k/10, (k+1)/10]`, the first also 0), non-empty bins only: the calibration plot
/// (`sklearn.calibration.calibration_curve(strategy="uniform")`, whose bin edges these
/// are) and the expected calibration error
/// ([`crate::metrics::expected_calibration_error`]).
pub fn calibration(probs: &[f32], labels: &[f32]) -> Vec<CalibrationBin> {
    let step = 1.0 / CALIBRATION_BINS as f64;
    let edges: Vec<f64> = (1..CALIBRATION_BINS).map(|k| k as f64 * step).collect();
    let mut count = [0usize; CALIBRATION_BINS];
    let mut p_sum = [0f64; CALIBRATION_BINS];
    let mut y_sum = [0f64; CALIBRATION_BINS];
    for (&p, &y) in probs.iter().zip(labels) {
        let p = f64::from(p);
        let bin = edges.partition_point(|&e| e < p);
        count[bin] += 1;
        p_sum[bin] += p;
        y_sum[bin] += if y > 0.5 { 1.0 } else { 0.0 };
    }
    (0..CALIBRATION_BINS)
        .filter(|&b| count[b] > 0)
        .map(|b| CalibrationBin {
            predicted: p_sum[b] / count[b] as f64,
            observed: y_sum[b] / count[b] as f64,
            rows: count[b],
        })
        .collect()
}

/// The rows ranked by score (ties in row order) in [`GROUPS`] groups, group `k` holding
/// ranks `k·n/10 .. (k+1)·n/10`: each group's rate, lift and cumulative gain.
pub fn deciles(scores: &[f32], labels: &[f32]) -> Vec<Decile> {
    deciles_of(&ranked(scores), labels)
}

/// The groups of the rows ranked by score (`idx`, [`ranked`]).
fn deciles_of(idx: &[usize], labels: &[f32]) -> Vec<Decile> {
    let n = idx.len();
    let all = labels.iter().filter(|&&y| y > 0.5).count();
    let base = all as f64 / n.max(1) as f64;
    let mut so_far = 0;
    (0..GROUPS)
        .map(|k| (k * n / GROUPS, (k + 1) * n / GROUPS))
        .filter(|(from, to)| to > from)
        .map(|(from, to)| {
            let positives = idx[from..to].iter().filter(|&&i| labels[i] > 0.5).count();
            so_far += positives;
            let rate = positives as f64 / (to - from) as f64;
            Decile {
                rows: to - from,
                positives,
                rate,
                lift: if base > 0.0 { rate / base } else { 0.0 },
                gain: if all > 0 {
                    so_far as f64 / all as f64
                } else {
                    0.0
                },
            }
        })
        .collect()
}

/// At most `max` points of `curve`: the first, the last and points evenly spaced between.
pub fn thin(curve: Vec<(f64, f64)>, max: usize) -> Vec<(f64, f64)> {
    if curve.len() <= max || max < 2 {
        return curve;
    }
    let last = curve.len() - 1;
    (0..max).map(|k| curve[k * last / (max - 1)]).collect()
}

/// Decimal places a stored curve keeps (a plot needs no more; the record stays small).
const STORED_DECIMALS: i32 = 5;

/// `curve` thinned to [`MAX_POINTS`], rounded to [`STORED_DECIMALS`]: what a record keeps.
fn stored(curve: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    let scale = 10f64.powi(STORED_DECIMALS);
    let round = |v: f64| (v * scale).round() / scale;
    thin(curve, MAX_POINTS)
        .into_iter()
        .map(|(x, y)| (round(x), round(y)))
        .collect()
}

/// A response model's evaluation from its test scores.
pub fn response(scores: &[f32], labels: &[f32]) -> Evaluation {
    // One ranking of the rows serves every curve.
    let idx = ranked(scores);
    let counts = counts_by_threshold(&idx, scores, labels);
    Evaluation::Response(ResponseCurves {
        rows: labels.len(),
        positives: labels.iter().filter(|&&y| y > 0.5).count(),
        roc: stored(roc_of(&counts)),
        pr: stored(pr_of(&counts)),
        calibration: calibration(scores, labels),
        deciles: deciles_of(&idx, labels),
    })
}

/// A model of numbers' evaluation from its test predictions and the true values.
pub fn regression(predictions: &[f32], actual: &[f32]) -> Evaluation {
    let n = actual.len();
    let pair = |i: usize| (f64::from(predictions[i]), f64::from(actual[i]));
    let step = n.div_ceil(MAX_POINTS).max(1);
    let sample = (0..n).step_by(step).map(pair).collect();
    let mut idx = ranked(predictions);
    idx.reverse();
    let deciles = (0..GROUPS)
        .map(|k| (k * n / GROUPS, (k + 1) * n / GROUPS))
        .filter(|(from, to)| to > from)
        .map(|(from, to)| {
            let (p, y) = idx[from..to]
                .iter()
                .map(|&i| pair(i))
                .fold((0.0, 0.0), |(a, b), (p, y)| (a + p, b + y));
            let rows = (to - from) as f64;
            (p / rows, y / rows)
        })
        .collect();
    Evaluation::Regression(RegressionCurves {
        rows: n,
        sample,
        deciles,
    })
}

/// An uplift model's evaluation from its Qini curves (the model's and the pooled response
/// ranking's).
pub fn uplift(rows: usize, qini: Vec<(f64, f64)>, response_ranking: Vec<(f64, f64)>) -> Evaluation {
    Evaluation::Uplift(UpliftCurves {
        rows,
        qini: stored(qini),
        response_ranking_qini: stored(response_ranking),
    })
}

/// sMAPE at each step ahead over every series (`actual[i][j]` against `forecast[i][j]`).
pub fn step_smape(actual: &[&[f64]], forecast: &[Vec<f64>]) -> Vec<f64> {
    let h = actual.iter().map(|a| a.len()).min().unwrap_or(0);
    (0..h)
        .map(|j| {
            let total: f64 = actual
                .iter()
                .zip(forecast)
                .map(|(a, f)| smape(&a[j..=j], &f[j..=j]))
                .sum();
            total / actual.len().max(1) as f64
        })
        .collect()
}

/// A forecaster's evaluation: the error per step ahead of the model and of Naive2, and
/// [`SAMPLE_SERIES`] series spread over the test set with their recent past.
pub fn forecast(
    insample: &[Series],
    actual: &[&[f64]],
    ours: &[Vec<f64>],
    naive2: &[Vec<f64>],
) -> Evaluation {
    let n = insample.len();
    let horizon = actual.iter().map(|a| a.len()).min().unwrap_or(0);
    let picks = SAMPLE_SERIES.min(n);
    let series = (0..picks)
        .map(|k| k * n / picks)
        .map(|i| {
            let past = &insample[i].values;
            let keep = (HISTORY_HORIZONS * horizon).max(1).min(past.len());
            SeriesSample {
                id: insample[i].id.clone(),
                history: past[past.len() - keep..].to_vec(),
                actual: actual[i].to_vec(),
                forecast: ours[i].clone(),
                naive2: naive2[i].clone(),
            }
        })
        .collect();
    Evaluation::Forecast(ForecastSample {
        horizon,
        series_scored: n,
        step_smape: step_smape(actual, ours),
        step_smape_naive2: step_smape(actual, naive2),
        series,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deciles_rank_rows_and_add_up() {
        // 20 rows, the two positives scored highest: both in the first group.
        let mut p = vec![0.1f32; 20];
        let mut y = vec![0.0f32; 20];
        for i in [3, 7] {
            p[i] = 0.9;
            y[i] = 1.0;
        }
        let d = deciles(&p, &y);
        assert_eq!(d.len(), 10);
        assert!(d.iter().all(|g| g.rows == 2));
        assert_eq!(
            (d[0].positives, d[0].rate, d[0].lift, d[0].gain),
            (2, 1.0, 10.0, 1.0)
        );
        assert!(d[1..].iter().all(|g| g.positives == 0 && g.gain == 1.0));
        // The first group's rate is the metrics' top-decile rate.
        assert_eq!(crate::metrics::top_decile(&p, &y).0, d[0].rate);
        // Fewer rows than groups: only the non-empty groups.
        assert_eq!(deciles(&p[..3], &y[..3]).len(), 3);
    }

    #[test]
    fn thinning_keeps_both_ends() {
        let curve: Vec<(f64, f64)> = (0..1000).map(|i| (f64::from(i), 0.0)).collect();
        let t = thin(curve.clone(), 11);
        assert_eq!(t.len(), 11);
        assert_eq!((t[0].0, t[10].0), (0.0, 999.0));
        assert_eq!(thin(curve[..5].to_vec(), 11).len(), 5);
    }

    #[test]
    fn one_class_has_no_roc_curve() {
        assert!(roc_curve(&[0.1, 0.2], &[1.0, 1.0]).is_empty());
        assert!(pr_curve(&[0.1, 0.2], &[0.0, 0.0]).is_empty());
    }

    #[test]
    fn the_forecast_sample_spreads_over_the_series() {
        let insample: Vec<Series> = (0..12)
            .map(|i| Series {
                id: format!("s{i}"),
                values: (0..20).map(f64::from).collect(),
                covariates: Vec::new(),
            })
            .collect();
        let actual_rows: Vec<Vec<f64>> = (0..12).map(|_| vec![20.0, 21.0]).collect();
        let actual: Vec<&[f64]> = actual_rows.iter().map(Vec::as_slice).collect();
        let ours: Vec<Vec<f64>> = (0..12).map(|_| vec![20.0, 23.0]).collect();
        let naive: Vec<Vec<f64>> = (0..12).map(|_| vec![19.0, 19.0]).collect();
        let Evaluation::Forecast(f) = forecast(&insample, &actual, &ours, &naive) else {
            panic!("a forecast's evaluation");
        };
        let ids: Vec<&str> = f.series.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["s0", "s2", "s4", "s6", "s8", "s10"]);
        assert_eq!(f.series[0].history.len(), 6);
        assert_eq!(f.step_smape[0], 0.0);
        assert!((f.step_smape[1] - 200.0 * 2.0 / 44.0).abs() < 1e-12);
        assert!((f.step_smape_naive2[0] - 200.0 / 39.0).abs() < 1e-12);
    }
}
