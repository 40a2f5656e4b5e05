//! The crate's one error type.

use thiserror::Error;

/// Errors of the feature stage, the SQL cluster and `halyard sql`.
#[derive(Debug, Error)]
pub enum FeatureError {
    /// The SQL failed to parse, plan or run; the message is DataFusion's, with its position.
    #[error("sql: {0}")]
    Sql(String),
    /// A named source cannot be read.
    #[error("feature source {name:?} at {location}: {message}")]
    Source {
        /// The source's name in the spec.
        name: String,
        /// Its path or URL (never credentials).
        location: String,
        /// What went wrong and what to do.
        message: String,
    },
    /// The feature table lacks a column the job needs.
    #[error("the feature query's output has no column {column:?} ({role}); it has: {available}")]
    MissingColumn {
        /// The column.
        column: String,
        /// What the spec uses it for.
        role: &'static str,
        /// The columns the output has.
        available: String,
    },
    /// The SQL cluster (embedded Ballista) could not start or be reached.
    #[error("sql cluster: {0}")]
    Cluster(String),
    /// The feature stage's output in the store is unreadable or incomplete.
    #[error("feature output {location}: {message}")]
    Output {
        /// Where.
        location: String,
        /// What.
        message: String,
    },
    /// Coordinator, store or spec errors.
    #[error(transparent)]
    Core(#[from] halyard_core::Error),
}

impl FeatureError {
    /// What this failure means for the caller: bad SQL or sources are the job's to fix;
    /// an unreachable SQL cluster is passing.
    pub fn failure(&self) -> halyard_core::Failure {
        use halyard_core::Failure;
        match self {
            FeatureError::Sql(_)
            | FeatureError::Source { .. }
            | FeatureError::MissingColumn { .. } => Failure::Invalid,
            FeatureError::Cluster(_) => Failure::Unavailable,
            FeatureError::Output { .. } => Failure::Internal,
            FeatureError::Core(e) => e.failure(),
        }
    }
}

impl From<datafusion::error::DataFusionError> for FeatureError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        FeatureError::Sql(describe(&e))
    }
}

impl From<arrow::error::ArrowError> for FeatureError {
    fn from(e: arrow::error::ArrowError) -> Self {
        FeatureError::Sql(e.to_string())
    }
}

impl From<ballista_core::error::BallistaError> for FeatureError {
    fn from(e: ballista_core::error::BallistaError) -> Self {
        FeatureError::Cluster(e.to_string())
    }
}

/// DataFusion's message without its wrapping noise (`Error during planning: ` stays, the
/// nested `External(…)` and context chains collapse to the innermost cause).
pub fn describe(e: &datafusion::error::DataFusionError) -> String {
    let inner = e.find_root();
    let text = inner.to_string();
    // A refusal of the SQL port arrives as a gRPC status printed whole: keep its message.
    let text = match text.split_once("message: \"") {
        Some((_, rest)) if text.contains("Status {") => {
            rest.split_once("\", ").map_or(rest, |(m, _)| m).to_string()
        }
        _ => text,
    };
    text.trim_end_matches('.').to_string()
}

/// Results of this crate.
pub type Result<T, E = FeatureError> = std::result::Result<T, E>;
