//! The statistical benchmarks of the M4 competition, implemented as the organisers' R code
//! (`Benchmarks and Evaluation.R` in Mcompetitions/M4-methods) defines them: naive, seasonal
//! naive, Naive2, SES, Holt, damped Holt, Theta and Comb (the mean of SES, Holt and damped).
//!
//! Every method but the two naive ones forecasts the *seasonally adjusted* series and
//! multiplies the seasonal indices back in. A series is adjusted when a 90 % autocorrelation
//! test at lag `period` finds seasonality, with R's classical multiplicative decomposition.
//!
//! The exponential-smoothing fits follow R's `forecast::ets` models ANN, AAN and AAdN:
//! parameters and initial states chosen by Nelder–Mead on the sum of squared one-step errors
//! (the additive-error likelihood), with `ets`'s bounds (alpha in [1e-4, 0.9999], beta in
//! [1e-4, alpha], phi in [0.8, 0.98]). Optimisers differ in the details, so SES, Holt, damped
//! and Theta agree with R closely but not to every digit; Naive2 has no fitted parameter and
//! reproduces the published scores exactly.

use serde::{Deserialize, Serialize};

/// A classical method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Last value repeated.
    Naive,
    /// Last season repeated.
    SeasonalNaive,
    /// Naive on the seasonally adjusted series (the M4 benchmark).
    Naive2,
    /// Simple exponential smoothing.
    Ses,
    /// Holt's linear trend.
    Holt,
    /// Holt with a damped trend.
    Damped,
    /// The Theta method (theta = 2 line by SES, theta = 0 line by regression).
    Theta,
    /// Mean of SES, Holt and damped.
    Comb,
}

impl Method {
    /// All methods, in the competition's order.
    pub const ALL: [Method; 8] = [
        Method::Naive,
        Method::SeasonalNaive,
        Method::Naive2,
        Method::Ses,
        Method::Holt,
        Method::Damped,
        Method::Theta,
        Method::Comb,
    ];

    /// Name as shown in reports.
    pub fn name(self) -> &'static str {
        match self {
            Method::Naive => "naive",
            Method::SeasonalNaive => "seasonal_naive",
            Method::Naive2 => "naive2",
            Method::Ses => "ses",
            Method::Holt => "holt",
            Method::Damped => "damped",
            Method::Theta => "theta",
            Method::Comb => "comb",
        }
    }
}

/// R's `acf`: autocorrelations at lags `1..=max_lag` with the biased (1/n) estimator.
pub fn acf(x: &[f64], max_lag: usize) -> Vec<f64> {
    let n = x.len();
    let mean = x.iter().sum::<f64>() / n as f64;
    let denom: f64 = x.iter().map(|v| (v - mean).powi(2)).sum();
    (1..=max_lag)
        .map(|k| {
            if k >= n || denom == 0.0 {
                return 0.0;
            }
            (0..n - k)
                .map(|t| (x[t] - mean) * (x[t + k] - mean))
                .sum::<f64>()
                / denom
        })
        .collect()
}

/// The M4 seasonality test: the autocorrelation at lag `period` exceeds its 90 % limit
/// (`1.645 / sqrt(n) * sqrt(1 + 2 * sum of squared acf below the lag)`). Series shorter
/// than three periods are not seasonal.
pub fn is_seasonal(x: &[f64], period: usize) -> bool {
    if period <= 1 || x.len() < 3 * period {
        return false;
    }
    let r = acf(x, period);
    let below: f64 = r[..period - 1].iter().map(|v| v * v).sum();
    let limit = 1.645 / (x.len() as f64).sqrt() * (1.0 + 2.0 * below).sqrt();
    r[period - 1].abs() > limit
}

/// R's `decompose(type = "multiplicative")`: the seasonal index of every position of `x`
/// (centred moving-average trend, mean ratio per season position, indices scaled to mean 1).
/// `None` when a ratio cannot be formed (a zero trend).
pub fn multiplicative_indices(x: &[f64], period: usize) -> Option<Vec<f64>> {
    let n = x.len();
    let f = period;
    // Centred moving average: weights 1/f, halved at both ends for an even period.
    let (weights, half) = if f.is_multiple_of(2) {
        let mut w = vec![1.0 / f as f64; f + 1];
        w[0] /= 2.0;
        w[f] /= 2.0;
        (w, f / 2)
    } else {
        (vec![1.0 / f as f64; f], f / 2)
    };
    let mut ratio_sum = vec![0.0; f];
    let mut ratio_count = vec![0usize; f];
    for t in half..n.saturating_sub(weights.len() - 1 - half) {
        let trend: f64 = weights
            .iter()
            .enumerate()
            .map(|(j, w)| w * x[t + j - half])
            .sum();
        if trend == 0.0 {
            return None;
        }
        ratio_sum[t % f] += x[t] / trend;
        ratio_count[t % f] += 1;
    }
    if ratio_count.contains(&0) {
        return None;
    }
    let figure: Vec<f64> = ratio_sum
        .iter()
        .zip(&ratio_count)
        .map(|(s, c)| s / *c as f64)
        .collect();
    let mean = figure.iter().sum::<f64>() / f as f64;
    if !(mean.is_finite() && mean != 0.0) {
        return None;
    }
    Some((0..n).map(|t| figure[t % f] / mean).collect())
}

