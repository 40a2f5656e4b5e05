//! The prediction API over gRPC (`halyard.v1.PredictionService`), mapped onto the same
//! gateway calls as the HTTP routes.

use std::sync::Arc;

use halyard_core::auth::Caller;
use halyard_core::proto::prediction_service_server::PredictionService;
use halyard_core::proto::{
    FeedbackRequest, FeedbackResponse, ForecastRequest, ForecastResponse, GetSchemaRequest,
    GetSchemaResponse, PredictRequest, PredictResponse, Prediction, SeriesForecast,
};
use halyard_models::forecast::Series;
use halyard_models::json_records::Record;
use prost_types::value::Kind;
use serde_json::{Number, Value};
use tonic::{Request, Response, Status};

use crate::api::{ApiError, FeedbackBody, ForecastBody, PredictBody};
use crate::gateway::Gateway;

/// The gRPC service over a gateway.
#[derive(Debug, Clone)]
pub struct PredictionApi {
    gateway: Arc<Gateway>,
}

impl PredictionApi {
    /// Serve `gateway` over gRPC.
    pub fn new(gateway: Arc<Gateway>) -> Self {
        PredictionApi { gateway }
    }
}

/// A protobuf `Value` as JSON. Numbers arrive as doubles: whole ones become integers,
/// so that `5` matches an integer training column.
fn to_json(v: prost_types::Value) -> Result<Value, ApiError> {
    Ok(match v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::NumberValue(x)) => {
            if x.fract() == 0.0 && x.abs() < 9.0e15 {
                Value::Number(Number::from(x as i64))
            } else {
                Value::Number(
                    Number::from_f64(x).ok_or_else(|| {
                        ApiError::bad_request(format!("{x} is not a finite number"))
                    })?,
                )
            }
        }
        Some(Kind::StructValue(_) | Kind::ListValue(_)) => {
            return Err(ApiError::bad_request(
                "a feature value must be a number, a string, a boolean or null",
            ));
        }
    })
}

fn record(s: prost_types::Struct) -> Result<Record, ApiError> {
    s.fields
        .into_iter()
        .map(|(k, v)| Ok((k, to_json(v)?)))
        .collect()
}

fn opt(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

#[tonic::async_trait]
impl PredictionService for PredictionApi {
    async fn predict(
        &self,
        req: Request<PredictRequest>,
    ) -> Result<Response<PredictResponse>, Status> {
        Caller::of(&req)?.may_score(&req.get_ref().model)?;
        let r = req.into_inner();
        let body = PredictBody {
            records: r
                .records
                .into_iter()
                .map(record)
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_status())?,
            record: None,
            key: opt(r.key),
            key_field: opt(r.key_field),
            version: r.version,
            alias: opt(r.alias),
        };
        let gw = &self.gateway;
        let reply = gw
            .observed(&r.model, "predict", gw.predict(&r.model, body, false))
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(PredictResponse {
            model: reply.model,
            predictions: reply
                .predictions
                .into_iter()
                .map(|p| Prediction {
                    score: p.score,
                    version: p.version,
                    treated: p.treated,
                    control: p.control,
                    distances: p.distances.unwrap_or_default(),
                })
                .collect(),
            executor: reply.executor,
        }))
    }

    async fn forecast(
        &self,
        req: Request<ForecastRequest>,
    ) -> Result<Response<ForecastResponse>, Status> {
        Caller::of(&req)?.may_score(&req.get_ref().model)?;
        let r = req.into_inner();
        let body = ForecastBody {
            series: r
                .series
                .into_iter()
                .map(|s| Series {
                    id: s.id,
                    values: s.values,
                    covariates: s.covariates.into_iter().map(|c| c.values).collect(),
                })
                .collect(),
            horizon: r.horizon as usize,
            key: opt(r.key),
            version: r.version,
            alias: opt(r.alias),
        };
        let gw = &self.gateway;
        let reply = gw
            .observed(&r.model, "forecast", gw.forecast(&r.model, body, false))
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(ForecastResponse {
            model: reply.model,
            version: reply.version,
            forecasts: reply
                .forecasts
                .into_iter()
                .map(|f| SeriesForecast {
                    id: f.id,
                    values: f.values,
                })
                .collect(),
            executor: reply.executor,
        }))
    }

    async fn feedback(
        &self,
        req: Request<FeedbackRequest>,
    ) -> Result<Response<FeedbackResponse>, Status> {
        Caller::of(&req)?.may_score(&req.get_ref().model)?;
        let r = req.into_inner();
        let body = FeedbackBody {
            version: r.version,
            key: opt(r.key),
            converted: r.converted,
            metric: r.metric,
            value: r.value,
        };
        let gw = &self.gateway;
        let reply = gw
            .observed(&r.model, "feedback", gw.feedback(&r.model, vec![body]))
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(FeedbackResponse {
            version: reply.version,
            accepted: reply.accepted,
        }))
    }

    async fn get_schema(
        &self,
        req: Request<GetSchemaRequest>,
    ) -> Result<Response<GetSchemaResponse>, Status> {
        Caller::of(&req)?.may_score(&req.get_ref().model)?;
        let schema = self
            .gateway
            .schema(&req.into_inner().model, None, false)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(GetSchemaResponse {
            json: schema.to_string(),
        }))
    }
}
