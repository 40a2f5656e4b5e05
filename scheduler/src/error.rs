//! The one error type of `halyard-scheduler`.

/// Result alias for `halyard-scheduler`.
pub type Result<T, E = SchedulerError> = std::result::Result<T, E>;

/// What can stop a scheduler from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// Coordination or storage failed.
    #[error(transparent)]
    Core(#[from] halyard_core::Error),
}

/// The wire codes a client can act on; internals stay in the log.
pub(crate) fn to_status(e: halyard_core::Error) -> tonic::Status {
    use halyard_core::Error as E;
    match &e {
        E::Invalid { .. } | E::Toml { .. } => tonic::Status::invalid_argument(e.to_string()),
        E::NoSuchJob(_) => tonic::Status::not_found(e.to_string()),
        E::Coordinator(_) | E::Fenced | E::Conflict { .. } | E::LeaseLost(_) => {
            tonic::Status::unavailable(e.to_string())
        }
        _ => {
            tracing::error!(error = %e, "internal error");
            tonic::Status::internal("internal error; see the scheduler's log")
        }
    }
}
