//! The model artifact: weights as safetensors in PyTorch layout (a linear layer's `weight`
//! is `[out, in]`; names are the module paths, `hidden.0.weight`) plus a JSON manifest
//! holding everything needed to score raw input: architecture, preprocessing, metrics and
//! lineage. Ensembles keep each member's tensors under `members.<k>.`.
//!
//! Training writes weights with burn's `SafetensorsStore` and its PyTorch adapter; serving
//! reads them with candle ([`crate::runtime`]).

use std::collections::BTreeMap;

use burn::module::Module;
use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot, SafetensorsStore};
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::forecast::nbeats::ForecastConfig;
use crate::mlp::MlpConfig;
use crate::preprocess::Preprocessor;

/// The manifest's format tag.
pub const FORMAT: &str = "halyard-model/2";

/// The format tag of an artifact whose scores are numbers or counts, not probabilities
/// (boosted trees with an L2, L1 or Poisson objective): a Halyard that reads only
/// [`FORMAT`] refuses it instead of serving its sums through a sigmoid.
pub const FORMAT_NUMERIC: &str = "halyard-model/3";

/// An X-learner's second stage: models of the imputed effects on the treated rows
/// (`tau_treated.` tensors) and on the control rows (`tau_control.`), each predicting
/// `(effect + 1) / 2` through a sigmoid, blended by the treated share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct XStage {
    /// Effect model fitted on the treated rows (`y − μ0(x)`).
    pub treated: Box<Architecture>,
    /// Effect model fitted on the control rows (`μ1(x) − y`).
    pub control: Box<Architecture>,
    /// The treated share `g`: the uplift is `g·τ_control + (1 − g)·τ_treated`.
    pub propensity: f64,
}

/// One model of a blend and its weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlendPart {
    /// The model.
    pub architecture: Box<Architecture>,
    /// Its probabilities' weight.
    pub weight: f64,
}

/// What one segment of a k-means model holds, in the raw data's units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentProfile {
    /// Segment number, from 0.
    pub segment: usize,
    /// Rows assigned to it.
    pub rows: usize,
    /// Its share of the rows.
    pub share: f64,
    /// Mean of each numeric column.
    pub means: BTreeMap<String, f64>,
    /// The most frequent value of each categorical column, with its share in the segment.
    pub top: BTreeMap<String, (String, f64)>,
    /// Response rate of the label column, when the job named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_rate: Option<f64>,
}

/// Where the training data came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataLineage {
    /// The source URL.
    pub source: String,
    /// `sha256:<hex>` of the source bytes.
    pub digest: String,
    /// Rows (or series) in the source.
    pub rows: usize,
    /// Rows (or series) trained on.
    pub train_rows: usize,
    /// Rows (or series) held out for the test metrics.
    pub test_rows: usize,
}

/// What the weights are and how raw input reaches them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Architecture {
    /// One linear layer on the preprocessed features (`linear.weight`, `linear.bias`).
    LogisticRegression {
        /// Preprocessing of raw records.
        preprocessor: Preprocessor,
        /// Members averaged (1: a single model).
        members: usize,
    },
    /// Embeddings, hidden layers, one logit.
    Mlp {
        /// Preprocessing of raw records.
        preprocessor: Preprocessor,
        /// Network shape.
        config: MlpConfig,
        /// Members averaged.
        members: usize,
    },
    /// Gradient-boosted trees ([`crate::gbdt`]): member `k`'s forest under `members.<k>.`
    /// (`base`, `roots`, `nodes`, `leaves`, `categories`, `numeric`), on the inputs of
    /// [`crate::mlp::InputLayout`]; members' probabilities are averaged.
    Gbdt {
        /// Preprocessing of raw records.
        preprocessor: Preprocessor,
        /// Members averaged.
        members: usize,
        /// Trees per member.
        trees: Vec<usize>,
        /// What the trees fit (absent: binary log loss, probabilities).
        #[serde(default, skip_serializing_if = "is_binary")]
        objective: crate::gbdt::Objective,
        /// Each input column's importance: the gain of its splits and how many there are,
        /// summed over the members.
        importance: BTreeMap<String, crate::gbdt::Importance>,
    },
    /// A blend of response models on the same preprocessing (part `k`'s tensors under
    /// `part.<k>.`): the weighted sum of their probabilities.
    Blend {
        /// The models and their weights (summing to 1).
        parts: Vec<BlendPart>,
    },
    /// N-BEATS forecaster ensemble.
    NBeats {
        /// Horizon, members, scaling rules.
        config: ForecastConfig,
    },
    /// k-means segmentation: the centres (tensor `centers`, `k × dim`) in the
    /// preprocessed space, and each segment's profile.
    KMeans {
        /// Preprocessing of raw records.
        preprocessor: Preprocessor,
        /// Segments.
        k: usize,
        /// One profile per segment, in segment order.
        profile: Vec<SegmentProfile>,
    },
    /// An uplift model (T-learner): one response model on the treated rows (tensors
    /// under `treated.`) and one on the control rows (`control.`), on the same
    /// preprocessing; its score is the difference of their probabilities.
    Uplift {
        /// The treated arm's model.
        treated: Box<Architecture>,
        /// The control arm's model.
        control: Box<Architecture>,
        /// The column that said who was treated (an input of neither arm).
        treatment: String,
        /// An X-learner's second stage; `None`: a T-learner.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        x_learner: Option<XStage>,
    },
}

