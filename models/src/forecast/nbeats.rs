//! A global N-BEATS model (Oreshkin et al. 2020, the generic architecture): a stack of
//! fully connected blocks, each reading the residual of the input window left by the blocks
//! before it and adding its own partial forecast. One model is trained on windows sampled
//! across all series; every window is divided by the mean absolute value of its input part,
//! so series of any scale share the weights.
//!
//! Covariates known in advance (holiday or promotion flags) enter every block beside the
//! residual, over the input window and the horizon.
//!
//! An ensemble trains several members with different input windows (multiples of the
//! horizon) and seeds, and forecasts with their median.

use std::ops::ControlFlow;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::{Series, check_series};
use crate::adam::adamw;
use crate::device::{Placement, cosine_lr, finite_loss, to_vec, training_device};
use crate::error::{ModelError, Result};

/// Shape of one N-BEATS network; stored in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NBeatsConfig {
    /// Input window length.
    pub input_size: usize,
    /// Forecast horizon.
    pub horizon: usize,
    /// Covariates per time step (0: none).
    pub covariates: usize,
    /// Blocks.
    pub blocks: usize,
    /// Fully connected layers per block.
    pub layers: usize,
    /// Width of those layers.
    pub width: usize,
}

impl NBeatsConfig {
    /// Width of a block's input: the residual plus the covariates over window and horizon.
    pub fn block_input(&self) -> usize {
        self.input_size + self.covariates * (self.input_size + self.horizon)
    }
}

/// Everything a forecaster needs besides its weights; stored in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForecastConfig {
    /// Horizon the members were trained for; longer requests are refused.
    pub horizon: usize,
    /// Seasonal period (MASE's lag).
    pub period: usize,
    /// Ensemble members (tensors under `members.<k>.`).
    pub members: Vec<NBeatsConfig>,
    /// Floor forecasts at 0 (the training series were never negative).
    pub nonnegative: bool,
}

/// One block.
#[derive(Module, Debug)]
pub struct Block {
    layers: Vec<Linear>,
    backcast: Linear,
    forecast: Linear,
}

/// The network.
#[derive(Module, Debug)]
pub struct NBeats {
    blocks: Vec<Block>,
}

impl NBeats {
    /// A freshly initialised network.
    pub fn new(cfg: &NBeatsConfig, device: &Device) -> NBeats {
        let blocks = (0..cfg.blocks)
            .map(|_| {
                let mut layers = Vec::new();
                let mut width = cfg.block_input();
                for _ in 0..cfg.layers {
                    layers.push(LinearConfig::new(width, cfg.width).init(device));
                    width = cfg.width;
                }
                Block {
                    layers,
                    backcast: LinearConfig::new(width, cfg.input_size).init(device),
                    forecast: LinearConfig::new(width, cfg.horizon).init(device),
                }
            })
            .collect();
        NBeats { blocks }
    }

    /// The scaled forecast of scaled windows.
    ///
    /// # Shapes
    /// `x: [batch, input_size]`, `cov: [batch, covariates * (input_size + horizon)]`
    /// (absent without covariates) -> `[batch, horizon]`
    pub fn forward(&self, x: Tensor<2>, cov: Option<Tensor<2>>) -> Tensor<2> {
        let mut residual = x;
        let mut forecast: Option<Tensor<2>> = None;
        for block in &self.blocks {
            let mut h = match &cov {
                Some(c) => Tensor::cat(vec![residual.clone(), c.clone()], 1),
                None => residual.clone(),
            };
            for layer in &block.layers {
                h = relu(layer.forward(h));
            }
            residual = residual - block.backcast.forward(h.clone());
            let f = block.forecast.forward(h);
            forecast = Some(match forecast {
                Some(acc) => acc + f,
                None => f,
            });
        }
        forecast.expect("at least one block")
    }
}

/// One scaled window: input, covariates, the scale, and (for training) the scaled target.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Scaled input, `input_size` values.
    pub input: Vec<f32>,
    /// Covariates over window and horizon, time-major.
    pub covariates: Vec<f32>,
    /// Mean absolute value of the raw input (1 when that is 0).
    pub scale: f64,
}