/// A series split into its seasonally adjusted part and the indices to put back.
#[derive(Debug, Clone)]
pub struct Adjusted {
    /// The series divided by its seasonal indices (the series itself when not seasonal).
    pub values: Vec<f64>,
    /// Index of each forecast step (all 1 when not seasonal).
    pub future_indices: Vec<f64>,
}

/// Seasonal adjustment as the M4 benchmarks do it.
pub fn seasonal_adjust(x: &[f64], period: usize, horizon: usize) -> Adjusted {
    let indices = if is_seasonal(x, period) {
        multiplicative_indices(x, period)
    } else {
        None
    };
    match indices {
        Some(idx) => {
            let last = &idx[x.len() - period..];
            Adjusted {
                values: x.iter().zip(&idx).map(|(v, s)| v / s).collect(),
                future_indices: (0..horizon).map(|h| last[h % period]).collect(),
            }
        }
        None => Adjusted {
            values: x.to_vec(),
            future_indices: vec![1.0; horizon],
        },
    }
}

/// Forecast `horizon` steps of `x` (seasonal period `period`) with `method`.
///
/// `x` must be non-empty and finite (the caller checks: [`crate::forecast::check_series`]).
pub fn forecast(x: &[f64], period: usize, horizon: usize, method: Method) -> Vec<f64> {
    forecast_methods(x, period, horizon, &[method])
        .pop()
        .map(|(_, f)| f)
        .unwrap_or_default()
}

/// Every method's forecast at once.
pub fn forecast_all(x: &[f64], period: usize, horizon: usize) -> Vec<(Method, Vec<f64>)> {
    forecast_methods(x, period, horizon, &Method::ALL)
}

/// The forecasts of `methods`, sharing the seasonal adjustment and each exponential
/// smoothing fit among them (Comb reuses SES, Holt and damped); nothing a method does not
/// need is computed.
fn forecast_methods(
    x: &[f64],
    period: usize,
    horizon: usize,
    methods: &[Method],
) -> Vec<(Method, Vec<f64>)> {
    let last = *x.last().expect("non-empty series");
    let mut adjusted: Option<Adjusted> = None;
    let mut fits: [Option<Vec<f64>>; 3] = [None, None, None];
    let trends = [Trend::None, Trend::Linear, Trend::Damped];
    let mut out = Vec::with_capacity(methods.len());
    for &m in methods {
        let f = match m {
            Method::Naive => vec![last; horizon],
            Method::SeasonalNaive => {
                let p = period.clamp(1, x.len());
                let season = &x[x.len() - p..];
                (0..horizon).map(|h| season[h % p]).collect()
            }
            _ => {
                let adj = adjusted.get_or_insert_with(|| seasonal_adjust(x, period, horizon));
                let mut ets = |k: usize| -> Vec<f64> {
                    fits[k]
                        .get_or_insert_with(|| ets_forecast(&adj.values, trends[k], horizon))
                        .clone()
                };
                let base = match m {
                    Method::Naive2 => vec![*adj.values.last().expect("non-empty"); horizon],
                    Method::Ses => ets(0),
                    Method::Holt => ets(1),
                    Method::Damped => ets(2),
                    Method::Comb => {
                        let parts = [ets(0), ets(1), ets(2)];
                        (0..horizon)
                            .map(|h| parts.iter().map(|p| p[h]).sum::<f64>() / 3.0)
                            .collect()
                    }
                    Method::Theta => theta(&adj.values, horizon),
                    Method::Naive | Method::SeasonalNaive => unreachable!("matched above"),
                };
                base.iter()
                    .zip(&adj.future_indices)
                    .map(|(f, s)| f * s)
                    .collect()
            }
        };
        out.push((m, f));
    }
    out
}

