//! Trend forecasting: many series at once, horizon `H`.
//!
//! - [`classical`]: the M4 statistical benchmarks (naive … Theta, Comb).
//! - [`nbeats`]: a global N-BEATS model trained with burn.
//! - [`metrics`]: sMAPE, MASE and OWA exactly as the M4 competition scored them.
//! - [`data`]: reading series from the M4 wide CSV layout or from a long table.

pub mod classical;
pub mod data;
pub mod metrics;
pub mod nbeats;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// One series: an id and its observations in time order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// Series id.
    pub id: String,
    /// Observations, oldest first.
    pub values: Vec<f64>,
    /// Optional covariates known in advance (holiday or promotion flags), one row per
    /// observation and per future step: `covariates[t][k]`. Empty when the data has none.
    #[serde(default)]
    pub covariates: Vec<Vec<f64>>,
}

impl Series {
    /// A series without covariates.
    pub fn new(id: impl Into<String>, values: Vec<f64>) -> Series {
        Series {
            id: id.into(),
            values,
            covariates: Vec::new(),
        }
    }
}

/// Refuse a series no forecaster can use: empty, or holding NaN or infinite values.
/// (Missing observations must be filled before forecasting; the rule is documented in
/// `docs/models.md`.)
pub fn check_series(s: &Series) -> Result<()> {
    if s.values.is_empty() {
        return Err(ModelError::BadSeries {
            id: s.id.clone(),
            reason: "it has no observations".into(),
        });
    }
    if let Some(t) = s.values.iter().position(|v| !v.is_finite()) {
        return Err(ModelError::BadSeries {
            id: s.id.clone(),
            reason: format!(
                "observation {} is {} (fill or drop missing values before forecasting)",
                t + 1,
                s.values[t]
            ),
        });
    }
    Ok(())
}

/// Hold out the last `horizon` points of every series longer than that: the histories (with
/// all their covariates, which are known in advance) and the held-out futures. Series no
/// longer than the horizon are left out of both.
pub fn split_last(series: Vec<Series>, horizon: usize) -> (Vec<Series>, Vec<Series>) {
    series
        .into_iter()
        .filter(|s| s.values.len() > horizon)
        .map(|mut s| {
            let future = s.values.split_off(s.values.len() - horizon);
            let test = Series::new(s.id.clone(), future);
            (s, test)
        })
        .unzip()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_last_keeps_covariates_and_drops_short_series() {
        let mut a = Series::new("a", vec![1.0, 2.0, 3.0, 4.0]);
        a.covariates = vec![vec![0.0]; 4];
        let b = Series::new("b", vec![1.0, 2.0]);
        let (train, test) = split_last(vec![a, b], 2);
        assert_eq!(train.len(), 1);
        assert_eq!(train[0].values, vec![1.0, 2.0]);
        assert_eq!(
            train[0].covariates.len(),
            4,
            "future covariates are known in advance"
        );
        assert_eq!(test[0].id, "a");
        assert_eq!(test[0].values, vec![3.0, 4.0]);
    }
}
