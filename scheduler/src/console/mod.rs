//! The web console, served by every scheduler on its API port: server-rendered pages over
//! the same job and model services as the gRPC API (so the same rights and the same audit
//! log), small scripts that refresh the live parts every second, and a JSON API for other
//! tools (`/v1/cluster`, `/v1/jobs`, `/v1/jobs/{id}`).
//!
//! **Sign-in.** The login form takes an API key; it is kept in an `HttpOnly`,
//! `SameSite=Strict` cookie (`Secure` under TLS) that the node's door accepts on the
//! console's routes only, never on the APIs. Every form that changes something carries a
//! CSRF token derived from the key (SHA-256 of a fixed label and the key), checked here.
//! Buttons a role may not press are not shown, and the services check the right again.

pub(crate) mod html;
mod serving;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use halyard_core::Failure;
use halyard_core::auth::{Action, Caller, Verifier};
use halyard_core::proto::deploy_request::Change;
use halyard_core::proto::job_service_server::JobService;
use halyard_core::proto::model_service_server::ModelService;
use halyard_core::proto::{
    CancelRequest, ClusterStatusRequest, DeployRequest, DeployVersion, DriftRequest,
    ExperimentRequest, GetJobRequest, GetModelRequest, GetModelResponse, JobInfo, ListJobsRequest,
    ListModelsRequest, LogsRequest, ModelVersionInfo, Promote, ReportRequest, Rollback,
    SubmitRequest, Undeploy,
};
use halyard_core::records::now_ms;
use halyard_serving::access::SESSION_COOKIE;
use serde_json::json;
use sha2::{Digest, Sha256};
use tonic::Status;

use crate::models::ModelApi;
use crate::service::JobApi;
use html::{ago, chart, curves, esc, number, page, table, thousands};

/// What the console's handlers call.
pub(crate) struct Console {
    pub(crate) jobs: Arc<JobApi>,
    pub(crate) models: Arc<ModelApi>,
    /// Checks the key of a sign-in.
    pub(crate) verifier: Verifier,
    /// The node serves TLS: the cookie is `Secure`.
    pub(crate) tls: bool,
    /// The node's gateway: it reads the executors' metrics.
    pub(crate) gateway: Arc<halyard_serving::Gateway>,
    /// The executors' metrics as last read, for the serving page's rates.
    pub(crate) reads: serving::Reads,
}

type Shared = State<Arc<Console>>;

/// The console's routes (their rights are in `halyard_serving::access::ROUTES`).
pub(crate) fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(cluster_page))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route(
            "/console.css",
            get(|| asset("text/css", include_str!("console.css"))),
        )
        .route(
            "/console.js",
            get(|| asset("text/javascript", include_str!("console.js"))),
        )
        .route("/jobs", get(jobs_page))
        .route("/jobs/{id}", get(job_page))
        .route("/live/jobs/{id}", get(job_live))
        .route("/serving", get(serving_page))
        .route("/live/serving", get(serving_live))
        .route("/models", get(models_page))
        .route("/models/{name}", get(model_page))
        .route("/models/{name}/report", get(report_page))
        .route("/live/models/{name}", get(model_live))
        .route("/console/submit", post(submit))
        .route("/console/cancel/{id}", post(cancel))
        .route("/console/deploy/{name}", post(deploy))
        .route("/v1/cluster", get(cluster_json))
        .route("/v1/jobs", get(jobs_json).post(submit_json))
        .route("/v1/jobs/{id}", get(job_json))
        .route("/v1/jobs/{id}/events", get(job_events_json))
        .route("/v1/jobs/{id}/cancel", post(cancel_json))
        .route("/v1/models/{name}/versions", get(versions_json))
        .route("/v1/models/{name}/deploy", post(deploy_json))
        .route(
            "/v1/openapi.json",
            get(|| asset("application/json", include_str!("openapi.json"))),
        )
        .with_state(console)
}

async fn asset(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

/// The CSRF token of a session's key.
pub(crate) fn csrf_of(key: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"halyard-console-csrf\0");
    h.update(key.as_bytes());
    hex::encode(&h.finalize()[..16])
}

/// A form body's or a query string's fields.
fn fields(text: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(text).into_owned().collect()
}

/// A field, empty when absent.
fn field<'a>(f: &'a HashMap<String, String>, name: &str) -> &'a str {
    f.get(name).map_or("", String::as_str)
}

/// The query string's fields.
fn query(uri: &Uri) -> HashMap<String, String> {
    fields(uri.query().unwrap_or("").as_bytes())
}

/// The session's key, from its cookie.
fn session_key(headers: &HeaderMap) -> Option<String> {
    halyard_serving::access::cookie(headers, SESSION_COOKIE).map(str::to_string)
}

/// Who is signed in, and the CSRF token of their forms.
fn who(caller: &Caller, headers: &HeaderMap) -> (String, String) {
    let k = &caller.key;
    let name = format!("{} ({})", k.name, k.role.as_str());
    let csrf = session_key(headers)
        .map(|s| csrf_of(&s))
        .unwrap_or_default();
    (name, csrf)
}

/// A form's CSRF token against its session's: the refusal, if any (400: the door, not
/// this check, answers 403 for a missing right). A call with an `authorization` header
/// carries its key itself, which no other site can make a browser send: no token needed.
fn csrf_refusal(headers: &HeaderMap, form: &HashMap<String, String>) -> Option<Response> {
    if headers.contains_key(header::AUTHORIZATION) {
        return None;
    }
    let token = field(form, "csrf");
    let want = session_key(headers).map(|k| csrf_of(&k));
    if !token.is_empty() && want.as_deref() == Some(token) {
        None
    } else {
        Some((
            StatusCode::BAD_REQUEST,
            Html("<p class=\"error\">This form is stale or came from another site: reload the page and try again.</p>"),
        )
            .into_response())
    }
}

