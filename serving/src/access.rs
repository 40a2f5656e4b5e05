//! The door of every node's port: each request, HTTP or gRPC, is matched against the route
//! table ([`ROUTES`]) and its key checked against the role matrix
//! ([`halyard_core::auth::MATRIX`]) before any handler runs. A route missing from the
//! table is refused, so a new route cannot be open by mistake.

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use halyard_core::Failure;
use halyard_core::auth::{Action, Verifier, bearer};
use halyard_core::coord::{Auditor, Coordinator};
use halyard_core::tls::Tls;

use crate::api::ApiError;
use crate::tls::Peer;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: health checks, which say nothing but "up".
    Open,
    /// A key whose role may do this.
    Key(Action),
    /// A key whose role may do this on the model the path names (`/v1/models/{name}…`).
    ModelKey(Action),
    /// A console page or form: a key whose role may do this, from the `authorization`
    /// header or the console's session cookie ([`SESSION_COOKIE`]); a browser without
    /// either is sent to the sign-in page.
    Page(Action),
}

/// The console's session cookie: the signed-in key, `HttpOnly` and `SameSite=Strict`.
/// Only [`Access::Page`] routes read it, so it never authorises an API call.
pub const SESSION_COOKIE: &str = "halyard_session";

/// The value of cookie `name` in `headers`.
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// Every route of a node's port: method, path (`{model}` stands for one path segment: a
/// model's or a job's name),
/// and who may call it.
pub const ROUTES: &[(&str, &str, Access)] = &[
    (
        "POST",
        "/halyard.v1.JobService/Submit",
        Access::Key(Action::Submit),
    ),
    (
        "POST",
        "/halyard.v1.JobService/GetJob",
        Access::Key(Action::ReadJobs),
    ),
    (
        "POST",
        "/halyard.v1.JobService/ListJobs",
        Access::Key(Action::ReadJobs),
    ),
    (
        "POST",
        "/halyard.v1.JobService/Cancel",
        Access::Key(Action::CancelOwn),
    ),
    (
        "POST",
        "/halyard.v1.JobService/Resume",
        Access::Key(Action::Submit),
    ),
    (
        "POST",
        "/halyard.v1.JobService/Watch",
        Access::Key(Action::ReadJobs),
    ),
    (
        "POST",
        "/halyard.v1.JobService/Logs",
        Access::Key(Action::ReadJobs),
    ),
    (
        "POST",
        "/halyard.v1.JobService/ClusterStatus",
        Access::Key(Action::ReadJobs),
    ),
    (
        "POST",
        "/halyard.v1.JobService/CreateSchedule",
        Access::Key(Action::Submit),
    ),
    (
        "POST",
        "/halyard.v1.JobService/ListSchedules",
        Access::Key(Action::ReadJobs),
    ),
    // A submitter may pause or delete only its own schedules: the handler checks.
    (
        "POST",
        "/halyard.v1.JobService/PauseSchedule",
        Access::Key(Action::Submit),
    ),
    (
        "POST",
        "/halyard.v1.JobService/DeleteSchedule",
        Access::Key(Action::Submit),
    ),
    (
        "POST",
        "/halyard.v1.JobService/CollectGarbage",
        Access::Key(Action::CollectGarbage),
    ),
    (
        "POST",
        "/halyard.v1.ModelService/ListModels",
        Access::Key(Action::ReadModels),
    ),
    (
        "POST",
        "/halyard.v1.ModelService/GetModel",
        Access::Key(Action::ReadModels),
    ),
    (
        "POST",
        "/halyard.v1.ModelService/Deploy",
        Access::Key(Action::Deploy),
    ),
    (
        "POST",
        "/halyard.v1.ModelService/Experiment",
        Access::Key(Action::ReadModels),
    ),
    (
        "POST",
        "/halyard.v1.ModelService/Drift",
        Access::Key(Action::ReadModels),
    ),
    (
        "POST",
        "/halyard.v1.ModelService/ListAudiences",
        Access::Key(Action::ReadModels),
    ),
    (
        "POST",
        "/halyard.v1.ModelService/Report",
        Access::Key(Action::ReadModels),
    ),
    // The model of a gRPC prediction is in its body: the handler checks the key's scope.
    (
        "POST",
        "/halyard.v1.PredictionService/Predict",
        Access::Key(Action::Predict),
    ),
    (
        "POST",
        "/halyard.v1.PredictionService/Forecast",
        Access::Key(Action::Predict),
    ),
    (
        "POST",
        "/halyard.v1.PredictionService/Feedback",
        Access::Key(Action::Predict),
    ),
    (
        "POST",
        "/halyard.v1.PredictionService/GetSchema",
        Access::Key(Action::Predict),
    ),
    (
        "GET",
        halyard_core::auth::RING_LINK_PATH,
        Access::Key(Action::Internal),
    ),
    (
        "POST",
        "/halyard.v1.KeyService/CreateKey",
        Access::Key(Action::ManageKeys),
    ),
    (
        "POST",
        "/halyard.v1.KeyService/ListKeys",
        Access::Key(Action::ManageKeys),
    ),
    (
        "POST",
        "/halyard.v1.KeyService/RevokeKey",
        Access::Key(Action::ManageKeys),
    ),
    (
        "POST",
        "/halyard.v1.KeyService/ListAudit",
        Access::Key(Action::ReadAudit),
    ),
    ("POST", "/grpc.health.v1.Health/Check", Access::Open),
    ("POST", "/grpc.health.v1.Health/Watch", Access::Open),
    ("GET", "/v1/models", Access::Key(Action::ReadModels)),
    (
        "GET",
        "/v1/models/{model}",
        Access::ModelKey(Action::Predict),
    ),
    (
        "POST",
        "/v1/models/{model}",
        Access::ModelKey(Action::Predict),
    ),
    (
        "GET",
        "/v1/experiments/{model}",
        Access::Key(Action::ReadModels),
    ),
    ("GET", "/v1/drift/{model}", Access::Key(Action::ReadModels)),
    // The Open Inference Protocol (crate::oip): health open, the rest as `:predict`.
    ("GET", "/v2/health/live", Access::Open),
    ("GET", "/v2/health/ready", Access::Open),
    (
        "GET",
        "/v2/models/{model}",
        Access::ModelKey(Action::Predict),
    ),
    (
        "GET",
        "/v2/models/{model}/ready",
        Access::ModelKey(Action::Predict),
    ),
    (
        "POST",
        "/v2/models/{model}/infer",
        Access::ModelKey(Action::Predict),
    ),
    (
        "GET",
        "/v2/models/{model}/versions/{version}",
        Access::ModelKey(Action::Predict),
    ),
    (
        "GET",
        "/v2/models/{model}/versions/{version}/ready",
        Access::ModelKey(Action::Predict),
    ),
    (
        "POST",
        "/v2/models/{model}/versions/{version}/infer",
        Access::ModelKey(Action::Predict),
    ),
    ("GET", "/metrics", Access::Key(Action::ReadMetrics)),
    // The console (schedulers only; docs/console.md) and its JSON API.
    ("GET", "/login", Access::Open),
    ("POST", "/login", Access::Open),
    ("POST", "/logout", Access::Open),
    ("GET", "/console.css", Access::Open),
    ("GET", "/console.js", Access::Open),
    ("GET", "/", Access::Page(Action::ReadJobs)),
    ("GET", "/jobs", Access::Page(Action::ReadJobs)),
    ("GET", "/jobs/{model}", Access::Page(Action::ReadJobs)),
    ("GET", "/live/jobs/{model}", Access::Page(Action::ReadJobs)),
    ("GET", "/serving", Access::Page(Action::ReadModels)),
    ("GET", "/live/serving", Access::Page(Action::ReadModels)),
    ("GET", "/models", Access::Page(Action::ReadModels)),
    ("GET", "/models/{model}", Access::Page(Action::ReadModels)),
    (
        "GET",
        "/models/{model}/report",
        Access::Page(Action::ReadModels),
    ),
    (
        "GET",
        "/live/models/{model}",
        Access::Page(Action::ReadModels),
    ),
    ("POST", "/console/submit", Access::Page(Action::Submit)),
    (
        "POST",
        "/console/cancel/{model}",
        Access::Page(Action::CancelOwn),
    ),
    (
        "POST",
        "/console/deploy/{model}",
        Access::Page(Action::Deploy),
    ),
    ("GET", "/v1/cluster", Access::Key(Action::ReadJobs)),
    ("GET", "/v1/jobs", Access::Key(Action::ReadJobs)),
    ("POST", "/v1/jobs", Access::Key(Action::Submit)),
    ("GET", "/v1/jobs/{model}", Access::Key(Action::ReadJobs)),
    (
        "GET",
        "/v1/jobs/{model}/events",
        Access::Key(Action::ReadJobs),
    ),
    (
        "POST",
        "/v1/jobs/{model}/cancel",
        Access::Key(Action::CancelOwn),
    ),
    (
        "GET",
        "/v1/models/{model}/versions",
        Access::Key(Action::ReadModels),
    ),
    (
        "POST",
        "/v1/models/{model}/deploy",
        Access::Key(Action::Deploy),
    ),
    ("GET", "/v1/openapi.json", Access::Open),
    ("GET", "/healthz", Access::Open),
];