/// The window of `s` ending just before `cut`. A series shorter than the window is padded
/// on the left with its first value (the documented rule); missing covariates are 0.
pub fn window(s: &Series, cfg: &NBeatsConfig, cut: usize) -> Window {
    let l = cfg.input_size;
    let first = s.values.first().copied().unwrap_or(0.0);
    let raw: Vec<f64> = (0..l)
        .map(|k| {
            let t = cut as isize - l as isize + k as isize;
            if t < 0 { first } else { s.values[t as usize] }
        })
        .collect();
    let mean_abs = raw.iter().map(|v| v.abs()).sum::<f64>() / l as f64;
    let scale = if mean_abs > 1e-12 { mean_abs } else { 1.0 };
    let mut covariates = Vec::with_capacity(cfg.covariates * (l + cfg.horizon));
    if cfg.covariates > 0 {
        for k in 0..l + cfg.horizon {
            let t = cut as isize - l as isize + k as isize;
            let row = (t >= 0).then(|| s.covariates.get(t as usize)).flatten();
            for c in 0..cfg.covariates {
                covariates.push(row.and_then(|r| r.get(c)).copied().unwrap_or(0.0) as f32);
            }
        }
    }
    Window {
        input: raw.iter().map(|v| (v / scale) as f32).collect(),
        covariates,
        scale,
    }
}

/// Training settings of a forecaster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NBeatsTrainConfig {
    /// Gradient steps per member.
    pub steps: usize,
    /// Windows per step.
    pub batch_size: usize,
    /// Peak learning rate (Adam, cosine decay).
    pub learning_rate: f64,
    /// Windows are cut within the last `history_horizons * horizon` points of each series.
    pub history_horizons: usize,
    /// Input windows of the members, as multiples of the horizon (one member each).
    pub lookbacks: Vec<usize>,
    /// Blocks per member.
    pub blocks: usize,
    /// Layers per block.
    pub layers: usize,
    /// Layer width.
    pub width: usize,
    /// Seed.
    pub seed: u64,
    /// Training device.
    pub placement: Placement,
}

impl Default for NBeatsTrainConfig {
    fn default() -> Self {
        NBeatsTrainConfig {
            steps: 1500,
            batch_size: 512,
            learning_rate: 1e-3,
            history_horizons: 10,
            lookbacks: vec![2, 3, 4],
            blocks: 6,
            layers: 3,
            width: 256,
            seed: 1,
            placement: Placement::Cpu,
        }
    }
}

/// Progress of a forecaster's training.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// Member being trained (0-based).
    pub member: usize,
    /// Members in all.
    pub members: usize,
    /// Steps done in this member.
    pub step: usize,
    /// Steps per member.
    pub steps: usize,
    /// Mean scaled absolute error over the last reporting interval.
    pub loss: f64,
}

/// Trained members, in the order of `lookbacks`.
pub struct TrainedForecaster {
    /// The configuration the runtime needs.
    pub config: ForecastConfig,
    /// The networks.
    pub members: Vec<NBeats>,
}

/// Train an N-BEATS ensemble on `series` for `horizon` steps ahead.
pub fn train_nbeats(
    series: &[Series],
    horizon: usize,
    period: usize,
    tc: &NBeatsTrainConfig,
    mut on_progress: impl FnMut(StepReport) -> ControlFlow<()>,
) -> Result<TrainedForecaster> {
    for s in series {
        check_series(s)?;
    }
    let usable: Vec<&Series> = series.iter().filter(|s| s.values.len() > horizon).collect();
    if usable.is_empty() {
        return Err(ModelError::NoRows {
            purpose: "train on (no series is longer than the horizon)",
            rows: series.len(),
        });
    }
    let covariates = usable[0].covariates.first().map_or(0, Vec::len);
    let nonnegative = series.iter().all(|s| s.values.iter().all(|v| *v >= 0.0));
    let mut members = Vec::new();
    let mut configs = Vec::new();
    let count = tc.lookbacks.len();
    for (m, &lookback) in tc.lookbacks.iter().enumerate() {
        let cfg = NBeatsConfig {
            input_size: lookback.max(1) * horizon,
            horizon,
            covariates,
            blocks: tc.blocks,
            layers: tc.layers,
            width: tc.width,
        };
        let seed = tc.seed.wrapping_add(m as u64 * 1_000_003);
        let device = training_device(tc.placement, seed)?;
        let mut model = NBeats::new(&cfg, &device);
        let mut optim = adamw(0.0, tc.placement);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut loss_sum = 0.0;
        let mut loss_n = 0usize;
        let report_every = (tc.steps / 20).max(1);
        for step in 0..tc.steps {
            let (x, cov, y) = sample_batch(&usable, &cfg, tc, &mut rng, &device);
            let loss = (model.forward(x, cov) - y).abs().mean();
            loss_sum += finite_loss(&loss, format_args!("step {}", step + 1))?;
            loss_n += 1;
            let lr = cosine_lr(tc.learning_rate, step, tc.steps, tc.steps / 50, 0.02);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(lr, model, grads);
            if (step + 1) % report_every == 0 || step + 1 == tc.steps {
                let r = StepReport {
                    member: m,
                    members: count,
                    step: step + 1,
                    steps: tc.steps,
                    loss: loss_sum / loss_n as f64,
                };
                loss_sum = 0.0;
                loss_n = 0;
                if on_progress(r).is_break() {
                    return Err(ModelError::Cancelled);
                }
            }
        }
        members.push(model.valid());
        configs.push(cfg);
    }
    Ok(TrainedForecaster {
        config: ForecastConfig {
            horizon,
            period,
            members: configs,
            nonnegative,
        },
        members,
    })
}