/// A service call on behalf of `caller`, as the gRPC API would make it.
fn as_caller<T>(caller: &Caller, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.extensions_mut().insert(caller.clone());
    r
}

/// A service call's refusal or failure, answered as a page.
struct Refusal(Box<Status>);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        failed(*self.0)
    }
}

/// A service call's answer, or its refusal.
fn answer<T>(r: Result<tonic::Response<T>, Status>) -> Result<T, Refusal> {
    r.map(tonic::Response::into_inner)
        .map_err(|s| Refusal(Box::new(s)))
}

/// A refused or failed service call as a page.
fn failed(status: Status) -> Response {
    let code = StatusCode::from_u16(Failure::from_grpc_code(status.code()).http_status())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        code,
        Html(format!(
            "<!doctype html><link rel=\"stylesheet\" href=\"/console.css\"><main><h1>{}</h1><p class=\"error\">{}</p><p><a href=\"/\">Back to the console</a></p></main>",
            code.as_u16(),
            esc(status.message())
        )),
    )
        .into_response()
}

// ---- sign-in ------------------------------------------------------------------------

fn login_form(next: &str, error: &str) -> String {
    let error = if error.is_empty() {
        String::new()
    } else {
        format!("<p class=\"error\">{}</p>", esc(error))
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Sign in · Halyard</title>\
         <link rel=\"stylesheet\" href=\"/console.css\"></head><body><main class=\"login\">\
         <h1>Halyard</h1>{error}<form method=\"post\" action=\"/login\">\
         <label>API key <input type=\"password\" name=\"key\" autocomplete=\"current-password\" required autofocus></label>\
         <input type=\"hidden\" name=\"next\" value=\"{}\"><button>Sign in</button></form>\
         <p class=\"hint\">On the cluster's machine, <code>halyard standalone</code> wrote an admin key to its data \
         directory; <code>halyard keys create --role viewer</code> makes one that can only look.</p></main></body></html>",
        esc(next)
    )
}

async fn login_page(uri: Uri) -> Html<String> {
    let q = query(&uri);
    Html(login_form(field(&q, "next"), ""))
}

/// Only a path of this console, so a sign-in never sends anyone elsewhere.
fn local_path(next: &str) -> &str {
    if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') {
        next
    } else {
        "/"
    }
}

async fn login(State(c): Shared, body: Bytes) -> Response {
    let f = fields(&body);
    let (key, next) = (field(&f, "key").trim(), field(&f, "next"));
    if key.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            Html(login_form(next, "enter an API key")),
        )
            .into_response();
    }
    match c.verifier.check(Some(key), Action::ReadJobs, None).await {
        Ok(caller) => {
            tracing::info!(key = %caller.key.id, "console sign-in");
            let secure = if c.tls { "; Secure" } else { "" };
            let cookie = format!(
                "{SESSION_COOKIE}={key}; Path=/; HttpOnly; SameSite=Strict; Max-Age=43200{secure}"
            );
            let mut r = Redirect::to(local_path(next)).into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Err(denied) => (
            StatusCode::UNAUTHORIZED,
            Html(login_form(next, &denied.to_string())),
        )
            .into_response(),
    }
}

