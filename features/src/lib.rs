//! `halyard-features`: distributed feature engineering on Apache Ballista 55 / DataFusion 55.
//!
//! - [`cluster`]: the Ballista scheduler embedded in the leading Halyard scheduler and the
//!   Ballista executor embedded in every Halyard executor, following the leader.
//! - [`door`]: the key and role check before every call of the SQL scheduler's port.
//! - [`session`]: DataFusion contexts (single-process, Ballista client, Ballista nodes), all
//!   with Halyard's object stores ([`stores`]) and UDFs ([`udf`]).
//! - [`workdir`]: the SQL executors' work folders, and the sweep of those left by a
//!   process that is gone.
//! - [`stage`]: a job's feature stage: SQL over named sources, the split, Parquet shards
//!   written in parallel, statistics by SQL aggregates.
//!
//! **Invariants.** Plans carry URLs, never credentials: every node builds its S3 clients
//! from its own configuration. A feature table is whole once `features.json` is written
//! (after every shard); a rerun of the stage rewrites every shard. Every object store a
//! node hands DataFusion is confined to its data roots, and the SQL scheduler's port
//! admits only keys the cluster knows.

pub mod cluster;
pub mod door;
mod error;
pub mod sealed;
pub mod session;
pub mod stage;
pub mod stores;
pub mod udf;
pub mod workdir;

pub use error::{FeatureError, Result, describe};
