//! Whole recipes: data in, weights + architecture + metrics out.
//!
//! - [`train_response_model`]: split, fit preprocessing on the training rows, train one or
//!   several members (logistic regression or MLP), score the held-out rows **with the
//!   serving runtime** so that the recorded metrics are those of the artifact served.
//! - [`train_forecaster`]: N-BEATS on the histories, scored on the held-out futures with
//!   sMAPE / MASE / OWA against Naive2.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use arrow::array::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::artifact::{Architecture, export_module, merge_members};
use crate::error::{ModelError, Result};
use crate::forecast::Series;
use crate::forecast::classical::{Method, forecast};
use crate::forecast::metrics::score;
use crate::forecast::nbeats::{NBeatsTrainConfig, StepReport, train_nbeats};
use crate::logistic::{EpochReport, TrainConfig, train};
use crate::metrics::classification;
use crate::mlp::{InputLayout, MlpConfig, train_mlp};
use crate::preprocess::{Encoded, FeatureConfig, Preprocessor, Role, row_roles};
use crate::runtime::Runtime;

/// Which response model, and its shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseKind {
    /// Logistic regression.
    LogisticRegression,
    /// MLP with embeddings.
    Mlp {
        /// Hidden layer widths.
        hidden: Vec<usize>,
        /// Widest embedding.
        max_embedding: usize,
    },
}

/// A response model recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseConfig {
    /// Model.
    pub kind: ResponseKind,
    /// Training.
    pub train: TrainConfig,
    /// Members trained with seeds `seed, seed + 1, …` and averaged.
    pub ensemble: usize,
    /// Weigh positives by `negatives / positives` (overrides `train.positive_weight`).
    pub balance_classes: bool,
}

/// A trained model, ready to publish.
#[derive(Debug, Clone)]
pub struct TrainedModel {
    /// Architecture and preprocessing.
    pub architecture: Architecture,
    /// Safetensors bytes.
    pub weights: Vec<u8>,
    /// `test_*` and `train_*` metrics.
    pub metrics: BTreeMap<String, f64>,
    /// Rows (series) trained on.
    pub train_rows: usize,
    /// Rows (series) held out.
    pub test_rows: usize,
}

/// Progress of a member's epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemberReport {
    /// Member (0-based).
    pub member: usize,
    /// Members in all.
    pub members: usize,
    /// The epoch's report.
    pub epoch: EpochReport,
}

/// Train a response model on `batches`.
pub fn train_response_model(
    batches: &[RecordBatch],
    features: &FeatureConfig,
    rc: &ResponseConfig,
    mut on_epoch: impl FnMut(MemberReport) -> ControlFlow<()>,
) -> Result<TrainedModel> {
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    if rows == 0 {
        return Err(ModelError::NoRows {
            purpose: "train on",
            rows,
        });
    }
    let preprocessor = Preprocessor::fit(batches, features)?;
    // One pass over the columns, then the splits: test rows; for early stopping, the
    // validation rows among the others (row_roles: by split column or row index).
    let roles = row_roles(batches, features)?;
    let all = preprocessor.transform(batches, |_| true)?;
    let (fit_rows, test_set) = all.partition(|i| roles[i] == Role::Test);
    let original: Vec<usize> = (0..rows).filter(|&i| roles[i] != Role::Test).collect();
    let early_stopping = matches!(rc.kind, ResponseKind::Mlp { .. }) && rc.train.patience > 0;
    let split =
        early_stopping.then(|| fit_rows.partition(|j| roles[original[j]] == Role::Validation));
    let no_rows = Encoded::empty(fit_rows.dim);
    let (train_set, valid_set) = match &split {
        Some((train, valid)) => (train, valid),
        None => (&fit_rows, &no_rows),
    };
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
    let mut tc = rc.train.clone();
    if rc.balance_classes {
        tc.positive_weight = (train_set.rows - positives) as f64 / positives as f64;
    }
    let members = rc.ensemble.max(1);
    let mut weights = Vec::with_capacity(members);
    let mlp_config = match &rc.kind {
        ResponseKind::Mlp {
            hidden,
            max_embedding,
        } => Some(MlpConfig::new(
            InputLayout::of(&preprocessor),
            hidden.clone(),
            *max_embedding,
        )),
        ResponseKind::LogisticRegression => None,
    };
    for member in 0..members {
        let mut mtc = tc.clone();
        mtc.seed = tc.seed.wrapping_add(member as u64);
        let report = |epoch| {
            on_epoch(MemberReport {
                member,
                members,
                epoch,
            })
        };
        let bytes = match &mlp_config {
            Some(cfg) => export_module(&train_mlp(train_set, valid_set, cfg, &mtc, report)?)?,
            None => export_module(&train(train_set, &mtc, report)?)?,
        };
        weights.push(bytes);
    }
    let weights = merge_members(&weights)?;
    let runtime = Runtime::new(architecture(preprocessor, mlp_config, members), &weights)?;
    response_metrics(runtime, weights, &test_set, &fit_rows)
}