async fn logout() -> Response {
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("halyard_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    r
}

// ---- cluster --------------------------------------------------------------------------

async fn cluster_page(
    State(c): Shared,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let status = answer(
        c.jobs
            .cluster_status(as_caller(&caller, ClusterStatusRequest {}))
            .await,
    )?;
    let jobs = answer(
        c.jobs
            .list_jobs(as_caller(&caller, ListJobsRequest {}))
            .await,
    )?
    .jobs;
    let slots: u32 = status.executors.iter().map(|e| e.cpu_slots).sum();
    let now = now_ms();
    let serving = c.gateway.serving();
    let serves = |id: &str| -> String {
        let models: Vec<String> = serving
            .iter()
            .filter(|s| s.executor == id)
            .flat_map(|s| &s.models)
            .map(|(name, versions)| {
                let v: Vec<String> = versions.iter().map(|v| format!("v{v}")).collect();
                format!("{} {}", esc(name), v.join(", "))
            })
            .collect();
        if models.is_empty() {
            "–".into()
        } else {
            models.join("; ")
        }
    };
    let running = jobs.iter().filter(|j| j.state == "running").count();
    let pending = jobs.iter().filter(|j| j.state == "pending").count();
    let rows: Vec<Vec<String>> = status
        .executors
        .iter()
        .map(|e| {
            vec![
                esc(&e.id),
                esc(&e.address),
                format!("{} of {}", e.running_tasks, e.cpu_slots),
                thousands(e.memory_mb),
                e.gpus.to_string(),
                serves(&e.id),
                ago(e.started_ms, now),
                esc(&e.version),
            ]
        })
        .collect();
    let body = format!(
        "<section class=\"tiles\"><div><span>Leader</span><b>{}</b></div>\
         <div><span>Executors</span><b>{}</b></div><div><span>CPU slots</span><b>{}</b></div>\
         <div><span>Jobs running</span><b>{running}</b></div><div><span>Jobs waiting</span><b>{pending}</b></div>\
         <div><span>SQL scheduler</span><b>{}</b></div></section><h2>Executors</h2>{}",
        esc(if status.leader.is_empty() {
            "none (election under way)"
        } else {
            &status.leader
        }),
        status.executors.len(),
        thousands(u64::from(slots)),
        esc(if status.sql_endpoint.is_empty() {
            "not running"
        } else {
            &status.sql_endpoint
        }),
        table(
            &[
                "Executor",
                "Address",
                "Tasks / slots",
                "Memory (MB)",
                "GPUs",
                "Serves",
                "Registered",
                "Version"
            ],
            &rows,
            "No executor has registered: start one with `halyard executor`."
        )
    );
    let (who, csrf) = who(&caller, &headers);
    Ok(Html(page("Cluster", "/", &who, &csrf, &body)).into_response())
}

// ---- jobs -----------------------------------------------------------------------------

fn progress(j: &JobInfo) -> String {
    if j.epochs > 0 && j.state == "running" {
        format!("{} / {}", j.epoch, j.epochs)
    } else {
        "–".into()
    }
}

fn state_badge(state: &str) -> String {
    format!("<span class=\"state {}\">{}</span>", esc(state), esc(state))
}

async fn jobs_page(
    State(c): Shared,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, Refusal> {
    jobs_view(&c, &caller, &headers, &query(&uri), "", "").await
}

/// The jobs page filtered by `q`; `error` and `spec` fill the submit form again after a
/// refused submission, so nothing typed is lost.
async fn jobs_view(
    c: &Console,
    caller: &Caller,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
    error: &str,
    spec: &str,
) -> Result<Response, Refusal> {
    let (state, model) = (field(q, "state"), field(q, "model"));
    // `mine`: the signed-in key's jobs.
    let mine = field(q, "mine") == "on";
    let me = caller.key.id.as_str();
    let mut jobs = answer(
        c.jobs
            .list_jobs(as_caller(caller, ListJobsRequest {}))
            .await,
    )?
    .jobs;
    jobs.retain(|j| {
        (state.is_empty() || j.state == state)
            && (model.is_empty() || j.name == model)
            && (!mine || j.owner == me)
    });
    jobs.sort_by_key(|j| std::cmp::Reverse(j.created_ms));
    let now = now_ms();
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                format!("<a href=\"/jobs/{0}\">{0}</a>", esc(&j.id)),
                esc(&j.name),
                state_badge(&j.state),
                progress(j),
                j.metrics
                    .get("test_auc")
                    .map(|v| number(*v))
                    .unwrap_or_else(|| "–".into()),
                ago(j.created_ms, now),
                if j.owner == me {
                    "you".into()
                } else {
                    esc(&j.owner)
                },
            ]
        })
        .collect();
    let (who, csrf) = who(caller, headers);
    let options: String = ["", "pending", "running", "succeeded", "failed", "cancelled"]
        .iter()
        .map(|s| {
            let sel = if *s == state { " selected" } else { "" };
            let label = if s.is_empty() { "any state" } else { s };
            format!("<option value=\"{s}\"{sel}>{label}</option>")
        })
        .collect();
    let mut body = format!(
        "<form class=\"filters\" method=\"get\" action=\"/jobs\"><select name=\"state\">{options}</select>\
         <input name=\"model\" placeholder=\"model name\" value=\"{}\">\
         <label><input type=\"checkbox\" name=\"mine\"{}> mine</label><button>Filter</button></form>{}",
        esc(model),
        if mine { " checked" } else { "" },
        table(
            &[
                "Job",
                "Model",
                "State",
                "Epoch",
                "Test AUC",
                "Submitted",
                "Owner (key)"
            ],
            &rows,
            "No job matches. Submit one below, or with `halyard submit SPEC`."
        )
    );
    if caller.may(Action::Submit) {
        let error = if error.is_empty() {
            String::new()
        } else {
            format!(
                "<pre class=\"error\" id=\"submit-error\">{}</pre>",
                esc(error)
            )
        };
        body.push_str(&format!(
            "<h2>Submit a job</h2>{error}<form method=\"post\" action=\"/console/submit\" class=\"submit\">\
             <label class=\"hint\">Paste the spec, or read it from a file: <input type=\"file\" accept=\".toml,text/plain\" data-into=\"spec\"></label>\
             <textarea name=\"spec\" id=\"spec\" rows=\"14\" placeholder=\"name = &quot;campaign-response&quot;&#10;[data]&#10;source = &quot;data/campaign/responses.csv&quot;&#10;label = &quot;responded&quot;\" required>{}</textarea>\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><button>Validate and submit</button></form>\
             <p class=\"hint\">The spec is checked before it runs; every problem is listed with its line (docs/job-spec.md).</p>",
            esc(spec)
        ));
    }
    Ok(Html(page("Jobs", "/jobs", &who, &csrf, &body)).into_response())
}

/// The live parts of a job's page: state, progress, the curve and the log tail.
async fn job_parts(
    c: &Console,
    caller: &Caller,
    id: &str,
) -> Result<(JobInfo, String, String), Status> {
    let job = c
        .jobs
        .get_job(as_caller(caller, GetJobRequest { job_id: id.into() }))
        .await?
        .into_inner()
        .job
        .unwrap_or_default();
    let lines = c
        .jobs
        .logs(as_caller(caller, LogsRequest { job_id: id.into() }))
        .await?
        .into_inner()
        .lines;
    let series = curves(lines.iter().map(|l| l.message.as_str()));
    let x_label = if job.model_type == "nbeats" {
        "step"
    } else {
        "epoch"
    };
    let curve = chart(&series, x_label, "loss");
    let tail: Vec<String> = lines
        .iter()
        .rev()
        .take(40)
        .rev()
        .map(|l| esc(&l.message))
        .collect();
    Ok((job, curve, tail.join("\n")))
}

/// The job's state line, error, model and (while it runs, for a role that may) its
/// cancel button.
fn job_summary(j: &JobInfo, caller: &Caller, csrf: &str) -> String {
    let mut s = format!(
        "<p>{} · attempt {} · {}{}</p>",
        state_badge(&j.state),
        j.attempt,
        if j.executor.is_empty() {
            "not placed".to_string()
        } else {
            format!("on {}", esc(&j.executor))
        },
        if j.epochs > 0 && j.state == "running" {
            format!(" · epoch {} of {}", j.epoch, j.epochs)
        } else {
            String::new()
        }
    );
    if !j.error.is_empty() {
        s.push_str(&format!("<p class=\"error\">{}</p>", esc(&j.error)));
    }
    if !j.artifact.is_empty() {
        s.push_str(&format!(
            "<p>Model: <a href=\"/models/{0}\">{0}</a> · artifact <code>{1}</code></p>",
            esc(&j.name),
            esc(&j.artifact)
        ));
    }
    let ended = matches!(j.state.as_str(), "succeeded" | "failed" | "cancelled");
    if !ended && (caller.may(Action::CancelOwn) || caller.may(Action::CancelAny)) {
        s.push_str(&format!(
            "<form method=\"post\" action=\"/console/cancel/{0}\" data-confirm=\"Cancel job {0}?\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><button class=\"danger\">Cancel</button></form>",
            esc(&j.id)
        ));
    }
    s
}

