//! The one error type of `halyard-core`.

use std::path::PathBuf;

use crate::Failure;

/// Result alias for `halyard-core`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `halyard-core`. Expected errors (bad input, lost node,
/// lost leadership) are apart from internal ones: [`Error::failure`] classifies each, and
/// its [`Failure::is_retryable`] decides retries.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A job spec or config value breaks a rule.
    #[error("{location} {field} = {value}: {rule}")]
    Invalid {
        /// Where the value came from, such as `job.toml [train]`.
        location: String,
        /// The key.
        field: String,
        /// The offending value, as written.
        value: String,
        /// The rule it breaks.
        rule: String,
    },
    /// A TOML document could not be parsed (syntax, unknown key, wrong type).
    #[error("{source_name}: {message}")]
    Toml {
        /// The file or origin of the text.
        source_name: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A data file could not be read as a table.
    #[error("data {file}: {message}")]
    Data {
        /// The file, as a URL or path.
        file: String,
        /// What was wrong, with line and column where known.
        message: String,
    },
    /// An object-store location does not exist.
    #[error("{location} not found: check the path and that the store is reachable")]
    NotFound {
        /// The missing location.
        location: String,
    },
    /// A write would not fit on its disk: it would leave less than
    /// [`crate::disk::KEEP_FREE_BYTES`] free.
    #[error(
        "no room on the disk of {}: {} free, the write needs {} and {} stays free; free space there or move the folder to a larger disk",
        path.display(),
        crate::disk::size_text(*free),
        crate::disk::size_text(*need),
        crate::disk::size_text(crate::disk::KEEP_FREE_BYTES)
    )]
    DiskFull {
        /// The file written.
        path: PathBuf,
        /// Bytes free on its disk.
        free: u64,
        /// Bytes the write needs.
        need: u64,
    },
    /// A folder holds its node's budget or more.
    #[error(
        "disk budget: {} holds {} (shuffle files and results), the node's budget is {} (disk_budget_mb): raise it, or give the node a larger disk",
        path.display(),
        crate::disk::size_text(*used),
        crate::disk::size_text(*budget)
    )]
    DiskBudget {
        /// The folder.
        path: PathBuf,
        /// Bytes it holds.
        used: u64,
        /// Its budget, bytes.
        budget: u64,
    },
    /// Reading or writing object storage failed.
    #[error("object store {location}: {message}")]
    Store {
        /// Location involved.
        location: String,
        /// The store's message, without credentials.
        message: String,
    },
    /// A store URL or store config is unusable.
    #[error("store url {url}: {message}")]
    StoreUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// The coordinator (etcd) could not be reached or refused a request.
    #[error("coordinator: {0}")]
    Coordinator(String),
    /// etcd refused this node's credentials (a wrong user or password, a user without a
    /// role on Halyard's keys, authentication off while a user is given): trying again
    /// will not help.
    #[error("coordinator refused this node: {0}")]
    CoordinatorRefused(String),
    /// An executor id is registered by a live executor (or by a dead one whose lease has
    /// not ended yet).
    #[error("executor id {0} is already registered by a live executor: pick another --id")]
    IdInUse(String),
    /// A compare-and-swap lost: someone else wrote first. Re-read and retry.
    #[error("conflict on {key}: it changed since it was read")]
    Conflict {
        /// The key whose revision moved.
        key: String,
    },
    /// This scheduler is no longer leader: its write was fenced off.
    #[error("not the leader: leadership was lost, the write was refused")]
    Fenced,
    /// A lease expired or was revoked.
    #[error("lease {0} expired or was revoked")]
    LeaseLost(i64),
    /// No job with this id.
    #[error("no job {0}")]
    NoSuchJob(String),
    /// A schedule name is unknown.
    #[error("no schedule {0}: halyard schedule list shows them")]
    NoSuchSchedule(String),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A location outside the data roots the cluster allows.
    #[error(
        "{location} lies outside the data roots this cluster allows ({roots}): move the data under one of them, or have the operator add its folder or bucket to --data-roots (HALYARD_DATA_ROOTS)"
    )]
    Outside {
        /// The location asked for.
        location: String,
        /// The roots.
        roots: String,
    },
    /// The event log could not take an append (a full or failing disk): nothing of it
    /// was kept; trying again later can succeed.
    #[error("event log {}: {message}: retry later", path.display())]
    EventLog {
        /// The log's folder.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Encoding or decoding a stored record failed: a bug or a foreign writer.
    #[error("corrupt record {key}: {message}")]
    Corrupt {
        /// The key.
        key: String,
        /// The decoder's message.
        message: String,
    },
}

impl Error {
    /// What this failure means for the caller ([`Failure`]): the one classification
    /// that wire codes and retries follow.
    pub fn failure(&self) -> Failure {
        match self {
            Error::Invalid { .. } | Error::Toml { .. } | Error::Data { .. } => Failure::Invalid,
            Error::StoreUrl { .. } | Error::Bind { .. } => Failure::Invalid,
            Error::NotFound { .. } | Error::NoSuchJob(_) | Error::NoSuchSchedule(_) => {
                Failure::NotFound
            }
            Error::Outside { .. } => Failure::Forbidden,
            Error::Coordinator(_)
            | Error::Conflict { .. }
            | Error::Fenced
            | Error::LeaseLost(_)
            | Error::EventLog { .. }
            | Error::DiskFull { .. }
            | Error::DiskBudget { .. } => Failure::Unavailable,
            Error::IdInUse(_) => Failure::Refused,
            Error::Store { .. }
            | Error::Io { .. }
            | Error::Corrupt { .. }
            | Error::CoordinatorRefused(_) => Failure::Internal,
        }
    }

    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(
        location: impl Into<String>,
        field: impl Into<String>,
        value: impl std::fmt::Display,
        rule: impl Into<String>,
    ) -> Self {
        Error::Invalid {
            location: location.into(),
            field: field.into(),
            value: value.to_string(),
            rule: rule.into(),
        }
    }
}