/// The access rule of `method path`, and the model the path names; `None`: no such route.
/// A pattern's `{model}` and `{version}` each stand for one non-empty path segment.
pub fn route(method: &str, path: &str) -> Option<(Access, Option<String>)> {
    ROUTES.iter().find_map(|(m, pattern, access)| {
        if *m != method {
            return None;
        }
        let (mut want, mut got) = (pattern.split('/'), path.split('/'));
        let mut model = None;
        loop {
            match (want.next(), got.next()) {
                (None, None) => return Some((*access, model)),
                (Some("{model}"), Some(segment)) if !segment.is_empty() => {
                    // `name:predict` names the model `name`.
                    let name = segment.split_once(':').map_or(segment, |(name, _)| name);
                    model = Some(name.to_string());
                }
                (Some("{version}"), Some(segment)) if !segment.is_empty() => {}
                (Some(w), Some(g)) if w == g => {}
                _ => return None,
            }
        }
    })
}

/// The key a request carries (`authorization: Bearer hk_…`, an HTTP header or gRPC
/// metadata alike).
pub fn token_of(req: &Request) -> Option<&str> {
    req.headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
}

/// A refusal in the caller's protocol: a gRPC status, or an HTTP status with a JSON body.
fn refuse(grpc: bool, failure: Failure, message: String) -> Response {
    if grpc {
        failure.status(message).into_http::<Body>().into_response()
    } else {
        ApiError::new(failure, message).into_response()
    }
}