/// The job's metrics (a compact grid) and a search's trials.
fn job_results(j: &JobInfo) -> String {
    let mut s = String::new();
    if !j.metrics.is_empty() {
        s.push_str("<h2>Metrics</h2><dl class=\"metrics\">");
        for (k, v) in &j.metrics {
            s.push_str(&format!(
                "<div><dt>{}</dt><dd>{}</dd></div>",
                esc(k),
                number(*v)
            ));
        }
        s.push_str("</dl>");
    }
    if !j.trials.is_empty() {
        let rows: Vec<Vec<String>> = j
            .trials
            .iter()
            .map(|t| {
                let losses: Vec<String> = t.losses.iter().map(|l| format!("{l:.4}")).collect();
                vec![
                    t.index.to_string(),
                    esc(&t.params),
                    format!("{}{}", esc(&t.state), if t.best { " ★" } else { "" }),
                    t.epochs.to_string(),
                    losses.join(" → "),
                ]
            })
            .collect();
        // Each trial's validation loss at the end of each rung it finished.
        let series: Vec<html::Series> = j
            .trials
            .iter()
            .filter(|t| !t.losses.is_empty())
            .map(|t| {
                let name = format!("trial {}{}", t.index, if t.best { " (best)" } else { "" });
                let points = t
                    .losses
                    .iter()
                    .enumerate()
                    .map(|(k, l)| ((k + 1) as f64, *l))
                    .collect();
                (name, points)
            })
            .collect();
        s.push_str("<h2>Trials</h2>");
        if !series.is_empty() {
            s.push_str(&chart(&series, "rung", "validation loss"));
        }
        s.push_str(&table(
            &[
                "Trial",
                "Parameters",
                "State",
                "Epochs",
                "Validation loss by rung",
            ],
            &rows,
            "",
        ));
    }
    s
}

async fn job_page(
    State(c): Shared,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let (job, curve, log) = match job_parts(&c, &caller, &id).await {
        Ok(p) => p,
        Err(e) => return failed(e),
    };
    let (who, csrf) = who(&caller, &headers);
    let ended = matches!(job.state.as_str(), "succeeded" | "failed" | "cancelled");
    let body = format!(
        "<div data-live=\"/live/jobs/{}\" data-done=\"{ended}\"><div id=\"summary\">{}</div>\
         <h2>Training curve</h2><div id=\"curve\">{curve}</div><div id=\"results\">{}</div>\
         <h2>Log</h2><pre id=\"log\">{log}</pre></div>",
        esc(&id),
        job_summary(&job, &caller, &csrf),
        job_results(&job)
    );
    Html(page(&format!("Job {id}"), "/jobs", &who, &csrf, &body)).into_response()
}

async fn job_live(
    State(c): Shared,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let (_, csrf) = who(&caller, &headers);
    match job_parts(&c, &caller, &id).await {
        Ok((job, curve, log)) => axum::Json(json!({
            "done": matches!(job.state.as_str(), "succeeded" | "failed" | "cancelled"),
            "parts": {
                "summary": job_summary(&job, &caller, &csrf),
                "curve": curve,
                "results": job_results(&job),
                "log": log,
            },
        }))
        .into_response(),
        Err(e) => failed(e),
    }
}

/// The submission of spec `text` (the console's form and `POST /v1/jobs`), checked first:
/// `Err` lists every problem, each at its line. Relative paths are the scheduler's, as a
/// `halyard submit` on its machine would send them.
fn submit_request(text: &str) -> Result<SubmitRequest, String> {
    use halyard_core::spec::JobSpec;
    let problems = JobSpec::problems_in(text, "job spec").map_err(|e| e.to_string())?;
    if !problems.is_empty() {
        return Err(problems.join("\n"));
    }
    let base = std::env::current_dir().unwrap_or_default();
    let spec = JobSpec::from_text(text, "job spec", &base).map_err(|e| e.to_string())?;
    Ok(SubmitRequest {
        protocol_version: halyard_core::PROTOCOL_VERSION,
        spec_toml: spec.to_toml(),
    })
}

/// The jobs page again, with why the spec was refused and the spec as it was sent (400).
async fn refused_spec(
    c: &Console,
    caller: &Caller,
    headers: &HeaderMap,
    why: &str,
    spec: &str,
) -> Response {
    let page = jobs_view(c, caller, headers, &HashMap::new(), why, spec).await;
    (StatusCode::BAD_REQUEST, page.into_response()).into_response()
}

async fn submit(
    State(c): Shared,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let f = fields(&body);
    if let Some(r) = csrf_refusal(&headers, &f) {
        return r;
    }
    let text = field(&f, "spec");
    let req = match submit_request(text) {
        Ok(r) => r,
        Err(why) => return refused_spec(&c, &caller, &headers, &why, text).await,
    };
    match c.jobs.submit(as_caller(&caller, req)).await {
        Ok(r) => {
            let id = r.into_inner().job.map(|j| j.id).unwrap_or_default();
            Redirect::to(&format!("/jobs/{id}")).into_response()
        }
        Err(e) if e.code() == tonic::Code::InvalidArgument => {
            refused_spec(&c, &caller, &headers, e.message(), text).await
        }
        Err(e) => failed(e),
    }
}