/// The classic Theta method of the M4 code: the theta = 0 line (least-squares linear trend)
/// and the theta = 2 line (`2x - trend`) forecast by SES, averaged with equal weights.
pub fn theta(x: &[f64], horizon: usize) -> Vec<f64> {
    let n = x.len() as f64;
    let ts: Vec<f64> = (1..=x.len()).map(|t| t as f64).collect();
    let tm = ts.iter().sum::<f64>() / n;
    let xm = x.iter().sum::<f64>() / n;
    let sxx: f64 = ts.iter().map(|t| (t - tm).powi(2)).sum();
    let sxy: f64 = ts.iter().zip(x).map(|(t, v)| (t - tm) * (v - xm)).sum();
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    let intercept = xm - slope * tm;
    let line: Vec<f64> = ts.iter().map(|t| intercept + slope * t).collect();
    let theta2: Vec<f64> = x.iter().zip(&line).map(|(v, l)| 2.0 * v - l).collect();
    let ses = ets_forecast(&theta2, Trend::None, horizon);
    (0..horizon)
        .map(|h| {
            let t = n + 1.0 + h as f64;
            0.5 * ses[h] + 0.5 * (intercept + slope * t)
        })
        .collect()
}

/// Trend of an additive-error exponential smoothing model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trend {
    /// ETS(A,N,N): simple exponential smoothing.
    None,
    /// ETS(A,A,N): Holt's linear trend.
    Linear,
    /// ETS(A,Ad,N): damped trend.
    Damped,
}

/// A fitted exponential smoothing model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ets {
    trend: Trend,
    alpha: f64,
    beta: f64,
    phi: f64,
    level: f64,
    slope: f64,
}

const ALPHA: (f64, f64) = (1e-4, 0.9999);
const PHI: (f64, f64) = (0.8, 0.98);

impl Ets {
    /// Parameters from the optimiser's unconstrained vector, clamped into `ets`'s bounds.
    fn from_params(trend: Trend, p: &[f64]) -> Ets {
        let alpha = p[0].clamp(ALPHA.0, ALPHA.1);
        let (beta, phi, level, slope) = match trend {
            Trend::None => (0.0, 1.0, p[1], 0.0),
            Trend::Linear => (p[2].clamp(1e-4, alpha), 1.0, p[1], p[3]),
            Trend::Damped => (
                p[2].clamp(1e-4, alpha),
                p[4].clamp(PHI.0, PHI.1),
                p[1],
                p[3],
            ),
        };
        Ets {
            trend,
            alpha,
            beta,
            phi,
            level,
            slope,
        }
    }

    /// Run the filter over `x` from the initial states: the sum of squared one-step errors
    /// and the final states.
    fn filter(&self, x: &[f64]) -> (f64, f64, f64) {
        let (mut l, mut b) = (self.level, self.slope);
        let mut sse = 0.0;
        for &y in x {
            let damp = match self.trend {
                Trend::None => 0.0,
                Trend::Linear => 1.0,
                Trend::Damped => self.phi,
            };
            let fitted = l + damp * b;
            let e = y - fitted;
            sse += e * e;
            l = fitted + self.alpha * e;
            b = damp * b + self.beta * e;
        }
        (sse, l, b)
    }

    /// Fit to `x` by Nelder–Mead on the sum of squared errors, from `ets`'s starting
    /// values (states from a regression on the first ten points).
    pub fn fit(x: &[f64], trend: Trend) -> Ets {
        let m = x.len().min(10);
        let (l0, b0) = if m >= 2 {
            let tm = (m as f64 + 1.0) / 2.0;
            let xm = x[..m].iter().sum::<f64>() / m as f64;
            let sxx: f64 = (1..=m).map(|t| (t as f64 - tm).powi(2)).sum();
            let sxy: f64 = (1..=m).map(|t| (t as f64 - tm) * (x[t - 1] - xm)).sum();
            let b = sxy / sxx;
            (xm - b * tm, b)
        } else {
            (x[0], 0.0)
        };
        let start: Vec<f64> = match trend {
            Trend::None => vec![0.5, x[0]],
            Trend::Linear => vec![0.5, l0, 0.05, b0],
            Trend::Damped => vec![0.5, l0, 0.05, b0, 0.9],
        };
        let scale = x.iter().map(|v| v.abs()).sum::<f64>() / x.len() as f64;
        let steps: Vec<f64> = match trend {
            Trend::None => vec![0.2, 0.1 * scale.max(1e-9)],
            Trend::Linear => vec![0.2, 0.1 * scale.max(1e-9), 0.02, 0.01 * scale.max(1e-9)],
            Trend::Damped => vec![
                0.2,
                0.1 * scale.max(1e-9),
                0.02,
                0.01 * scale.max(1e-9),
                0.05,
            ],
        };
        let objective = |p: &[f64]| {
            let model = Ets::from_params(trend, p);
            // Out-of-bounds points are penalised so the simplex comes back inside.
            let mut penalty = 0.0;
            if p[0] < ALPHA.0 || p[0] > ALPHA.1 {
                penalty += 1.0;
            }
            if trend != Trend::None && (p[2] < 1e-4 || p[2] > model.alpha) {
                penalty += 1.0;
            }
            if trend == Trend::Damped && (p[4] < PHI.0 || p[4] > PHI.1) {
                penalty += 1.0;
            }
            let (sse, _, _) = model.filter(x);
            if sse.is_finite() {
                sse * (1.0 + penalty)
            } else {
                f64::MAX
            }
        };
        let best = nelder_mead(objective, &start, &steps, 2000);
        Ets::from_params(trend, &best)
    }

