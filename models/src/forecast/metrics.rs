//! Forecast accuracy as the M4 competition defined it (`smape_cal`, `mase_cal` of the
//! organisers' R code): per series the mean over the horizon, then the mean over series.

use serde::{Deserialize, Serialize};

/// Symmetric MAPE of one series, in percent: `200/h · Σ |y − ŷ| / (|y| + |ŷ|)`.
/// A step where both are 0 counts as 0.
pub fn smape(actual: &[f64], forecast: &[f64]) -> f64 {
    let h = actual.len().min(forecast.len());
    let total: f64 = (0..h)
        .map(|i| {
            let d = actual[i].abs() + forecast[i].abs();
            if d == 0.0 {
                0.0
            } else {
                200.0 * (actual[i] - forecast[i]).abs() / d
            }
        })
        .sum();
    total / h.max(1) as f64
}

/// The in-sample mean absolute seasonal difference at lag `period` (MASE's scale); falls
/// back to lag 1 when the series is no longer than one period.
pub fn mase_scale(insample: &[f64], period: usize) -> f64 {
    let lag = if insample.len() > period { period } else { 1 };
    let n = insample.len().saturating_sub(lag);
    if n == 0 {
        return f64::NAN;
    }
    (lag..insample.len())
        .map(|t| (insample[t] - insample[t - lag]).abs())
        .sum::<f64>()
        / n as f64
}

/// MASE of one series.
pub fn mase(insample: &[f64], actual: &[f64], forecast: &[f64], period: usize) -> f64 {
    let h = actual.len().min(forecast.len());
    let mae: f64 = (0..h).map(|i| (actual[i] - forecast[i]).abs()).sum::<f64>() / h.max(1) as f64;
    mae / mase_scale(insample, period)
}

/// Mean sMAPE and MASE over many series.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Accuracy {
    /// Mean sMAPE (percent).
    pub smape: f64,
    /// Mean MASE.
    pub mase: f64,
    /// Series scored.
    pub series: usize,
}

impl Accuracy {
    /// Overall weighted average against Naive2's accuracy on the same series.
    pub fn owa(&self, naive2: &Accuracy) -> f64 {
        0.5 * (self.smape / naive2.smape + self.mase / naive2.mase)
    }
}

/// Score forecasts: `insample[i]`, `actual[i]`, `forecast[i]` belong to series `i`.
pub fn score(
    insample: &[&[f64]],
    actual: &[&[f64]],
    forecast: &[Vec<f64>],
    period: usize,
) -> Accuracy {
    let n = insample.len();
    let mut acc = Accuracy {
        series: n,
        ..Accuracy::default()
    };
    for i in 0..n {
        acc.smape += smape(actual[i], &forecast[i]);
        acc.mase += mase(insample[i], actual[i], &forecast[i], period);
    }
    acc.smape /= n.max(1) as f64;
    acc.mase /= n.max(1) as f64;
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smape_and_mase_by_hand() {
        // |1-2|/(1+2) and |4-4|/8: 200/2 * (1/3 + 0).
        assert!((smape(&[1.0, 4.0], &[2.0, 4.0]) - 100.0 / 3.0).abs() < 1e-12);
        assert_eq!(smape(&[0.0], &[0.0]), 0.0);
        // Scale at lag 2 of [1, 2, 3, 5]: (|3-1| + |5-2|) / 2 = 2.5; MAE 1 → 0.4.
        assert!((mase(&[1.0, 2.0, 3.0, 5.0], &[6.0], &[7.0], 2) - 0.4).abs() < 1e-12);
    }
}
