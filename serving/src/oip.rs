//! The Open Inference Protocol (KServe v2, HTTP/JSON) beside Halyard's own JSON, for
//! clients that speak it (KServe, Triton's `tritonclient`):
//!
//! ```text
//! GET  /v2/health/live            {"live": true}
//! GET  /v2/health/ready           {"ready": true}
//! GET  /v2/models/{name}          metadata: its inputs (one tensor per feature), outputs and
//!                                 the deployed versions
//! GET  /v2/models/{name}/ready    {"name", "ready": true}, or 404 when it is not served
//! POST /v2/models/{name}/infer    one named 1-D tensor per feature, all of one length
//! GET  /v2/models/{name}/versions/{v}[/ready], POST …/versions/{v}/infer: the same for one
//!                                 deployed version (404 when it is not deployed)
//! ```
//!
//! An inference request's tensors become records (row `i` takes element `i` of each
//! tensor) and are scored exactly as `:predict` scores them: the `score` output equals its
//! scores, `version` says which version served each row; a versioned route pins the
//! version as `:predict`'s `version` does. The gRPC `GRPCInferenceService` is not served.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use halyard_models::json_records::Record;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{ApiError, PredictBody, PredictReply};
use crate::gateway::{FORWARDED, Gateway, parse};

/// One input tensor of an inference request.
#[derive(Debug, Deserialize)]
struct InputTensor {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    data: Vec<Value>,
}

/// An inference request.
#[derive(Debug, Deserialize)]
struct InferRequest {
    #[serde(default)]
    id: Option<String>,
    inputs: Vec<InputTensor>,
}

/// The records of an inference request: row `i` holds element `i` of every tensor (a
/// `[n]` or `[n, 1]` tensor; an element given as a one-element array is unwrapped).
fn records_of(inputs: Vec<InputTensor>) -> Result<Vec<Record>, ApiError> {
    let rows = inputs.first().map(|t| t.data.len()).ok_or_else(|| {
        ApiError::bad_request("inputs: no tensor; send one named tensor per feature")
    })?;
    let mut records = vec![Record::new(); rows];
    for t in inputs {
        let shape_rows = t.shape.first().copied().unwrap_or(-1);
        let flat = t.shape.iter().skip(1).all(|&d| d == 1);
        if !flat || shape_rows != t.data.len() as i64 || t.data.len() != rows {
            return Err(ApiError::bad_request(format!(
                "input {:?}: shape {:?} with {} elements; every input must be one value per row, shape [{rows}] (or [{rows}, 1]) like the first",
                t.name,
                t.shape,
                t.data.len()
            )));
        }
        if !matches!(
            t.datatype.as_str(),
            "BOOL"
                | "INT8"
                | "INT16"
                | "INT32"
                | "INT64"
                | "UINT8"
                | "UINT16"
                | "UINT32"
                | "UINT64"
                | "FP16"
                | "FP32"
                | "FP64"
                | "BYTES"
        ) {
            return Err(ApiError::bad_request(format!(
                "input {:?}: datatype {:?} is not one of the protocol's (FP64, INT64, BYTES, …)",
                t.name, t.datatype
            )));
        }
        for (record, value) in records.iter_mut().zip(t.data) {
            let value = match value {
                Value::Array(mut one) if one.len() == 1 => one.remove(0),
                other => other,
            };
            record.insert(t.name.clone(), value);
        }
    }
    Ok(records)
}

/// The inference answer of `reply`.
fn response(name: &str, id: Option<String>, reply: PredictReply) -> Value {
    let rows = reply.predictions.len();
    let versions: Vec<u64> = reply.predictions.iter().map(|p| p.version).collect();
    let mut out = json!({
        "model_name": name,
        "outputs": [
            {
                "name": "score",
                "shape": [rows],
                "datatype": "FP64",
                "data": reply.predictions.iter().map(|p| p.score).collect::<Vec<_>>(),
            },
            {
                "name": "version",
                "shape": [rows],
                "datatype": "UINT64",
                "data": versions,
            },
        ],
    });
    if let Some(first) = versions.first()
        && versions.iter().all(|v| v == first)
    {
        out["model_version"] = json!(first.to_string());
    }
    if let Some(id) = id {
        out["id"] = json!(id);
    }
    out
}

/// A version of a route's path: Halyard's versions are numbers.
fn pinned(version: &str) -> Result<u64, ApiError> {
    version.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "version {version:?}: a version is a number, as in /v2/models/NAME/versions/3"
        ))
    })
}

/// `POST /v2/models/{name}/infer`.
async fn infer(
    State(gw): State<Arc<Gateway>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    infer_as(&gw, &name, None, &headers, body).await
}

/// `POST /v2/models/{name}/versions/{version}/infer`.
async fn infer_version(
    State(gw): State<Arc<Gateway>>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match pinned(&version) {
        Ok(v) => infer_as(&gw, &name, Some(v), &headers, body).await,
        Err(e) => e.into_response(),
    }
}

/// Score an inference request, pinned to `version` when there is one.
async fn infer_as(
    gw: &Gateway,
    name: &str,
    version: Option<u64>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let forwarded = headers.contains_key(FORWARDED);
    let call = async {
        let body = crate::http::body_of(body)?;
        let request: InferRequest = parse(&body)?;
        let records = records_of(request.inputs)?;
        let predict = PredictBody {
            records,
            version,
            ..PredictBody::default()
        };
        let reply = gw.predict(name, predict, forwarded).await?;
        Ok(Json(response(name, request.id, reply)).into_response())
    };
    gw.observed(name, "predict", call)
        .await
        .unwrap_or_else(|e: ApiError| e.into_response())
}