impl Architecture {
    /// The model family's name (`logistic_regression`, `mlp`, `nbeats`).
    pub fn kind(&self) -> &'static str {
        match self {
            Architecture::LogisticRegression { .. } => "logistic_regression",
            Architecture::Mlp { .. } => "mlp",
            Architecture::Gbdt { .. } => "gbdt",
            Architecture::Blend { .. } => "blend",
            Architecture::NBeats { .. } => "nbeats",
            Architecture::Uplift { .. } => "uplift",
            Architecture::KMeans { .. } => "kmeans",
        }
    }

    /// The boosted trees' objective; `None` for every other model.
    pub fn objective(&self) -> Option<crate::gbdt::Objective> {
        match self {
            Architecture::Gbdt { objective, .. } => Some(*objective),
            _ => None,
        }
    }

    /// Whether its scores are numbers or counts (a regression) rather than probabilities,
    /// uplifts or segments.
    pub fn scores_numbers(&self) -> bool {
        self.objective().is_some_and(|o| !o.is_binary())
    }

    /// The manifest's format tag for it: [`FORMAT_NUMERIC`] when it, or a model inside it
    /// (an X-learner's effect trees), scores numbers.
    pub fn format(&self) -> &'static str {
        let inside: Vec<&Architecture> = match self {
            Architecture::Uplift {
                treated,
                control,
                x_learner,
                ..
            } => [treated, control]
                .into_iter()
                .chain(x_learner.iter().flat_map(|x| [&x.treated, &x.control]))
                .map(|a| a.as_ref())
                .collect(),
            Architecture::Blend { parts } => {
                parts.iter().map(|p| p.architecture.as_ref()).collect()
            }
            _ => Vec::new(),
        };
        if self.scores_numbers() || inside.iter().any(|a| a.format() == FORMAT_NUMERIC) {
            FORMAT_NUMERIC
        } else {
            FORMAT
        }
    }

    /// The preprocessing of a response model.
    pub fn preprocessor(&self) -> Option<&Preprocessor> {
        match self {
            Architecture::LogisticRegression { preprocessor, .. }
            | Architecture::Mlp { preprocessor, .. }
            | Architecture::Gbdt { preprocessor, .. }
            | Architecture::KMeans { preprocessor, .. } => Some(preprocessor),
            Architecture::NBeats { .. } => None,
            Architecture::Uplift { treated, .. } => treated.preprocessor(),
            Architecture::Blend { parts } => parts.first()?.architecture.preprocessor(),
        }
    }
}

/// The JSON manifest of a model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`Architecture::format`]: [`FORMAT`], or [`FORMAT_NUMERIC`].
    pub format: String,
    /// Model name.
    pub name: String,
    /// Version number.
    pub version: u64,
    /// Architecture and preprocessing.
    pub architecture: Architecture,
    /// Tensor names and shapes in the weights file.
    pub tensors: BTreeMap<String, Vec<usize>>,
    /// Metrics on the held-out data (`test_*`) and the training data (`train_*`).
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
    /// The training distributions of the input columns, the reference of drift
    /// monitoring (tabular models; absent in artifacts written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<crate::drift::Reference>,
}