async fn cancel(
    State(c): Shared,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    if let Some(r) = csrf_refusal(&headers, &fields(&body)) {
        return r;
    }
    match c
        .jobs
        .cancel(as_caller(&caller, CancelRequest { job_id: id.clone() }))
        .await
    {
        Ok(_) => Redirect::to(&format!("/jobs/{id}")).into_response(),
        Err(e) => failed(e),
    }
}

// ---- models ---------------------------------------------------------------------------

fn split_text(d: Option<&halyard_core::proto::DeploymentInfo>) -> String {
    match d {
        Some(d) if !d.variants.is_empty() => d
            .variants
            .iter()
            .map(|v| format!("v{} {}%", v.version, v.weight))
            .collect::<Vec<_>>()
            .join(", "),
        _ => "not deployed".into(),
    }
}

async fn models_page(
    State(c): Shared,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let models = answer(
        c.models
            .list_models(as_caller(&caller, ListModelsRequest {}))
            .await,
    )?
    .models;
    let now = now_ms();
    let rows: Vec<Vec<String>> = models
        .iter()
        .map(|m| {
            let last = m.versions.iter().max_by_key(|v| v.version);
            vec![
                format!("<a href=\"/models/{0}\">{0}</a>", esc(&m.name)),
                m.versions.len().to_string(),
                last.map(|v| esc(&v.model_type)).unwrap_or_default(),
                esc(&split_text(m.deployment.as_ref())),
                last.map(|v| ago(v.created_ms, now)).unwrap_or_default(),
            ]
        })
        .collect();
    let (who, csrf) = who(&caller, &headers);
    let body = table(
        &["Model", "Versions", "Type", "Serving", "Last version"],
        &rows,
        "No model yet: a job that succeeds publishes one.",
    );
    Ok(Html(page("Models", "/models", &who, &csrf, &body)).into_response())
}

/// The live parts of a model's page: its experiment and its drift.
async fn model_parts(c: &Console, caller: &Caller, name: &str) -> (String, String) {
    let experiment = match c
        .models
        .experiment(as_caller(caller, ExperimentRequest { name: name.into() }))
        .await
    {
        Ok(e) => {
            let e = e.into_inner();
            let rows: Vec<Vec<String>> = e
                .variants
                .iter()
                .map(|v| {
                    let control = v.version == e.control;
                    vec![
                        format!("v{}{}", v.version, if control { " (control)" } else { "" }),
                        format!("{}%", v.weight),
                        thousands(v.trials),
                        thousands(v.conversions),
                        format!("{:.2}%", v.rate * 100.0),
                        if control {
                            "–".into()
                        } else {
                            format!(
                                "{:+.2} pts [{:+.2}, {:+.2}]",
                                v.difference * 100.0,
                                v.seq_low * 100.0,
                                v.seq_high * 100.0
                            )
                        },
                        if control {
                            "–".into()
                        } else {
                            format!("{:.4}", v.seq_p_value)
                        },
                    ]
                })
                .collect();
            let srm = if e.srm_mismatch {
                format!(
                    "<p class=\"error\">Sample ratio mismatch (p = {:.1e}): the assignment or the feedback is broken; do not trust these results.</p>",
                    e.srm_p_value
                )
            } else {
                String::new()
            };
            format!(
                "{srm}{}",
                table(
                    &[
                        "Variant",
                        "Weight",
                        "Outcomes",
                        "Conversions",
                        "Rate",
                        "Difference (always-valid 95%)",
                        "p (always valid)"
                    ],
                    &rows,
                    "No outcome fed back yet (POST /v1/models/NAME:feedback)."
                )
            )
        }
        Err(e) => format!("<p class=\"empty\">{}</p>", esc(e.message())),
    };
    let drift = match c
        .models
        .drift(as_caller(caller, DriftRequest { name: name.into() }))
        .await
    {
        Ok(d) => {
            let r: serde_json::Value =
                serde_json::from_str(&d.into_inner().json).unwrap_or_default();
            let mut out = String::new();
            for v in r["versions"].as_array().into_iter().flatten() {
                let rows: Vec<Vec<String>> = v["features"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|f| {
                        let drifted = f["drifted"].as_bool() == Some(true);
                        vec![
                            esc(f["name"].as_str().unwrap_or("")),
                            esc(f["method"].as_str().unwrap_or("")),
                            number(f["score"].as_f64().unwrap_or(f64::NAN)),
                            number(f["psi"].as_f64().unwrap_or(f64::NAN)),
                            if drifted {
                                "<span class=\"state failed\">drift</span>".into()
                            } else {
                                "–".into()
                            },
                        ]
                    })
                    .collect();
                out.push_str(&format!(
                    "<h3>Version {} · {} records</h3>{}",
                    v["version"],
                    thousands(v["rows"].as_u64().unwrap_or(0)),
                    table(&["Feature", "Method", "Score", "PSI", "Drift"], &rows, "")
                ));
            }
            if out.is_empty() {
                out = format!(
                    "<p class=\"empty\">No whole window yet: each executor scores every {} records it serves against the training data.</p>",
                    thousands(r["window"].as_u64().unwrap_or(0))
                );
            }
            out
        }
        Err(e) => format!("<p class=\"empty\">{}</p>", esc(e.message())),
    };
    (experiment, drift)
}

/// `/models/{name}/report[?version=N]`: the version's report (`halyard report`), a page of
/// its own that reads offline once saved.
async fn report_page(
    State(c): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    uri: Uri,
) -> Result<Response, Refusal> {
    let target = match query(&uri).get("version") {
        Some(v) => format!("{name}@{v}"),
        None => name,
    };
    let report = answer(
        c.models
            .report(as_caller(&caller, ReportRequest { target }))
            .await,
    )?;
    Ok(Html(report.html).into_response())
}

