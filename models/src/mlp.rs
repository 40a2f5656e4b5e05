//! A multilayer perceptron for response prediction: a learned embedding for every
//! categorical column, standardised numerics, ReLU hidden layers and one logit out.
//!
//! Training: AdamW (decoupled weight decay) with cosine learning-rate decay, optional
//! positive-class weighting, and early stopping on a validation slice of the training rows
//! (the best epoch's weights are kept).

use std::ops::ControlFlow;

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::adam::adamw;
use crate::device::{cosine_lr, finite_loss, to_vec, training_device, weighted_bce};
use crate::error::{ModelError, Result};
use crate::logistic::{EpochReport, TrainConfig};
use crate::metrics::log_loss;
use crate::preprocess::{ColumnEncoding, Encoded, Preprocessor};

/// Where each model input sits in the preprocessor's dense feature vector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputLayout {
    /// Offsets of the standardised numeric columns.
    pub numeric: Vec<usize>,
    /// `(offset, width)` of each categorical column's one-hot or hashed block; the
    /// embedding index is the set slot.
    pub categorical: Vec<(usize, usize)>,
}

impl InputLayout {
    /// The layout of `pre`'s feature vector.
    pub fn of(pre: &Preprocessor) -> InputLayout {
        let mut layout = InputLayout {
            numeric: Vec::new(),
            categorical: Vec::new(),
        };
        for c in &pre.columns {
            match c.encoding {
                ColumnEncoding::Numeric { .. } => layout.numeric.push(c.offset),
                _ => layout.categorical.push((c.offset, c.width)),
            }
        }
        layout
    }

    /// Numeric values (`rows * numeric.len()`) and embedding indices
    /// (`rows * categorical.len()`) of the given rows of `data`.
    pub fn split(&self, data: &Encoded, rows: &[usize]) -> (Vec<f32>, Vec<i64>) {
        let mut num = Vec::with_capacity(rows.len() * self.numeric.len());
        let mut cat = Vec::with_capacity(rows.len() * self.categorical.len());
        for &i in rows {
            let row = data.row(i);
            num.extend(self.numeric.iter().map(|&o| row[o]));
            cat.extend(
                self.categorical
                    .iter()
                    .map(|&block| category_of(row, block) as i64),
            );
        }
        (num, cat)
    }
}

/// The category of a row in a categorical block `(offset, width)`: the set slot, or the
/// last (`other`) when none is set (a missing date part).
pub fn category_of(row: &[f32], (offset, width): (usize, usize)) -> usize {
    row[offset..offset + width]
        .iter()
        .position(|&v| v > 0.5)
        .unwrap_or(width - 1)
}

/// The MLP's shape; stored in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MlpConfig {
    /// Input layout.
    pub layout: InputLayout,
    /// Embedding width of each categorical column.
    pub embedding_dims: Vec<usize>,
    /// Hidden layer widths.
    pub hidden: Vec<usize>,
}

impl MlpConfig {
    /// Embedding widths by the usual rule of thumb, `min(max_dim, round(1.6 · n^0.56))`.
    pub fn new(layout: InputLayout, hidden: Vec<usize>, max_dim: usize) -> MlpConfig {
        let embedding_dims = layout
            .categorical
            .iter()
            .map(|&(_, n)| ((1.6 * (n as f64).powf(0.56)).round() as usize).clamp(1, max_dim))
            .collect();
        MlpConfig {
            layout,
            embedding_dims,
            hidden,
        }
    }

    /// Width of the first layer's input.
    pub fn input_width(&self) -> usize {
        self.layout.numeric.len() + self.embedding_dims.iter().sum::<usize>()
    }
}

/// The network.
#[derive(Module, Debug)]
pub struct ResponseMlp {
    embeddings: Vec<Embedding>,
    hidden: Vec<Linear>,
    output: Linear,
}

impl ResponseMlp {
    /// A freshly initialised network.
    pub fn new(cfg: &MlpConfig, device: &Device) -> ResponseMlp {
        let embeddings = cfg
            .layout
            .categorical
            .iter()
            .zip(&cfg.embedding_dims)
            .map(|(&(_, n), &d)| EmbeddingConfig::new(n, d).init(device))
            .collect();
        let mut hidden = Vec::new();
        let mut width = cfg.input_width();
        for &h in &cfg.hidden {
            hidden.push(LinearConfig::new(width, h).init(device));
            width = h;
        }
        ResponseMlp {
            embeddings,
            hidden,
            output: LinearConfig::new(width, 1).init(device),
        }
    }

