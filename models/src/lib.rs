//! `halyard-models`: turns Arrow record batches and configs into trained models, metrics and
//! artifact bytes. **It knows nothing of gRPC, etcd, Ballista or object storage**: everything
//! ML is testable here in isolation.
//!
//! - [`features`]: preprocessing (standardisation, one-hot or hashed categoricals).
//! - [`logistic`]: logistic regression trained with burn (`Device::flex()`).
//! - [`metrics`]: AUC, log loss, accuracy.
//! - [`artifact`]: safetensors weights plus a JSON manifest, and scoring from them.

pub mod artifact;
pub mod error;
pub mod features;
pub mod logistic;
pub mod metrics;
pub mod pipeline;

pub use error::{ModelError, Result};