async fn model_page(
    State(c): Shared,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, Refusal> {
    let mut m = answer(
        c.models
            .get_model(as_caller(&caller, GetModelRequest { name: name.clone() }))
            .await,
    )?;
    m.versions.sort_by_key(|v| std::cmp::Reverse(v.version));
    let (who, csrf) = who(&caller, &headers);
    let now = now_ms();
    let deployed = m.deployment.as_ref();
    let may_deploy = caller.may(Action::Deploy);
    let rows: Vec<Vec<String>> = m
        .versions
        .iter()
        .map(|v| {
            let key = [
                "test_auc",
                "test_log_loss",
                "test_rmse",
                "test_mae",
                "test_poisson_deviance",
                "test_smape",
                "silhouette",
                "test_qini",
            ]
            .iter()
                .filter_map(|k| v.metrics.get(*k).map(|x| format!("{k} {}", number(*x))))
                .collect::<Vec<_>>()
                .join(", ");
            let serving = deployed
                .and_then(|d| d.variants.iter().find(|x| x.version == v.version))
                .map(|x| format!("{}%", x.weight))
                .unwrap_or_else(|| "–".into());
            let mut row = vec![
                format!(
                    "v{v} <a class=\"report\" href=\"/models/{n}/report?version={v}\">report</a>",
                    n = esc(&name),
                    v = v.version
                ),
                esc(&v.model_type),
                esc(&key),
                format!("<a href=\"/jobs/{0}\">{0}</a>", esc(&v.job_id)),
                format!("<code title=\"{}\">{}</code>", esc(&v.data_digest), esc(&v.data_source)),
                ago(v.created_ms, now),
                serving,
            ];
            if may_deploy {
                row.push(format!(
                    "<form method=\"post\" action=\"/console/deploy/{n}\" data-confirm=\"Send all traffic of {n} to version {v}?\">\
                     <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"action\" value=\"deploy\">\
                     <input type=\"hidden\" name=\"version\" value=\"{v}\"><button name=\"deploy-{v}\">Deploy</button></form>\
                     <form method=\"post\" action=\"/console/deploy/{n}\" class=\"inline\" data-confirm=\"Send a share of {n}'s traffic to version {v}?\">\
                     <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"action\" value=\"canary\">\
                     <input type=\"hidden\" name=\"version\" value=\"{v}\"><input name=\"percent\" type=\"number\" min=\"1\" max=\"99\" value=\"10\" aria-label=\"canary percent\">\
                     <button>Canary</button></form>",
                    n = esc(&name),
                    v = v.version
                ));
            }
            row
        })
        .collect();
    let mut head = vec![
        "Version",
        "Type",
        "Test metrics",
        "Job",
        "Data",
        "Published",
        "Traffic",
    ];
    if may_deploy {
        head.push("Change");
    }
    let mut body = format!(
        "<p>Serving: <b id=\"split\">{}</b>{}</p>",
        esc(&split_text(deployed)),
        deployed
            .map(|d| {
                let aliases: Vec<String> = d
                    .aliases
                    .iter()
                    .map(|(a, v)| format!("{} → v{v}", esc(a)))
                    .collect();
                format!(
                    " · aliases {} · {} earlier state(s) kept for rollback",
                    aliases.join(", "),
                    d.history
                )
            })
            .unwrap_or_default()
    );
    if may_deploy && deployed.is_some_and(|d| !d.variants.is_empty()) {
        let canary =
            deployed.is_some_and(|d| d.aliases.contains_key(halyard_core::registry::CANARY));
        for (action, label, confirm) in [
            (
                "promote",
                "Promote canary",
                "Make the canary production, with all traffic?",
            ),
            (
                "rollback",
                "Roll back",
                "Restore the deployment before the last change?",
            ),
            (
                "undeploy",
                "Undeploy",
                "Stop serving this model? Its versions stay registered.",
            ),
        ] {
            if action == "promote" && !canary {
                continue;
            }
            body.push_str(&format!(
                "<form method=\"post\" action=\"/console/deploy/{}\" class=\"inline\" data-confirm=\"{confirm}\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"action\" value=\"{action}\">\
                 <button class=\"{}\">{label}</button></form>",
                esc(&name),
                if action == "promote" { "" } else { "danger" }
            ));
        }
    }
    body.push_str("<h2>Versions</h2>");
    body.push_str(&table(&head, &rows, "No version."));
    let (experiment, drift) = model_parts(&c, &caller, &name).await;
    body.push_str(&format!(
        "<div data-live=\"/live/models/{}\"><h2>Experiment</h2><div id=\"experiment\">{experiment}</div>\
         <h2>Input drift</h2><div id=\"drift\">{drift}</div></div>",
        esc(&name)
    ));
    Ok(Html(page(
        &format!("Model {name}"),
        "/models",
        &who,
        &csrf,
        &body,
    ))
    .into_response())
}

async fn model_live(
    State(c): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Response {
    let (experiment, drift) = model_parts(&c, &caller, &name).await;
    axum::Json(json!({ "done": false, "parts": { "experiment": experiment, "drift": drift } }))
        .into_response()
}

async fn deploy(
    State(c): Shared,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let f = fields(&body);
    if let Some(r) = csrf_refusal(&headers, &f) {
        return r;
    }
    let change = change_of(
        field(&f, "action"),
        field(&f, "version").parse::<u64>().ok(),
        field(&f, "percent").parse::<u32>().ok(),
    );
    let change = match change {
        Ok(c) => c,
        Err(e) => return failed(e),
    };
    let req = DeployRequest {
        name: name.clone(),
        change: Some(change),
    };
    match c.models.deploy(as_caller(&caller, req)).await {
        Ok(_) => Redirect::to(&format!("/models/{name}")).into_response(),
        Err(e) => failed(e),
    }
}

/// A deployment change by name, as the model page's buttons and `POST
/// /v1/models/{name}/deploy` say it: `deploy` or `canary` (a `version`; a canary takes
/// `percent`, default 10), `promote`, `rollback`, `undeploy`.
fn change_of(action: &str, version: Option<u64>, percent: Option<u32>) -> Result<Change, Status> {
    let version =
        || version.ok_or_else(|| Status::invalid_argument("say which version (a number)"));
    let percent = percent.unwrap_or(10);
    match action {
        "deploy" => version().map(|v| {
            Change::Deploy(DeployVersion {
                version: v,
                alias: String::new(),
                percent: None,
            })
        }),
        "canary" => version().map(|v| {
            Change::Deploy(DeployVersion {
                version: v,
                alias: halyard_core::registry::CANARY.into(),
                percent: Some(percent),
            })
        }),
        "promote" => Ok(Change::Promote(Promote {
            alias: String::new(),
        })),
        "rollback" => Ok(Change::Rollback(Rollback {})),
        "undeploy" => Ok(Change::Undeploy(Undeploy {})),
        other => Err(Status::invalid_argument(format!(
            "unknown change {other:?}: deploy, canary, promote, rollback or undeploy"
        ))),
    }
}

// ---- serving --------------------------------------------------------------------------

/// The serving table: per model and executor, rates since the previous read and latency.
async fn serving_part(c: &Console) -> String {
    let (rows, unreachable) = c.reads.rows(c.gateway.scrape_executors().await);
    let per_second = |x: Option<f64>| x.map_or("…".to_string(), |v| format!("{v:.1}"));
    let ms = |x: Option<f64>| x.map_or("–".to_string(), |v| format!("{:.1}", v * 1e3));
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                format!("<a href=\"/models/{0}\">{0}</a>", esc(&r.model)),
                esc(&r.executor),
                format!("<span class=\"rate\">{}</span>", per_second(r.ok_rate)),
                per_second(r.error_rate),
                ms(r.p50),
                ms(r.p99),
                per_second(r.records_rate),
                format!("<span class=\"total\">{}</span>", thousands(r.total as u64)),
                thousands(r.errors as u64),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "Model",
            "Executor",
            "Requests/s",
            "Errors/s",
            "p50 (ms)",
            "p99 (ms)",
            "Records/s",
            "Requests",
            "Errors",
        ],
        &cells,
        "No executor serves a model yet: deploy one from its model page.",
    );
    if !unreachable.is_empty() {
        out.push_str(&format!(
            "<p class=\"error\">Not read: {}</p>",
            esc(&unreachable.join("; "))
        ));
    }
    out
}