fn architecture(
    preprocessor: Preprocessor,
    mlp: Option<MlpConfig>,
    members: usize,
) -> Architecture {
    match mlp {
        Some(config) => Architecture::Mlp {
            preprocessor,
            config,
            members,
        },
        None => Architecture::LogisticRegression {
            preprocessor,
            members,
        },
    }
}

/// Score the held-out and the fitted rows with the serving runtime.
fn response_metrics(
    runtime: Runtime,
    weights: Vec<u8>,
    test_set: &Encoded,
    fit_rows: &Encoded,
) -> Result<TrainedModel> {
    let mut metrics = classification("test_", &runtime.score_encoded(test_set)?, &test_set.y);
    metrics.extend(classification(
        "train_",
        &runtime.score_encoded(fit_rows)?,
        &fit_rows.y,
    ));
    metrics.retain(|_, v| v.is_finite());
    Ok(TrainedModel {
        architecture: runtime.architecture,
        weights,
        metrics,
        train_rows: fit_rows.rows,
        test_rows: test_set.rows,
    })
}

/// A model trained elsewhere (data-parallel: every member's weights), scored on every row's
/// test part with the serving runtime.
pub fn finish_response(
    batches: &[RecordBatch],
    features: &FeatureConfig,
    preprocessor: Preprocessor,
    mlp: Option<MlpConfig>,
    weights: Vec<Vec<u8>>,
) -> Result<TrainedModel> {
    let roles = row_roles(batches, features)?;
    let all = preprocessor.transform(batches, |_| true)?;
    let (fit_rows, test_set) = all.partition(|i| roles[i] == Role::Test);
    let members = weights.len();
    let weights = merge_members(&weights)?;
    let runtime = Runtime::new(architecture(preprocessor, mlp, members), &weights)?;
    response_metrics(runtime, weights, &test_set, &fit_rows)
}

/// Train an N-BEATS forecaster on `train` and score it on `test` (the true futures of the
/// same series, in the same order; empty: no test metrics). Metrics: `test_smape`,
/// `test_mase`, `test_owa` and Naive2's for reference.
pub fn train_forecaster(
    train: &[Series],
    test: &[Series],
    horizon: usize,
    period: usize,
    tc: &NBeatsTrainConfig,
    on_progress: impl FnMut(StepReport) -> ControlFlow<()>,
) -> Result<TrainedModel> {
    let trained = train_nbeats(train, horizon, period, tc, on_progress)?;
    let weights = merge_members(
        &trained
            .members
            .iter()
            .map(export_module)
            .collect::<Result<Vec<_>>>()?,
    )?;
    let runtime = Runtime::new(
        Architecture::NBeats {
            config: trained.config,
        },
        &weights,
    )?;
    let mut metrics = BTreeMap::new();
    if !test.is_empty() {
        if test.len() != train.len() {
            return Err(ModelError::Unsupported(format!(
                "the test set has {} series but the training set {}: they must match one to one",
                test.len(),
                train.len()
            )));
        }
        let h = test
            .iter()
            .map(|s| s.values.len())
            .min()
            .unwrap_or(0)
            .min(horizon);
        let ours = runtime.forecast(train, h)?;
        let naive2: Vec<Vec<f64>> = train
            .iter()
            .map(|s| forecast(&s.values, period, h, Method::Naive2))
            .collect();
        let insample: Vec<&[f64]> = train.iter().map(|s| s.values.as_slice()).collect();
        let actual: Vec<&[f64]> = test.iter().map(|s| &s.values[..h]).collect();
        let a = score(&insample, &actual, &ours, period);
        let n2 = score(&insample, &actual, &naive2, period);
        metrics.insert("test_smape".into(), a.smape);
        metrics.insert("test_mase".into(), a.mase);
        metrics.insert("test_owa".into(), a.owa(&n2));
        metrics.insert("naive2_smape".into(), n2.smape);
        metrics.insert("naive2_mase".into(), n2.mase);
        metrics.insert("test_series".into(), a.series as f64);
    }
    Ok(TrainedModel {
        architecture: runtime.architecture,
        weights,
        metrics,
        train_rows: train.len(),
        test_rows: test.len(),
    })
}