    /// Point forecasts for `horizon` steps after the fitted data.
    pub fn forecast_from(&self, x: &[f64], horizon: usize) -> Vec<f64> {
        let (_, l, b) = self.filter(x);
        let mut out = Vec::with_capacity(horizon);
        let mut damp_sum = 0.0;
        for h in 1..=horizon {
            damp_sum += match self.trend {
                Trend::None => 0.0,
                Trend::Linear => 1.0,
                Trend::Damped => self.phi.powi(h as i32),
            };
            out.push(l + damp_sum * b);
        }
        out
    }
}

/// Fit an exponential smoothing model with `trend` to `x` and forecast `horizon` steps.
pub fn ets_forecast(x: &[f64], trend: Trend, horizon: usize) -> Vec<f64> {
    Ets::fit(x, trend).forecast_from(x, horizon)
}

/// Nelder–Mead minimisation from `start` with initial simplex steps `steps`.
pub fn nelder_mead(
    f: impl Fn(&[f64]) -> f64,
    start: &[f64],
    steps: &[f64],
    max_iter: usize,
) -> Vec<f64> {
    let n = start.len();
    let mut simplex: Vec<Vec<f64>> = vec![start.to_vec()];
    for i in 0..n {
        let mut p = start.to_vec();
        p[i] += steps[i];
        simplex.push(p);
    }
    let mut values: Vec<f64> = simplex.iter().map(|p| f(p)).collect();
    for _ in 0..max_iter {
        let mut order: Vec<usize> = (0..=n).collect();
        order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
        simplex = order.iter().map(|&i| simplex[i].clone()).collect();
        values = order.iter().map(|&i| values[i]).collect();
        let spread = (values[n] - values[0]).abs();
        if spread <= 1e-10 * (values[0].abs() + 1e-12) {
            break;
        }
        let centroid: Vec<f64> = (0..n)
            .map(|j| simplex[..n].iter().map(|p| p[j]).sum::<f64>() / n as f64)
            .collect();
        let along = |t: f64| -> Vec<f64> {
            (0..n)
                .map(|j| centroid[j] + t * (simplex[n][j] - centroid[j]))
                .collect()
        };
        let reflected = along(-1.0);
        let fr = f(&reflected);
        if fr < values[0] {
            let expanded = along(-2.0);
            let fe = f(&expanded);
            if fe < fr {
                simplex[n] = expanded;
                values[n] = fe;
            } else {
                simplex[n] = reflected;
                values[n] = fr;
            }
        } else if fr < values[n - 1] {
            simplex[n] = reflected;
            values[n] = fr;
        } else {
            let contracted = if fr < values[n] {
                along(-0.5)
            } else {
                along(0.5)
            };
            let fc = f(&contracted);
            if fc < values[n].min(fr) {
                simplex[n] = contracted;
                values[n] = fc;
            } else {
                for i in 1..=n {
                    simplex[i] = (0..n)
                        .map(|j| simplex[0][j] + 0.5 * (simplex[i][j] - simplex[0][j]))
                        .collect();
                    values[i] = f(&simplex[i]);
                }
            }
        }
    }
    let best = (0..=n)
        .min_by(|&a, &b| values[a].total_cmp(&values[b]))
        .unwrap_or(0);
    simplex[best].clone()
}

/// Every method's accuracy on `train` histories against `test` futures (same series order),
/// with each method's OWA against Naive2.
pub fn evaluate(
    train: &[super::Series],
    test: &[super::Series],
    period: usize,
    horizon: usize,
) -> Vec<(Method, super::metrics::Accuracy, f64)> {
    let forecasts: Vec<Vec<(Method, Vec<f64>)>> = train
        .iter()
        .map(|s| forecast_all(&s.values, period, horizon))
        .collect();
    let insample: Vec<&[f64]> = train.iter().map(|s| s.values.as_slice()).collect();
    let actual: Vec<&[f64]> = test
        .iter()
        .map(|s| &s.values[..horizon.min(s.values.len())])
        .collect();
    let scores: Vec<(Method, super::metrics::Accuracy)> = Method::ALL
        .iter()
        .enumerate()
        .map(|(k, m)| {
            let f: Vec<Vec<f64>> = forecasts.iter().map(|all| all[k].1.clone()).collect();
            (*m, super::metrics::score(&insample, &actual, &f, period))
        })
        .collect();
    let naive2 = scores
        .iter()
        .find(|(m, _)| *m == Method::Naive2)
        .map(|(_, a)| *a)
        .unwrap_or_default();
    scores
        .into_iter()
        .map(|(m, a)| (m, a, a.owa(&naive2)))
        .collect()
}
