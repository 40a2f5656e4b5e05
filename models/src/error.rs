//! The one error type of `halyard-models`.

/// Result alias for `halyard-models`.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// What can go wrong turning data into a model. All are bad input except `Internal`.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A column the config names is not in the data.
    #[error("column {column:?} not found in the data; columns are: {available}")]
    MissingColumn {
        /// The missing column.
        column: String,
        /// The columns the data has.
        available: String,
    },
    /// The data has no rows (or none left for training or testing).
    #[error("no rows to {purpose}: the data set has {rows} rows in all")]
    NoRows {
        /// Training or testing.
        purpose: &'static str,
        /// Rows in the data.
        rows: usize,
    },
    /// The label has only one class among the training rows.
    #[error(
        "label {label:?} has a single class ({class}) in the training rows: a response model needs both responders and non-responders"
    )]
    SingleClass {
        /// The label column.
        label: String,
        /// The only class seen.
        class: u8,
    },
    /// A label value is neither of the two classes.
    #[error(
        "label {label:?} at data row {row}: value {value:?} is not a class; numeric labels must be 0 or 1, string labels are compared with `positive`"
    )]
    BadLabel {
        /// The label column.
        label: String,
        /// 1-based data row.
        row: usize,
        /// The value.
        value: String,
    },
    /// A label value of a model fitting numbers is not a finite number.
    #[error(
        "label {label:?} at data row {row}: value {value:?} is not a finite number; a model fitting numbers (objective l2, l1 or poisson) needs a number on every row: fill or drop that row"
    )]
    BadNumericLabel {
        /// The label column.
        label: String,
        /// 1-based data row.
        row: usize,
        /// The value.
        value: String,
    },
    /// A column has a type that cannot be a feature.
    #[error("column {column:?} has type {data_type}, which cannot be a feature; exclude it")]
    UnsupportedType {
        /// The column.
        column: String,
        /// Its Arrow type.
        data_type: String,
    },
    /// Training produced non-finite numbers (diverged).
    #[error("training diverged at {at} (loss is not finite): lower [train] learning_rate")]
    Diverged {
        /// Where: `epoch 3`, `step 1200`.
        at: String,
    },
    /// A series no forecaster can use.
    #[error("series {id:?} cannot be forecast: {reason}")]
    BadSeries {
        /// Series id.
        id: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// A cell of an input file is not what its column needs.
    #[error("{origin} line {line} column {column}: {message}")]
    BadData {
        /// File or URL.
        origin: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A record sent for scoring lacks a feature or has one of the wrong type.
    #[error("record {row} field {field:?}: {message}")]
    BadRecord {
        /// 1-based record in the request.
        row: usize,
        /// The feature.
        field: String,
        /// What is wrong and what to send.
        message: String,
    },
    /// A request asks for more than the model was trained for.
    #[error("{0}")]
    Unsupported(String),
    /// A manifest or weights file is not a Halyard artifact.
    #[error("invalid artifact: {0}")]
    Artifact(String),
    /// The group of data-parallel workers failed (a peer stopped answering, left, or
    /// disagreed); the group must be formed again.
    #[error("worker group failed: {0}")]
    Collective(String),
    /// Training was stopped by its caller.
    #[error("training cancelled")]
    Cancelled,
    /// A bug: an invariant did not hold.
    #[error("internal error: {0}")]
    Internal(String),
}