/// What the door checks requests with.
#[derive(Clone, Debug)]
pub struct Door {
    /// Checks keys.
    pub verifier: Verifier,
    /// Records refused attempts at mutating routes.
    pub audit: Auditor,
    /// Mutual TLS is on: a route only nodes may call ([`Action::Internal`]) also needs a
    /// client certificate the cluster's CA signed.
    pub mutual: bool,
}

impl Door {
    /// The door of node `node` of the cluster coordinated by `coord`, with mutual TLS
    /// when `tls` has a CA.
    pub fn new(coord: &Coordinator, node: &str, tls: Option<&Tls>) -> Self {
        Door {
            verifier: Verifier::new(coord.clone()),
            audit: Auditor::new(coord.clone(), node),
            mutual: tls.is_some_and(|t| t.mutual),
        }
    }
}

/// Whether a refused attempt at `action` goes to the audit log: every action that changes
/// something, and the node-only routes.
fn audited(action: Action) -> bool {
    matches!(
        action,
        Action::Submit
            | Action::CancelOwn
            | Action::CancelAny
            | Action::Deploy
            | Action::ManageKeys
            | Action::SqlWrite
            | Action::Internal
    )
}

/// tonic answers a gRPC message that does not decode with `INTERNAL`; it is the caller's
/// input that is wrong: `INVALID_ARGUMENT`.
fn undecodable_is_invalid(mut resp: Response) -> Response {
    let headers = resp.headers_mut();
    let undecodable = headers.get("grpc-status").is_some_and(|s| s == "13")
        && headers
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .is_some_and(|m| {
                m.starts_with("failed%20to%20decode") || m.starts_with("failed to decode")
            });
    if undecodable {
        headers.insert("grpc-status", axum::http::HeaderValue::from_static("3"));
    }
    resp
}