/// The protocol's metadata of a served model, from its schema.
fn metadata(schema: &Value, version: Option<u64>) -> Value {
    let inputs: Vec<Value> = schema["inputs"]
        .as_array()
        .map(|fields| {
            fields
                .iter()
                .map(|f| {
                    let datatype = if f["kind"] == "number" {
                        "FP64"
                    } else {
                        "BYTES"
                    };
                    json!({"name": f["name"], "datatype": datatype, "shape": [-1]})
                })
                .collect()
        })
        .unwrap_or_default();
    // The versions a versioned route can name: those the split or an alias serves; a
    // pinned version's metadata names it alone.
    let mut versions: Vec<u64> = schema["variants"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["version"].as_u64())
        .chain(
            schema["aliases"]
                .as_object()
                .into_iter()
                .flat_map(|a| a.values().filter_map(Value::as_u64)),
        )
        .collect();
    versions.sort_unstable();
    versions.dedup();
    if let Some(v) = version {
        versions = vec![v];
    }
    json!({
        "name": schema["model"],
        "versions": versions.iter().map(u64::to_string).collect::<Vec<_>>(),
        "platform": format!("halyard-{}", schema["model_type"].as_str().unwrap_or("model")),
        "inputs": inputs,
        "outputs": [
            {"name": "score", "datatype": "FP64", "shape": [-1]},
            {"name": "version", "datatype": "UINT64", "shape": [-1]},
        ],
    })
}

/// An answer about a served model (of `version`, when pinned) made by `answer` from its
/// schema and the pinned version, or the schema lookup's error (404 when it or the
/// version is not served).
async fn about(
    gw: &Gateway,
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    answer: impl FnOnce(&Value, Option<u64>) -> Value,
) -> Response {
    let version = match version.map(pinned).transpose() {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    match gw
        .schema(name, version, headers.contains_key(FORWARDED))
        .await
    {
        Ok(schema) => Json(answer(&schema, version)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The protocol's readiness answer (with the version, when pinned).
fn readiness(name: &str, version: Option<u64>) -> Value {
    let mut out = json!({"name": name, "ready": true});
    if let Some(v) = version {
        out["version"] = json!(v.to_string());
    }
    out
}

/// `GET /v2/models/{name}`.
async fn model(
    State(gw): State<Arc<Gateway>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    about(&gw, &name, None, &headers, metadata).await
}

/// `GET /v2/models/{name}/versions/{version}`.
async fn model_version(
    State(gw): State<Arc<Gateway>>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    about(&gw, &name, Some(&version), &headers, metadata).await
}

/// `GET /v2/models/{name}/ready`.
async fn ready(
    State(gw): State<Arc<Gateway>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    about(&gw, &name, None, &headers, |_, v| readiness(&name, v)).await
}

/// `GET /v2/models/{name}/versions/{version}/ready`.
async fn ready_version(
    State(gw): State<Arc<Gateway>>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    about(&gw, &name, Some(&version), &headers, |_, v| {
        readiness(&name, v)
    })
    .await
}

/// The protocol's routes over `gateway`.
pub fn router(gateway: Arc<Gateway>) -> axum::Router {
    use axum::routing::{get, post};
    axum::Router::new()
        .route(
            "/v2/health/live",
            get(|| async { Json(json!({"live": true})) }),
        )
        .route(
            "/v2/health/ready",
            get(|| async { Json(json!({"ready": true})) }),
        )
        .route("/v2/models/{name}", get(model))
        .route("/v2/models/{name}/ready", get(ready))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}", get(model_version))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(ready_version),
        )
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(infer_version),
        )
        .with_state(gateway)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, shape: &[i64], datatype: &str, data: Value) -> InputTensor {
        InputTensor {
            name: name.into(),
            shape: shape.to_vec(),
            datatype: datatype.into(),
            data: serde_json::from_value(data).unwrap(),
        }
    }

    #[test]
    fn tensors_become_records_row_by_row() {
        let records = records_of(vec![
            tensor("age", &[2], "INT64", json!([40, 51])),
            tensor("region", &[2, 1], "BYTES", json!([["north"], "south"])),
        ])
        .unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(
            Value::Object(records[0].clone()),
            json!({"age": 40, "region": "north"})
        );
        assert_eq!(
            Value::Object(records[1].clone()),
            json!({"age": 51, "region": "south"})
        );
    }

    #[test]
    fn ragged_or_shaped_wrong_inputs_are_refused_by_name() {
        let err = records_of(vec![
            tensor("age", &[2], "INT64", json!([40, 51])),
            tensor("region", &[1], "BYTES", json!(["north"])),
        ])
        .unwrap_err();
        assert!(err.message.contains("input \"region\""), "{}", err.message);
        let err = records_of(vec![tensor("age", &[1, 2], "INT64", json!([40, 51]))]).unwrap_err();
        assert!(err.message.contains("shape [1, 2]"), "{}", err.message);
        let err = records_of(vec![tensor("age", &[1], "DECIMAL", json!([40]))]).unwrap_err();
        assert!(
            err.message.contains("datatype \"DECIMAL\""),
            "{}",
            err.message
        );
        assert!(records_of(vec![]).is_err());
    }
}
