//! The one error type of `halyard-scheduler`, and its errors as gRPC statuses.

use halyard_core::Failure;

/// Result alias for `halyard-scheduler`.
pub type Result<T, E = SchedulerError> = std::result::Result<T, E>;

/// What can stop a scheduler from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// Coordination or storage failed.
    #[error(transparent)]
    Core(#[from] halyard_core::Error),
}

/// The wire status of a core error, by its [`Failure`]: a caller's or passing failure
/// says what was wrong; an internal one goes to the log and the caller is pointed there.
pub(crate) fn to_status(e: halyard_core::Error) -> tonic::Status {
    match e.failure() {
        Failure::Internal => {
            tracing::error!(error = %e, "internal error");
            Failure::Internal.status("internal error; see the scheduler's log")
        }
        failure => failure.status(e.to_string()),
    }
}
