//! Logistic regression for response prediction, trained with burn on the CPU
//! (`Device::flex()` with autodiff).

use std::ops::ControlFlow;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams, SgdConfig};
use burn::tensor::activation::{relu, softplus};
use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::features::Encoded;

/// Optimizers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    /// Adam.
    Adam,
    /// Plain SGD.
    Sgd,
}

/// Training settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Passes over the data.
    pub epochs: u32,
    /// Rows per step.
    pub batch_size: usize,
    /// Step size.
    pub learning_rate: f64,
    /// Optimizer.
    pub optimizer: Optimizer,
    /// L2 penalty on the weights (not the bias).
    pub l2: f64,
    /// Seed for initialisation and shuffling.
    pub seed: u64,
}

/// The model: one linear layer whose output is the log-odds of a response.
#[derive(Module, Debug)]
pub struct LogisticRegression {
    linear: Linear,
}

impl LogisticRegression {
    /// A model for `dim` inputs on `device`.
    pub fn new(dim: usize, device: &Device) -> Self {
        LogisticRegression {
            linear: LinearConfig::new(dim, 1).init(device),
        }
    }

    /// Log-odds of each row.
    ///
    /// # Shapes
    /// `x: [batch, dim]` -> `[batch, 1]`
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.linear.forward(x)
    }

    /// The weights as plain numbers.
    pub fn to_scorer(&self) -> Result<LinearScorer> {
        let weight = self
            .linear
            .weight
            .val()
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| ModelError::Internal(format!("{e:?}")))?;
        let bias = match &self.linear.bias {
            Some(b) => b
                .val()
                .into_data()
                .try_to_vec::<f32>()
                .map_err(|e| ModelError::Internal(format!("{e:?}")))?[0],
            None => 0.0,
        };
        Ok(LinearScorer { weight, bias })
    }
}

/// A trained linear model in plain numbers: what serving needs, with no tensor library.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearScorer {
    /// One weight per feature.
    pub weight: Vec<f32>,
    /// Intercept.
    pub bias: f32,
}

impl LinearScorer {
    /// Probability of a response for each row.
    pub fn predict(&self, data: &Encoded) -> Vec<f32> {
        (0..data.rows)
            .map(|i| {
                let z: f32 = data
                    .row(i)
                    .iter()
                    .zip(&self.weight)
                    .map(|(a, b)| a * b)
                    .sum::<f32>()
                    + self.bias;
                sigmoid(z)
            })
            .collect()
    }
}

/// The logistic function, stable for large |z|.
pub fn sigmoid(z: f32) -> f32 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// Progress of one epoch, given to the caller's callback.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochReport {
    /// 1-based epoch.
    pub epoch: u32,
    /// Epochs planned.
    pub epochs: u32,
    /// Mean training loss over the epoch (with the L2 term).
    pub loss: f64,
}

/// Train on `data`. `on_epoch` is called after each epoch; `ControlFlow::Break` stops
/// training with [`ModelError::Cancelled`].
pub fn train(
    data: &Encoded,
    cfg: &TrainConfig,
    mut on_epoch: impl FnMut(EpochReport) -> ControlFlow<()>,
) -> Result<LinearScorer> {
    if data.rows == 0 {
        return Err(ModelError::NoRows {
            purpose: "train on",
            rows: 0,
        });
    }
    let device = Device::flex().autodiff();
    device.seed(cfg.seed);
    let mut model = LogisticRegression::new(data.dim, &device);
    let mut optim = match cfg.optimizer {
        Optimizer::Adam => AdamConfig::new().init(),
        Optimizer::Sgd => SgdConfig::new().init(),
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let mut order: Vec<usize> = (0..data.rows).collect();
    let batch_size = cfg.batch_size.min(data.rows).max(1);
    for epoch in 1..=cfg.epochs {
        order.shuffle(&mut rng);
        let mut loss_sum = 0.0f64;
        let mut seen = 0usize;
        for chunk in order.chunks(batch_size) {
            let b = chunk.len();
            let mut xb = Vec::with_capacity(b * data.dim);
            let mut yb = Vec::with_capacity(b);
            for &i in chunk {
                xb.extend_from_slice(data.row(i));
                yb.push(data.y[i]);
            }
            let x = Tensor::<2>::from_data(TensorData::new(xb, [b, data.dim]), &device);
            let y = Tensor::<2>::from_data(TensorData::new(yb, [b, 1]), &device);
            let z = model.forward(x);
            // Binary cross-entropy on logits, in its stable form:
            // max(z, 0) - z*y + log(1 + exp(-|z|)).
            let bce = relu(z.clone()) - z.clone() * y + softplus(z.abs().neg(), 1.0);
            let mut loss = bce.mean();
            if cfg.l2 > 0.0 {
                let w = model.linear.weight.val();
                loss = loss + w.square().sum().mul_scalar(cfg.l2 / 2.0);
            }
            let value: f32 = loss.clone().into_scalar();
            if !value.is_finite() {
                return Err(ModelError::Diverged { epoch });
            }
            loss_sum += f64::from(value) * b as f64;
            seen += b;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(cfg.learning_rate, model, grads);
        }
        let report = EpochReport {
            epoch,
            epochs: cfg.epochs,
            loss: loss_sum / seen as f64,
        };
        if on_epoch(report).is_break() {
            return Err(ModelError::Cancelled);
        }
    }
    model.to_scorer()
}