    /// Log-odds of each row.
    ///
    /// # Shapes
    /// `num: [batch, numeric]`, `cat: [batch, categorical]` -> `[batch, 1]`
    pub fn forward(&self, num: Tensor<2>, cat: Tensor<2, Int>) -> Tensor<2> {
        let [b, _] = num.dims();
        let mut parts = vec![num];
        for (c, emb) in self.embeddings.iter().enumerate() {
            let idx = cat.clone().narrow(1, c, 1);
            let e = emb.forward(idx);
            let [_, _, d] = e.dims();
            parts.push(e.reshape([b, d]));
        }
        let mut x = Tensor::cat(parts, 1);
        for layer in &self.hidden {
            x = relu(layer.forward(x));
        }
        self.output.forward(x)
    }

    /// Response probabilities of the rows of `data`, in batches.
    pub fn predict(
        &self,
        layout: &InputLayout,
        data: &Encoded,
        device: &Device,
    ) -> Result<Vec<f32>> {
        let rows: Vec<usize> = (0..data.rows).collect();
        let mut out = Vec::with_capacity(data.rows);
        for chunk in rows.chunks(4096) {
            let (num, cat) = mlp_tensors(layout, data, chunk, device);
            out.extend(to_vec(sigmoid(self.forward(num, cat)))?);
        }
        Ok(out)
    }
}

/// The numeric and categorical input tensors of `rows` of `data`.
pub fn mlp_tensors(
    layout: &InputLayout,
    data: &Encoded,
    rows: &[usize],
    device: &Device,
) -> (Tensor<2>, Tensor<2, Int>) {
    let (num, cat) = layout.split(data, rows);
    let b = rows.len();
    (
        Tensor::from_data(TensorData::new(num, [b, layout.numeric.len()]), device),
        Tensor::from_data(TensorData::new(cat, [b, layout.categorical.len()]), device),
    )
}

/// Train an MLP on `train`, stopping early on `valid` (when it has rows).
pub fn train_mlp(
    train: &Encoded,
    valid: &Encoded,
    cfg: &MlpConfig,
    tc: &TrainConfig,
    mut on_epoch: impl FnMut(EpochReport) -> ControlFlow<()>,
) -> Result<ResponseMlp> {
    if train.rows == 0 {
        return Err(ModelError::NoRows {
            purpose: "train on",
            rows: 0,
        });
    }
    let device = training_device(tc.placement, tc.seed)?;
    let mut model = ResponseMlp::new(cfg, &device);
    let mut optim = adamw(tc.weight_decay as f32, tc.placement);
    let mut rng = rand::rngs::StdRng::seed_from_u64(tc.seed);
    let mut order: Vec<usize> = (0..train.rows).collect();
    let batch_size = tc.batch_size.min(train.rows).max(1);
    let steps_per_epoch = train.rows.div_ceil(batch_size);
    let total = steps_per_epoch * tc.epochs as usize;
    let warmup = (total / 50).max(1);
    let mut best: Option<(f64, ResponseMlp)> = None;
    let mut since_best = 0;
    let mut step = 0;
    for epoch in 1..=tc.epochs {
        order.shuffle(&mut rng);
        let mut loss_sum = 0.0f64;
        for chunk in order.chunks(batch_size) {
            let (num, cat) = mlp_tensors(&cfg.layout, train, chunk, &device);
            let loss = weighted_bce(
                model.forward(num, cat),
                train.labels(chunk),
                tc.positive_weight,
                &device,
            );
            loss_sum += finite_loss(&loss, format_args!("epoch {epoch}"))? * chunk.len() as f64;
            let lr = cosine_lr(tc.learning_rate, step, total, warmup, 0.05);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(lr, model, grads);
            step += 1;
        }
        let mut report = EpochReport {
            epoch,
            epochs: tc.epochs,
            loss: loss_sum / train.rows as f64,
            valid_loss: None,
        };
        if valid.rows > 0 {
            let inner = model.valid();
            let p = inner.predict(&cfg.layout, valid, &inner.devices()[0])?;
            let vl = log_loss(&p, &valid.y);
            report.valid_loss = Some(vl);
            if best.as_ref().is_none_or(|(b, _)| vl < *b) {
                best = Some((vl, model.clone()));
                since_best = 0;
            } else {
                since_best += 1;
            }
        }
        if on_epoch(report).is_break() {
            return Err(ModelError::Cancelled);
        }
        if tc.patience > 0 && since_best >= tc.patience {
            break;
        }
    }
    let model = best.map(|(_, m)| m).unwrap_or(model);
    Ok(model.valid())
}
