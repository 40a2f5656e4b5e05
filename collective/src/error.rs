//! The crate's error type.

use std::time::Duration;

/// Result with [`CollectiveError`].
pub type Result<T, E = CollectiveError> = std::result::Result<T, E>;

/// Why a collective operation failed. Any of them fails the group: the scheduler forms it
/// again and training resumes from the last checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CollectiveError {
    /// The group cannot be formed as given.
    #[error("cannot form the ring: {0}")]
    Setup(String),
    /// A neighbour refused, dropped or ended the stream early (it failed or left).
    #[error("rank {rank} failed: {message}")]
    Peer {
        /// Its rank.
        rank: usize,
        /// What happened.
        message: String,
    },
    /// A peer did not answer in time.
    #[error(
        "rank {rank} sent nothing for {waited:?} in operation {op}: it is dead, stopped or unreachable"
    )]
    Deadline {
        /// The rank waited for.
        rank: usize,
        /// Operation number.
        op: u64,
        /// How long.
        waited: Duration,
    },
    /// An earlier operation failed and left the ring unusable.
    #[error("the ring broke in {0}")]
    Broken(String),
    /// A peer sent something out of order: the ranks' calls differ.
    #[error("ranks out of step: {0}")]
    Protocol(String),
}
