//! The prediction API's messages (HTTP/JSON; gRPC maps onto the same types) and its one
//! error type, which always says what to fix.

use axum::http::StatusCode;
use halyard_core::Failure;
use halyard_models::forecast::Series;
use halyard_models::json_records::Record;
use serde::{Deserialize, Serialize};

/// A scoring request: one record or a batch, raw feature values as in the training data.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictBody {
    /// A batch of records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<Record>,
    /// Or one record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<Record>,
    /// The request's key (a customer id): picks the variant of a split, stably.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Or: the field of each record holding its own key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_field: Option<String>,
    /// Pin a deployed version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Pin a deployed alias (`production`, `canary`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
}

/// One score and the version that produced it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Response probability; for boosted trees fitting numbers (`objective` `l2`, `l1`,
    /// `poisson`), the predicted number or count; for an uplift model, the uplift (treated
    /// less control); for a k-means model, the segment (0, 1, …).
    pub score: f64,
    /// Version that served it.
    pub version: u64,
    /// An uplift model's treated arm: the response probability if treated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub treated: Option<f64>,
    /// An uplift model's control arm: the response probability if not treated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<f64>,
    /// A k-means model: the record's distance to each segment's centre (in the
    /// preprocessed space), by segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distances: Option<Vec<f64>>,
}

/// The answer to a [`PredictBody`]: one prediction per record, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictReply {
    /// Model name.
    pub model: String,
    /// Predictions, one per record.
    pub predictions: Vec<Prediction>,
    /// Executor that served.
    pub executor: String,
}

/// A forecast request.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForecastBody {
    /// Histories (and covariates, history then horizon, when the model uses them).
    pub series: Vec<Series>,
    /// Steps to forecast.
    pub horizon: usize,
    /// The request's key: picks the variant of a split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Pin a deployed version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Pin a deployed alias.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
}

/// One series' forecast.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesForecast {
    /// Series id.
    pub id: String,
    /// Forecast values, `horizon` of them.
    pub values: Vec<f64>,
}

/// The answer to a [`ForecastBody`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForecastReply {
    /// Model name.
    pub model: String,
    /// Version that served.
    pub version: u64,
    /// One per series, in order.
    pub forecasts: Vec<SeriesForecast>,
    /// Executor that served.
    pub executor: String,
}

/// An outcome: did the customer convert after being served by a version (`converted`),
/// or what was a metric's value for them (`metric` and `value`: revenue, visits, …)?
/// `POST :feedback` takes one, or a JSON array of them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackBody {
    /// The version that served (as the prediction named it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Or the request key, to find the variant by the current split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Whether the customer converted (the `conversion` metric, 1 or 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converted: Option<bool>,
    /// Or a metric's name (lowercase letters, digits and `_`, at most 64)…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// …and its value (a finite number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
}

/// Longest request key an outcome or exposure keeps.
pub const MAX_KEY_BYTES: usize = 256;

impl FeedbackBody {
    /// The metric and value this outcome records, or why it records none.
    pub fn outcome(&self) -> Result<(&str, f64), ApiError> {
        use halyard_core::registry::CONVERSION;
        let (metric, value) = match (self.converted, &self.metric, self.value) {
            (Some(c), None, None) => (CONVERSION, f64::from(u8::from(c))),
            (None, Some(m), Some(v)) => (m.as_str(), v),
            _ => {
                return Err(ApiError::bad_request(
                    "say what happened: send `converted` (true or false), or `metric` and `value` (such as {\"metric\": \"revenue\", \"value\": 12.5})",
                ));
            }
        };
        halyard_core::registry::check_metric_name(metric).map_err(ApiError::bad_request)?;
        if !value.is_finite() || (metric == CONVERSION && value != 0.0 && value != 1.0) {
            return Err(ApiError::bad_request(format!(
                "metric {metric}: value {value} is not {}",
                if metric == CONVERSION {
                    "0 or 1"
                } else {
                    "a finite number"
                }
            )));
        }
        if self.key.as_ref().is_some_and(|k| k.len() > MAX_KEY_BYTES) {
            return Err(ApiError::bad_request(format!(
                "key: longer than {MAX_KEY_BYTES} bytes"
            )));
        }
        Ok((metric, value))
    }
}

/// What `:feedback` wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedbackReply {
    /// The version credited (for a batch, the last outcome's).
    pub version: u64,
    /// Outcomes written to the event log (all of the request's: an error writes none).
    pub accepted: u64,
}

/// Why a request failed: a [`Failure`] (its HTTP status and gRPC code come from there)
/// and a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// What kind of failure.
    pub failure: Failure,
    /// What was wrong and what to do.
    pub message: String,
}

impl ApiError {
    /// 400: the request is wrong.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(Failure::Invalid, message)
    }
    /// 404: no such model, version or alias.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Failure::NotFound, message)
    }
    /// 503: nothing can serve it right now; retrying may help.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(Failure::Unavailable, message)
    }
    /// 500: a bug or a broken artifact.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Failure::Internal, message)
    }
    /// Any failure.
    pub fn new(failure: Failure, message: impl Into<String>) -> Self {
        ApiError {
            failure,
            message: message.into(),
        }
    }

    /// The HTTP status of this error.
    pub fn http_status(&self) -> StatusCode {
        StatusCode::from_u16(self.failure.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The gRPC status of the same error.
    pub fn to_status(&self) -> tonic::Status {
        self.failure.status(self.message.clone())
    }
}

impl From<halyard_models::ModelError> for ApiError {
    fn from(e: halyard_models::ModelError) -> Self {
        ApiError::new(model_failure(&e), e.to_string())
    }
}

/// The [`Failure`] of a model error (`models` knows nothing of the cluster's classes, so
/// the mapping lives here, beside the other).
pub fn model_failure(e: &halyard_models::ModelError) -> Failure {
    use halyard_models::ModelError as M;
    match e {
        M::Collective(_) => Failure::Unavailable,
        M::Internal(_) | M::Artifact(_) | M::Cancelled | M::Diverged { .. } => Failure::Internal,
        _ => Failure::Invalid,
    }
}

impl From<halyard_core::Error> for ApiError {
    fn from(e: halyard_core::Error) -> Self {
        match e.failure() {
            Failure::Internal => ApiError::internal(format!("coordinator: {e}")),
            failure => ApiError::new(failure, e.to_string()),
        }
    }
}
