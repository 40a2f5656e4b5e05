//! The model artifact: weights as safetensors (PyTorch layout: a linear layer's `weight`
//! is `[out, in]`) plus a JSON manifest holding everything needed to score raw records.

use std::collections::BTreeMap;

use arrow::array::RecordBatch;
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::features::Preprocessor;
use crate::logistic::LinearScorer;

/// The manifest's format tag.
pub const FORMAT: &str = "halyard-model/1";

/// Where the training data came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataLineage {
    /// The source URL.
    pub source: String,
    /// `sha256:<hex>` of the source bytes.
    pub digest: String,
    /// Rows in the source.
    pub rows: usize,
    /// Rows trained on.
    pub train_rows: usize,
    /// Rows held out for the test metrics.
    pub test_rows: usize,
}

/// The JSON manifest of a model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// Model name.
    pub name: String,
    /// Version number.
    pub version: u64,
    /// Model family (`logistic_regression`).
    pub model_type: String,
    /// Preprocessing: feature schema, scaling, vocabularies.
    pub preprocessor: Preprocessor,
    /// Tensor names and shapes in the weights file.
    pub tensors: BTreeMap<String, Vec<usize>>,
    /// Metrics on the held-out rows (`test_*`) and training rows (`train_*`).
    pub metrics: BTreeMap<String, f64>,
    /// The job spec it was trained from, as JSON.
    pub spec: serde_json::Value,
    /// Data lineage.
    pub data: DataLineage,
    /// The job that trained it.
    pub job_id: String,
    /// Halyard version that wrote it.
    pub halyard_version: String,
    /// Creation time, ms since the epoch.
    pub created_ms: i64,
}

/// Names and shapes of a linear model's tensors, as written by [`linear_to_safetensors`].
pub fn linear_tensor_shapes(dim: usize) -> BTreeMap<String, Vec<usize>> {
    BTreeMap::from([("weight".into(), vec![1, dim]), ("bias".into(), vec![1])])
}

/// Weights of a linear model as safetensors bytes: `weight` `[1, dim]`, `bias` `[1]`.
pub fn linear_to_safetensors(model: &LinearScorer) -> Result<Vec<u8>> {
    let w: Vec<u8> = model.weight.iter().flat_map(|v| v.to_le_bytes()).collect();
    let b: Vec<u8> = model.bias.to_le_bytes().to_vec();
    let tensors = vec![
        (
            "weight",
            TensorView::new(Dtype::F32, vec![1, model.weight.len()], &w)
                .map_err(|e| ModelError::Internal(e.to_string()))?,
        ),
        (
            "bias",
            TensorView::new(Dtype::F32, vec![1], &b)
                .map_err(|e| ModelError::Internal(e.to_string()))?,
        ),
    ];
    safetensors::serialize(tensors, None).map_err(|e| ModelError::Internal(e.to_string()))
}

fn f32s(view: &TensorView<'_>) -> Vec<f32> {
    view.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Read linear weights from safetensors bytes.
pub fn linear_from_safetensors(bytes: &[u8]) -> Result<LinearScorer> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| ModelError::Artifact(format!("weights file: {e}")))?;
    let get = |name: &str| {
        st.tensor(name)
            .map_err(|e| ModelError::Artifact(format!("weights file has no {name}: {e}")))
    };
    let w = get("weight")?;
    let b = get("bias")?;
    if w.dtype() != Dtype::F32 || b.dtype() != Dtype::F32 {
        return Err(ModelError::Artifact("weights must be f32".into()));
    }
    Ok(LinearScorer {
        weight: f32s(&w),
        bias: f32s(&b).first().copied().unwrap_or(0.0),
    })
}

/// A loaded artifact, ready to score raw records.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    /// The manifest.
    pub manifest: Manifest,
    /// The weights.
    pub scorer: LinearScorer,
}

impl LoadedModel {
    /// Load from the two files' bytes.
    pub fn from_bytes(weights: &[u8], manifest: &[u8]) -> Result<LoadedModel> {
        let manifest: Manifest = serde_json::from_slice(manifest)
            .map_err(|e| ModelError::Artifact(format!("manifest: {e}")))?;
        if manifest.format != FORMAT {
            return Err(ModelError::Artifact(format!(
                "manifest format {:?}, expected {FORMAT:?}",
                manifest.format
            )));
        }
        let scorer = linear_from_safetensors(weights)?;
        if scorer.weight.len() != manifest.preprocessor.dim {
            return Err(ModelError::Artifact(format!(
                "weights have {} inputs but the manifest's features have {}",
                scorer.weight.len(),
                manifest.preprocessor.dim
            )));
        }
        Ok(LoadedModel { manifest, scorer })
    }

    /// Response probabilities for raw records (the training data's columns; the label
    /// column may be absent).
    pub fn score(&self, batches: &[RecordBatch]) -> Result<Vec<f32>> {
        let encoded = self.manifest.preprocessor.transform(batches, |_| true)?;
        Ok(self.scorer.predict(&encoded))
    }
}
