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
        let text = describe(&e);
        if is_passing(&text) {
            FeatureError::Cluster(text)
        } else {
            FeatureError::Sql(text)
        }
    }
}

/// Whether an error's text is the SQL cluster failing rather than the query (its
/// connection lost to a node killed or restarting or to leadership moving, the query
/// cancelled for a lost executor, a node out of disk): passing, so the task is placed
/// again instead of failing its job.
fn is_passing(text: &str) -> bool {
    const MARKERS: [&str; 11] = [
        // The SQL scheduler cancelled the query because an executor was lost
        // (`cluster::SqlScheduler::executor_lost`): it runs whole again.
        "failed: Cancelled",
        // A node refused a task for want of disk (`halyard_core::Error::DiskBudget`,
        // `DiskFull`), reported as text inside Ballista's task failure: another node or a
        // later attempt may have room.
        "disk budget: ",
        "no room on the disk of ",
        "tonic::transport::Error",
        "tcp connect error",
        "Connection refused",
        "connection reset",
        "transport error",
        "error trying to connect",
        "h2 protocol error",
        "broken pipe",
    ];
    MARKERS.iter().any(|m| text.contains(m))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_connection_is_passing_and_a_bad_query_is_the_job_s() {
        let lost = datafusion::error::DataFusionError::Execution(
            "tonic::transport::Error(Transport, ConnectError(ConnectError(\"tcp connect error\", \
             127.0.0.1:38909, Os { code: 111, kind: ConnectionRefused, message: \"Connection \
             refused\" })))"
                .into(),
        );
        let e = FeatureError::from(lost);
        assert_eq!(e.failure(), halyard_core::Failure::Unavailable, "{e}");
        // A connection cut while a result streamed (the chaos suite met it).
        let cut = datafusion::error::DataFusionError::Execution(
            "code: 'Unknown error', message: \"h2 protocol error: error reading a body from \
             connection\", source: hyper::Error(Body, Error { kind: Io(Custom { kind: \
             BrokenPipe, error: \"stream closed because of a broken pipe\" }) })"
                .into(),
        );
        let e = FeatureError::from(cut);
        assert_eq!(e.failure(), halyard_core::Failure::Unavailable, "{e}");
        // A query the SQL scheduler cancelled when an executor was lost (the chaos suite).
        let cancelled = datafusion::error::DataFusionError::Execution(
            "Job 038HWVDG4E000 failed: Cancelled".into(),
        );
        let e = FeatureError::from(cancelled);
        assert_eq!(e.failure(), halyard_core::Failure::Unavailable, "{e}");
        // A node's refusal for want of disk, as Ballista's client reports the failed job.
        for refusal in [
            halyard_core::Error::DiskBudget {
                path: "/tmp/halyard-sql-x".into(),
                used: 300 << 20,
                budget: 256 << 20,
            },
            halyard_core::Error::DiskFull {
                path: "/tmp/halyard-sql-x/job/1/data.arrow".into(),
                free: 1 << 20,
                need: 0,
            },
        ] {
            let wrapped = datafusion::error::DataFusionError::Execution(format!(
                "Job 038HWN7CV4000 failed: Job failed due to stage 1 failed: Task failed due to \
                 runtime execution error: DataFusionError(ResourcesExhausted({:?}))",
                refusal.to_string()
            ));
            let e = FeatureError::from(wrapped);
            assert_eq!(e.failure(), halyard_core::Failure::Unavailable, "{e}");
        }
        let bad = datafusion::error::DataFusionError::Plan("no column named spend".into());
        assert_eq!(
            FeatureError::from(bad).failure(),
            halyard_core::Failure::Invalid
        );
    }
}
