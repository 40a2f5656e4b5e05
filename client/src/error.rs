//! The one error type of `halyard-client`.

/// Result alias for `halyard-client`.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// What a call to a scheduler can meet.
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
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        ClientError::Rpc(s.message().to_string())
    }
}
