//! `halyard-serving`: the prediction endpoint. Executors run a [`host::Host`] that loads
//! the deployed model versions with the candle runtime and scores through micro-batching
//! threads ([`batcher`]); every node (schedulers too) runs a [`gateway::Gateway`] that
//! answers for any deployed model over HTTP/JSON ([`http`]) and gRPC ([`grpc`]) on the
//! node's one port, serving locally or forwarding to an executor that holds the model.
//! [`experiment`] analyses the outcomes fed back per version; [`drift`] compares the
//! inputs served with the training data.
//!
//! **Invariants.** A request is answered by a whole, loaded version and the answer names
//! it. Bad requests get a 4xx that says what to fix ([`api::ApiError`]); only a broken
//! artifact or a bug gives a 5xx other than 503 (retry: nothing loaded or reachable).

pub mod access;
pub mod api;
pub mod batcher;
pub mod drift;
pub mod experiment;
pub mod gateway;
pub mod grpc;
pub mod host;
pub mod http;
pub mod oip;
pub mod sticky;
pub mod tls;

pub use api::ApiError;
pub use batcher::BatchConfig;
pub use gateway::Gateway;
pub use host::Host;