/// A burn module's weights as safetensors bytes in PyTorch layout.
pub fn export_module<M: Module>(module: &M) -> Result<Vec<u8>> {
    let mut store = SafetensorsStore::from_bytes(None).with_to_adapter(BurnToPyTorchAdapter);
    module
        .save_into(&mut store)
        .map_err(|e| ModelError::Internal(format!("saving weights: {e}")))?;
    store
        .get_bytes()
        .map_err(|e| ModelError::Internal(format!("saving weights: {e}")))
}

/// A tensor's shape and its little-endian f32 bytes.
pub type RawTensor = (Vec<usize>, Vec<u8>);

/// Names, shapes and f32 data of every tensor in a safetensors file.
pub fn read_tensors(bytes: &[u8]) -> Result<BTreeMap<String, RawTensor>> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| ModelError::Artifact(format!("weights file: {e}")))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(ModelError::Artifact(format!(
                "tensor {name} is {:?}; weights must be f32",
                view.dtype()
            )));
        }
        out.insert(name, (view.shape().to_vec(), view.data().to_vec()));
    }
    Ok(out)
}

/// Several members' weights in one file, member `k`'s tensors under `members.<k>.`.
pub fn merge_members(members: &[Vec<u8>]) -> Result<Vec<u8>> {
    let prefixes: Vec<String> = (0..members.len())
        .map(|k| format!("members.{k}."))
        .collect();
    let files: Vec<(&str, &[u8])> = prefixes
        .iter()
        .zip(members)
        .map(|(p, b)| (p.as_str(), b.as_slice()))
        .collect();
    prefixed(&files)
}

/// Weights files in one, file `k`'s tensors under `prefixes[k]` (`treated.`, …).
pub fn prefixed(files: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    let mut all = Vec::new();
    for (prefix, bytes) in files {
        for (name, (shape, data)) in read_tensors(bytes)? {
            all.push((format!("{prefix}{name}"), shape, data));
        }
    }
    serialize(&all)
}

/// A k-means model's weights file: the centres as one tensor `centers`, `k × dim`.
pub fn centers_file(centers: &[f32], k: usize, dim: usize) -> Result<Vec<u8>> {
    f32_file(&[("centers".to_string(), vec![k, dim], centers.to_vec())])
}

/// A weights file of f32 tensors: `(name, shape, values)`.
pub fn f32_file(tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<Vec<u8>> {
    let all: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, shape, values)| {
            let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name.clone(), shape.clone(), data)
        })
        .collect();
    serialize(&all)
}

/// The tensors under `prefix` of a weights file, with the prefix taken off.
pub fn unprefixed(bytes: &[u8], prefix: &str) -> Result<Vec<u8>> {
    let all: Vec<(String, Vec<usize>, Vec<u8>)> = read_tensors(bytes)?
        .into_iter()
        .filter_map(|(name, (shape, data))| {
            name.strip_prefix(prefix)
                .map(|n| (n.to_string(), shape, data))
        })
        .collect();
    if all.is_empty() {
        return Err(ModelError::Artifact(format!(
            "weights file: no tensor under {prefix:?}"
        )));
    }
    serialize(&all)
}

fn serialize(all: &[(String, Vec<usize>, Vec<u8>)]) -> Result<Vec<u8>> {
    let views = all
        .iter()
        .map(|(name, shape, data)| {
            TensorView::new(Dtype::F32, shape.clone(), data)
                .map(|v| (name.clone(), v))
                .map_err(|e| ModelError::Internal(e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, None).map_err(|e| ModelError::Internal(e.to_string()))
}

/// Tensor names and shapes of a weights file, for the manifest.
pub fn tensor_shapes(bytes: &[u8]) -> Result<BTreeMap<String, Vec<usize>>> {
    Ok(read_tensors(bytes)?
        .into_iter()
        .map(|(k, (shape, _))| (k, shape))
        .collect())
}

fn is_binary(o: &crate::gbdt::Objective) -> bool {
    o.is_binary()
}
