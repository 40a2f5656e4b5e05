//! Logistic regression for response prediction, trained with burn on the CPU
//! (`Device::flex()` with autodiff).

use std::ops::ControlFlow;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams, SgdConfig};
use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::device::{Placement, finite_loss, training_device, weighted_bce};
use crate::error::{ModelError, Result};
use crate::preprocess::Encoded;

/// Optimizers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    /// Adam (the MLP always uses AdamW with `weight_decay`).
    Adam,
    /// Plain SGD.
    Sgd,
}

/// Training settings shared by the response models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Passes over the data (the most, with early stopping).
    pub epochs: u32,
    /// Rows per step.
    pub batch_size: usize,
    /// Step size (the peak of the MLP's cosine schedule).
    pub learning_rate: f64,
    /// Optimizer of the logistic regression.
    pub optimizer: Optimizer,
    /// L2 penalty on the logistic regression's weights (not the bias).
    pub l2: f64,
    /// Decoupled weight decay of the MLP's AdamW.
    pub weight_decay: f64,
    /// MLP: stop after this many epochs without a better validation loss (0: never).
    pub patience: u32,
    /// Loss weight of a positive row (1: unweighted; `negatives / positives` balances).
    pub positive_weight: f64,
    /// Seed for initialisation and shuffling.
    pub seed: u64,
    /// Training device.
    pub placement: Placement,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 10,
            batch_size: 256,
            learning_rate: 0.01,
            optimizer: Optimizer::Adam,
            l2: 1e-4,
            weight_decay: 1e-4,
            patience: 3,
            positive_weight: 1.0,
            seed: 42,
            placement: Placement::Cpu,
        }
    }
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
    /// Log loss on the validation rows, when there are some.
    pub valid_loss: Option<f64>,
}

/// Train on `data`. `on_epoch` is called after each epoch; `ControlFlow::Break` stops
/// training with [`ModelError::Cancelled`].
pub fn train(
    data: &Encoded,
    cfg: &TrainConfig,
    mut on_epoch: impl FnMut(EpochReport) -> ControlFlow<()>,
) -> Result<LogisticRegression> {
    if data.rows == 0 {
        return Err(ModelError::NoRows {
            purpose: "train on",
            rows: 0,
        });
    }
    let device = training_device(cfg.placement, cfg.seed)?;
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
            let xb: Vec<f32> = chunk.iter().flat_map(|&i| data.row(i)).copied().collect();
            let x = Tensor::<2>::from_data(TensorData::new(xb, [b, data.dim]), &device);
            let mut loss = weighted_bce(
                model.forward(x),
                data.labels(chunk),
                cfg.positive_weight,
                &device,
            );
            if cfg.l2 > 0.0 {
                let w = model.linear.weight.val();
                loss = loss + w.square().sum().mul_scalar(cfg.l2 / 2.0);
            }
            loss_sum += finite_loss(&loss, format_args!("epoch {epoch}"))? * b as f64;
            seen += b;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(cfg.learning_rate, model, grads);
        }
        let report = EpochReport {
            epoch,
            epochs: cfg.epochs,
            loss: loss_sum / seen as f64,
            valid_loss: None,
        };
        if on_epoch(report).is_break() {
            return Err(ModelError::Cancelled);
        }
    }
    Ok(model.valid())
}