async fn serving_page(
    State(c): Shared,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Response {
    let (who, csrf) = who(&caller, &headers);
    let body = format!(
        "<p class=\"hint\">Read from every serving executor's metrics each second: rates and \
         latency over the last second (since it started, before the second read).</p>\
         <div data-live=\"/live/serving\"><div id=\"serving\">{}</div></div>",
        serving_part(&c).await
    );
    Html(page("Serving", "/serving", &who, &csrf, &body)).into_response()
}

async fn serving_live(State(c): Shared) -> Response {
    axum::Json(json!({ "done": false, "parts": { "serving": serving_part(&c).await } }))
        .into_response()
}

// ---- the JSON API -----------------------------------------------------------------------

fn json_of(r: Result<serde_json::Value, Status>) -> Response {
    match r {
        Ok(v) => axum::Json(v).into_response(),
        Err(s) => {
            let failure = Failure::from_grpc_code(s.code());
            halyard_serving::ApiError::new(failure, s.message().to_string()).into_response()
        }
    }
}

async fn cluster_json(State(c): Shared, Extension(caller): Extension<Caller>) -> Response {
    let r = c
        .jobs
        .cluster_status(as_caller(&caller, ClusterStatusRequest {}))
        .await
        .map(|s| {
            let s = s.into_inner();
            json!({
                "leader": s.leader,
                "sql_endpoint": s.sql_endpoint,
                "executors": s.executors.iter().map(|e| json!({
                    "id": e.id, "address": e.address, "cpu_slots": e.cpu_slots,
                    "running_tasks": e.running_tasks, "memory_mb": e.memory_mb,
                    "gpus": e.gpus, "version": e.version,
                })).collect::<Vec<_>>(),
            })
        });
    json_of(r)
}

fn job_json_value(j: &JobInfo) -> serde_json::Value {
    json!({
        "id": j.id, "name": j.name, "state": j.state, "attempt": j.attempt, "owner": j.owner,
        "executor": j.executor, "created_ms": j.created_ms, "updated_ms": j.updated_ms,
        "epoch": j.epoch, "epochs": j.epochs, "loss": j.loss, "metrics": j.metrics,
        "artifact": j.artifact, "error": j.error, "model_type": j.model_type,
        "workers": j.workers, "schedule": j.schedule,
    })
}

async fn jobs_json(State(c): Shared, Extension(caller): Extension<Caller>) -> Response {
    let r = c
        .jobs
        .list_jobs(as_caller(&caller, ListJobsRequest {}))
        .await
        .map(|r| json!({ "jobs": r.into_inner().jobs.iter().map(job_json_value).collect::<Vec<_>>() }));
    json_of(r)
}

async fn job_json(
    State(c): Shared,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let r = c
        .jobs
        .get_job(as_caller(&caller, GetJobRequest { job_id: id }))
        .await
        .map(|r| job_json_value(&r.into_inner().job.unwrap_or_default()));
    json_of(r)
}

/// `POST /v1/jobs`: submit the spec in the body (TOML), as `halyard submit` on the
/// scheduler's machine would (relative paths are the scheduler's).
async fn submit_json(
    State(c): Shared,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Response {
    let req = match submit_request(&String::from_utf8_lossy(&body)) {
        Ok(r) => r,
        Err(why) => return json_of(Err(Status::invalid_argument(why))),
    };
    let r = c
        .jobs
        .submit(as_caller(&caller, req))
        .await
        .map(|r| job_json_value(&r.into_inner().job.unwrap_or_default()));
    json_of(r)
}

/// `GET /v1/jobs/{id}/events`: the job's events and log lines, oldest first.
async fn job_events_json(
    State(c): Shared,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let job = c
        .jobs
        .get_job(as_caller(&caller, GetJobRequest { job_id: id.clone() }))
        .await;
    let lines = c
        .jobs
        .logs(as_caller(&caller, LogsRequest { job_id: id.clone() }))
        .await;
    let r = job.and_then(|j| {
        let state = j.into_inner().job.unwrap_or_default().state;
        let events: Vec<serde_json::Value> = lines?
            .into_inner()
            .lines
            .iter()
            .map(|l| json!({ "time_ms": l.time_ms, "source": l.source, "message": l.message }))
            .collect();
        Ok(json!({ "job": id, "state": state, "events": events }))
    });
    json_of(r)
}

/// A registered model as JSON: its versions (newest first, with metrics and lineage) and
/// its deployment (variants with their weights, aliases).
fn model_json_value(m: &GetModelResponse) -> serde_json::Value {
    let mut versions: Vec<&ModelVersionInfo> = m.versions.iter().collect();
    versions.sort_by_key(|v| std::cmp::Reverse(v.version));
    let d = m.deployment.clone().unwrap_or_default();
    json!({
        "name": m.name,
        "versions": versions.iter().map(|v| json!({
            "version": v.version, "model_type": v.model_type, "metrics": v.metrics,
            "artifact": v.artifact, "job_id": v.job_id, "data_source": v.data_source,
            "created_ms": v.created_ms,
        })).collect::<Vec<_>>(),
        "deployment": {
            "variants": d.variants.iter().map(|v| json!({ "version": v.version, "weight": v.weight }))
                .collect::<Vec<_>>(),
            "aliases": d.aliases,
            "updated_ms": d.updated_ms,
        },
    })
}

/// `GET /v1/models/{name}/versions`: the registered model, as `halyard model NAME`.
async fn versions_json(
    State(c): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Response {
    model_answer(
        c.models
            .get_model(as_caller(&caller, GetModelRequest { name }))
            .await,
    )
}

/// A model service's answer as the JSON routes give it ([`model_json_value`]).
fn model_answer(r: Result<tonic::Response<GetModelResponse>, Status>) -> Response {
    json_of(r.map(|r| model_json_value(&r.into_inner())))
}

/// `POST /v1/models/{name}/deploy`: `{"action": "deploy", "version": 2}` (or `canary`
/// with `percent`, `promote`, `rollback`, `undeploy`); answers the model as
/// [`versions_json`] does, with its new deployment.
async fn deploy_json(
    State(c): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let change = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .filter(|b| b["action"].is_string())
        .ok_or_else(|| {
            Status::invalid_argument(
                "the body must be JSON such as {\"action\": \"deploy\", \"version\": 2}",
            )
        })
        .and_then(|b| {
            let percent = b["percent"]
                .as_u64()
                .map(|p| u32::try_from(p).unwrap_or(u32::MAX));
            change_of(
                b["action"].as_str().unwrap_or_default(),
                b["version"].as_u64(),
                percent,
            )
        });
    let change = match change {
        Ok(c) => c,
        Err(e) => return json_of(Err(e)),
    };
    let req = DeployRequest {
        name,
        change: Some(change),
    };
    model_answer(c.models.deploy(as_caller(&caller, req)).await)
}

/// `POST /v1/jobs/{id}/cancel`.
async fn cancel_json(
    State(c): Shared,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let r = c
        .jobs
        .cancel(as_caller(&caller, CancelRequest { job_id: id }))
        .await
        .map(|r| job_json_value(&r.into_inner().job.unwrap_or_default()));
    json_of(r)
}

#[cfg(test)]
mod tests {
    use halyard_serving::access::ROUTES;

    /// A documented path in the route table's terms: `{…}` as `{model}`, a `:call` suffix
    /// dropped.
    fn as_route(path: &str) -> String {
        let mut out = String::new();
        let mut inside = false;
        for c in path.chars() {
            match c {
                '{' => {
                    inside = true;
                    out.push_str("{model}");
                }
                '}' => inside = false,
                _ if !inside => out.push(c),
                _ => {}
            }
        }
        match out.split_once("{model}:") {
            Some((head, _)) => format!("{head}{{model}}"),
            None => out,
        }
    }

    #[test]
    fn a_search_shows_each_trial_s_losses_by_rung_as_a_line() {
        use halyard_core::proto::{JobInfo, TrialInfo};
        let trial = |index, losses: Vec<f64>, best| TrialInfo {
            index,
            losses,
            best,
            state: "completed".into(),
            ..Default::default()
        };
        let job = JobInfo {
            trials: vec![
                trial(0, vec![0.61, 0.55], true),
                trial(1, vec![0.64], false),
                trial(2, vec![], false),
            ],
            ..Default::default()
        };
        let html = super::job_results(&job);
        // Two trials finished a rung: two lines, the best one named so.
        assert_eq!(html.matches("<polyline").count(), 2, "{html}");
        assert!(html.contains("trial 0 (best)"), "{html}");
        assert!(html.contains("0.6100 → 0.5500"), "{html}");
    }

    #[test]
    fn the_openapi_document_lists_every_json_route_and_no_other() {
        let doc: serde_json::Value = serde_json::from_str(include_str!("openapi.json")).unwrap();
        let mut documented = std::collections::BTreeSet::new();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for method in ops.as_object().unwrap().keys() {
                let m = method.to_uppercase();
                let route = as_route(path);
                assert!(
                    ROUTES.iter().any(|(rm, rp, _)| *rm == m && *rp == route),
                    "{m} {path} is documented but not in ROUTES"
                );
                documented.insert((m, route));
            }
        }
        for (m, p, _) in ROUTES {
            if p.starts_with("/v1/") || *p == "/metrics" || *p == "/healthz" {
                assert!(
                    documented.contains(&(m.to_string(), p.to_string())),
                    "{m} {p} is a JSON route missing from openapi.json"
                );
            }
        }
    }
}
