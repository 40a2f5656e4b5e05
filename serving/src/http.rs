//! HTTP/JSON routes of the prediction API, and the one server that answers HTTP/1.1,
//! HTTP/2 and gRPC on a node's single port.
//!
//! ```text
//! GET  /v1/models                   deployed models and the executors serving them
//! GET  /v1/models/{name}            input schema, variants and aliases
//! POST /v1/models/{name}:predict    {"record": {...}} or {"records": [...]}, key, version, alias
//! POST /v1/models/{name}:forecast   {"series": [{"id", "values"}], "horizon": N}
//! POST /v1/models/{name}:feedback   {"version" or "key", "converted": bool, or "metric" and "value"}, or an array of them
//! GET  /v1/drift/{name}            drift of the served inputs against the training data
//! GET  /metrics                    the node's metrics for Prometheus (docs/monitoring.md)
//! GET  /healthz
//! ```
//!
//! and the Open Inference Protocol's `/v2/…` routes ([`crate::oip`]).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use halyard_core::tls::Tls;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::access::Door;
use crate::api::{ApiError, FeedbackBody, ForecastBody};
use crate::gateway::{FORWARDED, Gateway, parse};
use crate::tls::{Peer, TlsListener};

/// Largest request body accepted.
pub const MAX_BODY: usize = 4 << 20;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message });
        (self.http_status(), Json(body)).into_response()
    }
}

fn reply<T: Serialize>(r: Result<T, ApiError>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

pub(crate) fn body_of(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                halyard_core::Failure::TooLarge,
                format!(
                    "request body is larger than {} MiB: send fewer records per request",
                    MAX_BODY >> 20
                ),
            )
        } else {
            ApiError::bad_request(format!("cannot read the request body: {e}"))
        }
    })
}

/// Split `name:verb`.
fn target(t: &str) -> Result<(&str, &str), ApiError> {
    t.rsplit_once(':').ok_or_else(|| {
        ApiError::not_found(format!(
            "POST /v1/models/{t}: add the call to the model name, such as /v1/models/{t}:predict"
        ))
    })
}

async fn post_model(
    State(gw): State<Arc<Gateway>>,
    Path(t): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let forwarded = headers.contains_key(FORWARDED);
    let (name, verb) = match target(&t) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let call = async {
        let body = body_of(body)?;
        match verb {
            "predict" => Ok(Json(gw.predict_bytes(name, body, forwarded).await?).into_response()),
            "forecast" => {
                let b: ForecastBody = parse(&body)?;
                Ok(Json(gw.forecast(name, b, forwarded).await?).into_response())
            }
            "feedback" => {
                let batch: Vec<FeedbackBody> = if body.trim_ascii_start().starts_with(b"[") {
                    parse(&body)?
                } else {
                    vec![parse(&body)?]
                };
                Ok(Json(gw.feedback(name, batch).await?).into_response())
            }
            other => Err(ApiError::not_found(format!(
                "unknown call {other:?}: use :predict, :forecast or :feedback"
            ))),
        }
    };
    let result = match verb {
        "predict" | "forecast" | "feedback" => gw.observed(name, verb, call).await,
        _ => call.await,
    };
    result.unwrap_or_else(|e: ApiError| e.into_response())
}

/// `GET /v1/models/{name}[?version=N]`: the schema of the production version, or of
/// version `N`.
async fn get_model(
    State(gw): State<Arc<Gateway>>,
    Path(name): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let version = match version_query(&uri) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    reply(
        gw.schema(&name, version, headers.contains_key(FORWARDED))
            .await,
    )
}

/// The `version` of a query string (`?version=3`), when there is one.
fn version_query(uri: &Uri) -> Result<Option<u64>, ApiError> {
    let query = uri.query().unwrap_or_default();
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "version")
        .map(|(_, v)| {
            v.parse().map_err(|_| {
                ApiError::bad_request(format!(
                    "version={v}: a version is a number, as in ?version=3"
                ))
            })
        })
        .transpose()
}

async fn get_experiment(State(gw): State<Arc<Gateway>>, Path(name): Path<String>) -> Response {
    reply(gw.experiment(&name).await)
}

async fn get_drift(State(gw): State<Arc<Gateway>>, Path(name): Path<String>) -> Response {
    reply(crate::drift::report(gw.coord(), &name).await)
}

async fn list_models(State(gw): State<Arc<Gateway>>) -> Response {
    reply(gw.overview().await)
}

/// `GET /metrics`: the node's metrics for Prometheus.
async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            halyard_core::metrics::CONTENT_TYPE,
        )],
        gw.metrics().render(),
    )
        .into_response()
}

/// The HTTP routes over `gateway`.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/models/{target}", get(get_model).post(post_model))
        .route("/v1/experiments/{name}", get(get_experiment))
        .route("/v1/drift/{name}", get(get_drift))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(gateway.clone())
        .merge(crate::oip::router(gateway))
        .layer(DefaultBodyLimit::max(MAX_BODY))
}

/// Serve `http` and the gRPC services in `grpc` on `listener` until `shutdown`: one
/// port for HTTP/1.1, HTTP/2 and gRPC, over TLS when `tls` is given, every request
/// checked by `door` ([`crate::access`]).
pub async fn serve(
    listener: TcpListener,
    http: Router,
    grpc: tonic::service::Routes,
    door: Door,
    tls: Option<Tls>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    // Every request passes the door first: its route and its key.
    let app = grpc
        .into_axum_router()
        .merge(http)
        .layer(axum::middleware::from_fn_with_state(
            door,
            crate::access::guard,
        ));
    let stop = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    match tls {
        Some(tls) => {
            let listener = TlsListener::new(listener, tls.server.clone())?;
            let app = app.into_make_service_with_connect_info::<Peer>();
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
        }
        None => {
            // Small answers must not wait for Nagle's algorithm.
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
        }
    }
}
