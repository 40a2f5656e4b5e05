//! The one error type of `halyard-cli`.

use halyard_client::ClientError;

/// Result alias for `halyard-cli`.
pub type Result<T, E = CliError> = std::result::Result<T, E>;

/// What a client command can meet.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The scheduler could not be reached, or refused or failed a request.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A local problem: spec file, data reading.
    #[error(transparent)]
    Core(#[from] halyard_core::Error),
    /// Reading or writing a local file failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A SQL query failed, or the SQL cluster could not be reached.
    #[error(transparent)]
    Sql(#[from] halyard_features::FeatureError),
    /// The command could not do what was asked; the message says what and why.
    #[error("{0}")]
    Failed(String),
    /// The job ended without success.
    #[error("job {id} {state}{}", if .error.is_empty() { String::new() } else { format!(": {}", .error) })]
    JobFailed {
        /// The job.
        id: String,
        /// Its final state.
        state: String,
        /// Its error.
        error: String,
    },
}

impl From<tonic::Status> for CliError {
    fn from(s: tonic::Status) -> Self {
        CliError::Client(s.into())
    }
}