/// The middleware: let the request through with its [`halyard_core::auth::Caller`] in its
/// extensions, or refuse it (401 no usable key, 403 a key without the right or a node-only
/// route without a node's certificate, 404 no such route).
pub async fn guard(State(door): State<Door>, mut req: Request, next: Next) -> Response {
    let grpc = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/grpc"));
    let (access, model) = match route(req.method().as_str(), req.uri().path()) {
        Some(r) => r,
        None => {
            let message = format!("no route {} {}", req.method(), req.uri().path());
            return refuse(grpc, Failure::NotFound, message);
        }
    };
    // Only a model-scoped route checks its path's name against the key's model pattern;
    // elsewhere the segment names a job or a model any reader may see.
    let (action, page, model) = match access {
        Access::Open => return next.run(req).await,
        Access::Key(action) => (action, false, None),
        Access::ModelKey(action) => (action, false, model),
        Access::Page(action) => (action, true, None),
    };
    // A console page reads the session cookie when no header names a key.
    let token = token_of(&req).map(str::to_string).or_else(|| {
        page.then(|| cookie(req.headers(), SESSION_COOKIE).map(str::to_string))
            .flatten()
    });
    let browser = req
        .headers()
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    let to_login = |req: &Request| {
        let next: String =
            url::form_urlencoded::byte_serialize(req.uri().path().as_bytes()).collect();
        axum::response::Redirect::to(&format!("/login?next={next}")).into_response()
    };
    if page && token.is_none() && browser {
        return to_login(&req);
    }
    let certified = req
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .is_some_and(|c| c.0.certified);
    if door.mutual && action == Action::Internal && !certified {
        let path = req.uri().path();
        let message = format!(
            "{path} is called only by nodes, with a client certificate of the cluster's CA"
        );
        tracing::info!(%path, "node route refused: no client certificate");
        door.audit
            .refused(token_of(&req), action.as_str(), path, &message)
            .await;
        return refuse(grpc, Failure::Forbidden, message);
    }
    match door
        .verifier
        .check(token.as_deref(), action, model.as_deref())
        .await
    {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            undecodable_is_invalid(next.run(req).await)
        }
        Err(denied) => {
            let path = req.uri().path();
            tracing::info!(%path, reason = %denied, "request refused");
            if audited(action) {
                door.audit
                    .refused(token.as_deref(), action.as_str(), path, &denied)
                    .await;
            }
            // A browser whose session key expired or was revoked signs in again.
            if page && browser && denied.failure() == Failure::Unauthenticated {
                return to_login(&req);
            }
            refuse(grpc, denied.failure(), denied.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_whole_paths_and_name_the_model() {
        let model = |m: &str| Some(m.to_string());
        // (method, path, rule)
        type Rule = Option<(Access, Option<String>)>;
        let table: [(&str, &str, Rule); 11] = [
            (
                "POST",
                "/halyard.v1.JobService/Submit",
                Some((Access::Key(Action::Submit), None)),
            ),
            ("GET", "/halyard.v1.JobService/Submit", None),
            ("POST", "/halyard.v1.JobService/SubmitAll", None),
            (
                "POST",
                "/v1/models/churn:predict",
                Some((Access::ModelKey(Action::Predict), model("churn"))),
            ),
            (
                "GET",
                "/v1/models/churn",
                Some((Access::ModelKey(Action::Predict), model("churn"))),
            ),
            ("GET", "/v1/models/churn/x", None),
            (
                "POST",
                "/v2/models/churn/versions/3/infer",
                Some((Access::ModelKey(Action::Predict), model("churn"))),
            ),
            ("GET", "/v2/models/churn/versions//ready", None),
            ("GET", "/v2/models/churn/versions/3/ready/x", None),
            (
                "GET",
                "/v1/jobs/j-1/events",
                Some((Access::Key(Action::ReadJobs), model("j-1"))),
            ),
            (
                "GET",
                "/v1/models",
                Some((Access::Key(Action::ReadModels), None)),
            ),
        ];
        for (method, path, rule) in table {
            assert_eq!(route(method, path), rule, "{method} {path}");
        }
    }
}
