//! `halyard-models`: turns Arrow record batches and series into trained models, metrics and
//! artifact bytes, and serves them. **It knows nothing of gRPC, etcd, Ballista or object
//! storage**: everything ML is testable here in isolation.
//!
//! - [`features`]: preprocessing (standardisation, one-hot or hashed categoricals).
//! - [`logistic`], [`mlp`]: response models trained with burn.
//! - [`forecast`]: M4 classical methods, N-BEATS, sMAPE / MASE / OWA.
//! - [`metrics`]: AUC, log loss, calibration, lift.
//! - [`evaluation`]: the held-out curves a version's report draws (ROC, precision–recall,
//!   calibration, gains, Qini, forecasts against actuals).
//! - [`artifact`]: safetensors weights in PyTorch layout plus a JSON manifest.
//! - [`runtime`]: serving with candle-core (no burn in that path).
//! - [`adam`]: AdamW fused into one pass over each parameter (the CPU training loops').
//! - [`device`]: CPU (flex) or GPU (Vulkan, cargo feature `gpu`) training devices.
//! - [`pipeline`]: the whole recipes.
//! - [`distributed`]: data-parallel MLP training over a [`distributed::Collective`].
//! - [`records`]: JSON scoring records encoded by an artifact's preprocessor.

pub mod adam;
pub mod artifact;
pub mod bandit;
pub mod dense;
pub mod device;
pub mod distributed;
pub mod drift;
pub mod error;
pub mod evaluation;
pub mod experiment;
pub mod forecast;
pub mod gbdt;
pub mod json_records;
pub mod kmeans;
pub mod logistic;
pub mod metrics;
pub mod mlp;
pub mod pipeline;
pub mod preprocess;
pub mod runtime;
pub mod stats;
pub mod uplift;

pub use error::{ModelError, Result};
