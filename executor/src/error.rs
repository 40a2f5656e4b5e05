//! The one error type of `halyard-executor`.

/// Result alias for `halyard-executor`.
pub type Result<T, E = ExecutorError> = std::result::Result<T, E>;

/// What can stop an executor from starting, or fail a task.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// Coordination, storage or data reading failed.
    #[error(transparent)]
    Core(#[from] halyard_core::Error),
    /// Training failed.
    #[error(transparent)]
    Model(#[from] halyard_models::ModelError),
    /// The feature stage failed (SQL, sources, output).
    #[error(transparent)]
    Features(#[from] halyard_features::FeatureError),
    /// The SQL data service could not start.
    #[error("sql executor: {0}")]
    Sql(String),
    /// The job asks for what its input or this host cannot give (a scoring table without
    /// the model's columns, scoring outside a cluster).
    #[error("{0}")]
    Invalid(String),
    /// The training thread died.
    #[error("training thread panicked: {0}")]
    Panicked(String),
}

impl ExecutorError {
    /// What this failure means ([`halyard_core::Failure`]): a task that fails with a
    /// retryable one is placed again; any other fails its job.
    pub fn failure(&self) -> halyard_core::Failure {
        match self {
            ExecutorError::Core(e) => e.failure(),
            ExecutorError::Model(e) => halyard_serving::api::model_failure(e),
            ExecutorError::Features(e) => e.failure(),
            ExecutorError::Invalid(_) => halyard_core::Failure::Invalid,
            ExecutorError::Sql(_) | ExecutorError::Panicked(_) => halyard_core::Failure::Internal,
        }
    }
}
