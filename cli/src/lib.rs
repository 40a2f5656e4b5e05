//! `halyard-cli`: what the `halyard` binary's client commands do, each a library function
//! over the `halyard-client` SDK — the job commands (`submit`, `jobs`, `job`, `logs`,
//! `cancel`, `resume`, `cluster`), the key commands and where the CLI finds its key, the
//! registry commands (`models`, `model`, `deploy`,
//! `promote`, `rollback`, `undeploy`, `experiment`), the SQL shell, `datagen` (the
//! synthetic marketing data set of the demo), and the benchmarks of `halyard bench` with
//! the load generator of its serving benchmark.

pub mod allreduce_bench;
pub mod bench;
pub mod commands;
pub mod console_bench;
pub mod datagen;
pub mod doctor;
mod error;
pub mod events_bench;
pub mod experiment;
pub mod features_bench;
pub mod keys;
pub mod kmeans_bench;
pub mod load;
pub mod profile;
pub mod registry;
pub mod schedules;
pub mod scoring_bench;
pub mod sql;

pub use error::{CliError, Result};
