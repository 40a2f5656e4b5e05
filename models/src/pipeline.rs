//! The whole response-model recipe: split, fit preprocessing on the training rows, train,
//! evaluate on the held-out rows.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use arrow::array::RecordBatch;

use crate::error::{ModelError, Result};
use crate::features::{FeatureConfig, Preprocessor, is_test_row};
use crate::logistic::{EpochReport, LinearScorer, TrainConfig, train};
use crate::metrics::classification;

/// A trained response model with its preprocessing and metrics.
#[derive(Debug, Clone)]
pub struct TrainedModel {
    /// Fitted preprocessing.
    pub preprocessor: Preprocessor,
    /// Weights.
    pub scorer: LinearScorer,
    /// `test_*` and `train_*` metrics.
    pub metrics: BTreeMap<String, f64>,
    /// Rows trained on.
    pub train_rows: usize,
    /// Rows held out.
    pub test_rows: usize,
}

/// Train a logistic-regression response model on `batches`.
pub fn train_response_model(
    batches: &[RecordBatch],
    features: &FeatureConfig,
    cfg: &TrainConfig,
    on_epoch: impl FnMut(EpochReport) -> ControlFlow<()>,
) -> Result<TrainedModel> {
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    if rows == 0 {
        return Err(ModelError::NoRows {
            purpose: "train on",
            rows,
        });
    }
    let every = features.holdout_every;
    let preprocessor = Preprocessor::fit(batches, features)?;
    // One pass over the columns, then the split.
    let (train_set, test_set) = preprocessor
        .transform(batches, |_| true)?
        .partition(|i| is_test_row(i, every));
    if train_set.rows == 0 {
        return Err(ModelError::NoRows {
            purpose: "train on",
            rows,
        });
    }
    if test_set.rows == 0 {
        return Err(ModelError::NoRows {
            purpose: "test on",
            rows,
        });
    }
    let positives = train_set.y.iter().filter(|&&y| y > 0.5).count();
    if positives == 0 || positives == train_set.rows {
        return Err(ModelError::SingleClass {
            label: features.label.clone(),
            class: u8::from(positives > 0),
        });
    }
    let scorer = train(&train_set, cfg, on_epoch)?;
    let mut metrics = classification("test_", &scorer.predict(&test_set), &test_set.y);
    metrics.extend(classification(
        "train_",
        &scorer.predict(&train_set),
        &train_set.y,
    ));
    metrics.retain(|_, v| v.is_finite());
    Ok(TrainedModel {
        preprocessor,
        scorer,
        metrics,
        train_rows: train_set.rows,
        test_rows: test_set.rows,
    })
}
