//! `halyard-core`: what every role shares. The wire protocol, the job spec, the role
//! configs, the coordinator (etcd or embedded) and the object-store layout.
//!
//! Only this crate knows the coordinator's key layout ([`coord`]) and the object-store
//! path layout ([`store`]).

pub mod auth;
pub mod certs;
pub mod config;
pub mod confine;
pub mod coord;
pub mod csv;
pub mod data;
pub mod disk;
pub mod error;
pub mod events;
pub mod failure;
pub mod frame;
pub mod gc;
pub mod journal;
pub mod kv;
pub mod metrics;
pub mod placement;
pub mod profile;
pub mod records;
pub mod registry;
pub mod schedule;
pub mod seal;
pub mod search;
pub mod spec;
pub mod store;
pub mod tls;

pub use error::{Error, Result};
pub use failure::Failure;

/// Bind a server's listen address (`HOST:PORT`; port 0 picks a free one), returning the
/// listener and the address it got.
pub async fn bind(addr: &str) -> Result<(tokio::net::TcpListener, std::net::SocketAddr)> {
    let err = |source| Error::Bind {
        addr: addr.to_string(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(err)?;
    let local = listener.local_addr().map_err(err)?;
    Ok((listener, local))
}

/// The gRPC protocol (`proto/halyard.proto`).
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("halyard.v1");
}

/// Version of the wire protocol; a scheduler refuses clients of another version.
pub const PROTOCOL_VERSION: u32 = 1;

/// Halyard's version, recorded in executors' registrations and model manifests.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
