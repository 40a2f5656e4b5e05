//! Choosing the training device and the pieces every burn training loop shares.

use burn::tensor::activation::{relu, softplus};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// Where training runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// burn's flex backend on the CPU.
    #[default]
    Cpu,
    /// burn's Vulkan backend on the first GPU (needs the `gpu` cargo feature).
    Gpu,
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Placement::Cpu => "CPU",
            Placement::Gpu => "GPU",
        })
    }
}

/// Whether this build can train on a GPU (the `gpu` cargo feature, burn's Vulkan backend).
pub const GPU_BUILD: bool = cfg!(feature = "gpu");

/// The autodiff device for `placement`, seeded.
pub fn training_device(placement: Placement, seed: u64) -> Result<Device> {
    let device = match placement {
        Placement::Cpu => Device::flex().autodiff(),
        Placement::Gpu => gpu_device()?,
    };
    device.seed(seed);
    Ok(device)
}

#[cfg(feature = "gpu")]
fn gpu_device() -> Result<Device> {
    // The Vulkan runtime panics when no adapter comes up; turn that into an error.
    std::panic::catch_unwind(|| {
        let d = Device::vulkan(burn::tensor::DeviceKind::DefaultDevice).autodiff();
        // Touch the device so that a missing driver shows here, not mid-training.
        let _ = Tensor::<1>::zeros([1], &d).into_data();
        d
    })
    .map_err(|_| {
        ModelError::Unsupported(
            "no Vulkan GPU could be opened on this node (is the NVIDIA Vulkan ICD installed? see docs/gpu.md)"
                .into(),
        )
    })
}

#[cfg(not(feature = "gpu"))]
fn gpu_device() -> Result<Device> {
    Err(ModelError::Unsupported(
        "this build has no GPU support: build halyard with `--features gpu` (burn's Vulkan backend) or set [train] device = \"cpu\""
            .into(),
    ))
}

/// Binary cross-entropy on logits in its stable form, per row:
/// `max(z, 0) - z*y + log(1 + exp(-|z|))`.
///
/// # Shapes
/// `z, y: [batch, 1]` -> `[batch, 1]`
pub fn bce_with_logits(z: Tensor<2>, y: Tensor<2>) -> Tensor<2> {
    relu(z.clone()) - z.clone() * y + softplus(z.abs().neg(), 1.0)
}

/// Mean binary cross-entropy of a batch's logits against its labels (0 or 1), a positive
/// row weighing `positive_weight` and a negative one 1.
///
/// # Shapes
/// `z: [batch, 1]`, `labels: batch` -> `[1]`
pub fn weighted_bce(
    z: Tensor<2>,
    labels: Vec<f32>,
    positive_weight: f64,
    device: &Device,
) -> Tensor<1> {
    let b = labels.len();
    let w: Vec<f32> = labels
        .iter()
        .map(|&v| if v > 0.5 { positive_weight as f32 } else { 1.0 })
        .collect();
    let y = Tensor::<2>::from_data(TensorData::new(labels, [b, 1]), device);
    let w = Tensor::<2>::from_data(TensorData::new(w, [b, 1]), device);
    (bce_with_logits(z, y) * w).mean()
}

/// Cosine learning-rate decay from `base` to `base * floor` over `total` steps, after a
/// linear warm-up of `warmup` steps.
pub fn cosine_lr(base: f64, step: usize, total: usize, warmup: usize, floor: f64) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let t = ((step - warmup) as f64 / span).min(1.0);
    base * (floor + (1.0 - floor) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()))
}

/// A loss value as f64, or an error when training diverged; `at` says where
/// (`epoch 3`, `step 1200`).
pub fn finite_loss(loss: &Tensor<1>, at: impl std::fmt::Display) -> Result<f64> {
    let v: f32 = loss.clone().into_scalar();
    if v.is_finite() {
        Ok(f64::from(v))
    } else {
        Err(ModelError::Diverged { at: at.to_string() })
    }
}

/// Float values of a tensor.
pub fn to_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data()
        .try_to_vec::<f32>()
        .map_err(|e| ModelError::Internal(format!("{e:?}")))
}
