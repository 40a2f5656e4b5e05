//! The one error type of `halyard-client`.

/// Result alias for `halyard-client`.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// What a client command can meet.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The scheduler could not be reached.
    #[error(
        "cannot reach the scheduler at {addr}: {message}; is `halyard standalone` or `halyard scheduler` running there? (set --scheduler or HALYARD_SCHEDULER)"
    )]
    Connect {
        /// The address.
        addr: String,
        /// The transport's message.
        message: String,
    },
    /// The scheduler refused or failed a request.
    #[error("{0}")]
    Rpc(String),
    /// A local problem: spec file, data generation.
    #[error(transparent)]
    Core(#[from] halyard_core::Error),
    /// Writing output failed.
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

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        ClientError::Rpc(s.message().to_string())
    }
}