type Batch = (Tensor<2>, Option<Tensor<2>>, Tensor<2>);

fn sample_batch(
    series: &[&Series],
    cfg: &NBeatsConfig,
    tc: &NBeatsTrainConfig,
    rng: &mut StdRng,
    device: &Device,
) -> Batch {
    let h = cfg.horizon;
    let b = tc.batch_size;
    let mut xs = Vec::with_capacity(b * cfg.input_size);
    let mut cs = Vec::with_capacity(b * cfg.covariates * (cfg.input_size + h));
    let mut ys = Vec::with_capacity(b * h);
    for _ in 0..b {
        let s = series[rng.random_range(0..series.len())];
        let n = s.values.len();
        // The target must be observed: cut + h <= n; cuts reach back history_horizons * h.
        let latest = n - h;
        let earliest = latest.saturating_sub(tc.history_horizons * h).max(1);
        let cut = rng.random_range(earliest..=latest);
        let w = window(s, cfg, cut);
        xs.extend_from_slice(&w.input);
        cs.extend_from_slice(&w.covariates);
        ys.extend(s.values[cut..cut + h].iter().map(|v| (v / w.scale) as f32));
    }
    let cov = (cfg.covariates > 0).then(|| {
        Tensor::from_data(
            TensorData::new(cs, [b, cfg.covariates * (cfg.input_size + h)]),
            device,
        )
    });
    (
        Tensor::from_data(TensorData::new(xs, [b, cfg.input_size]), device),
        cov,
        Tensor::from_data(TensorData::new(ys, [b, h]), device),
    )
}

/// The input windows at the end of each series' history, as one batch: inputs
/// (`series × input_size`), covariates (`series × covariates × (input_size + horizon)`) and
/// each window's scale. Training and serving build forecasts from the same windows.
pub fn history_windows(series: &[Series], cfg: &NBeatsConfig) -> (Vec<f32>, Vec<f32>, Vec<f64>) {
    let mut xs = Vec::with_capacity(series.len() * cfg.input_size);
    let mut cs = Vec::new();
    let mut scales = Vec::with_capacity(series.len());
    for s in series {
        let w = window(s, cfg, s.values.len());
        xs.extend(w.input);
        cs.extend(w.covariates);
        scales.push(w.scale);
    }
    (xs, cs, scales)
}

/// Scaled network outputs (`series × horizon`, row-major) back in the series' units.
pub fn unscale(out: &[f32], horizon: usize, scales: &[f64]) -> Vec<Vec<f64>> {
    out.chunks(horizon)
        .zip(scales)
        .map(|(f, s)| f.iter().map(|v| f64::from(*v) * s).collect())
        .collect()
}

/// Forecast with one trained member in burn (the runtime serves with candle; this is the
/// reference the parity tests hold it to).
pub fn forecast_member(
    model: &NBeats,
    cfg: &NBeatsConfig,
    series: &[Series],
    device: &Device,
) -> Result<Vec<Vec<f64>>> {
    let b = series.len();
    let (xs, cs, scales) = history_windows(series, cfg);
    let x = Tensor::from_data(TensorData::new(xs, [b, cfg.input_size]), device);
    let cov = (cfg.covariates > 0).then(|| {
        Tensor::from_data(
            TensorData::new(cs, [b, cfg.covariates * (cfg.input_size + cfg.horizon)]),
            device,
        )
    });
    Ok(unscale(
        &to_vec(model.forward(x, cov))?,
        cfg.horizon,
        &scales,
    ))
}
