//! The prediction gateway that every node runs: it answers for any deployed model, from
//! its own host when this executor serves the model, else by forwarding to an executor
//! that does (round robin over the replicas the coordinator lists, the next one on a
//! failure). Outcomes (`:feedback`) and exposures (a keyed prediction scored here) are
//! appended to the node's event log ([`halyard_core::events`]).
//!
//! **Invariants.** A forwarded request carries [`FORWARDED`] and is never forwarded again,
//! so requests cannot loop. Only connection failures and 503s move on to another replica:
//! a 4xx is the caller's to fix and is returned as is.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use bytes::Bytes;
use halyard_core::coord::Coordinator;
use halyard_core::events::{Event, EventLog};
use halyard_core::metrics::Metrics;
use halyard_core::registry::{Deployment, MetricDecl, NodeTally, ServingInfo};
use halyard_core::tls::Tls;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::api::{
    ApiError, FeedbackBody, FeedbackReply, ForecastBody, ForecastReply, MAX_KEY_BYTES, PredictBody,
    PredictReply,
};
use crate::host::Host;
use crate::sticky::Sticky;

/// Header marking a request forwarded by another node.
pub const FORWARDED: &str = "x-halyard-forwarded";
/// How often the gateway reads which executors serve what without being woken: a change
/// to their advertisements wakes it at once.
const REFRESH: Duration = Duration::from_millis(1000);
/// How long a replica that failed is skipped.
const BENCH_FAILED: Duration = Duration::from_secs(3);
/// How long one forwarded attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Why `value` of `metric` cannot be fed back to model `name`, whose experiment declares
/// `declared` (none: any well-named metric is taken).
fn declared_value(
    name: &str,
    declared: &[MetricDecl],
    metric: &str,
    value: f64,
) -> Result<(), ApiError> {
    if declared.is_empty() {
        return Ok(());
    }
    let Some(d) = declared.iter().find(|d| d.name == metric) else {
        let names: Vec<&str> = declared.iter().map(|d| d.name.as_str()).collect();
        return Err(ApiError::bad_request(format!(
            "model {name} declares the metrics {}, not {metric}: feed one of those, or declare it with `halyard deploy {name} --metrics …`",
            names.join(", ")
        )));
    };
    d.check(value).map_err(ApiError::bad_request)
}

/// How long `:feedback` trusts a deployment it read (a split changed by hand reaches
/// outcomes sent by key within this).
const DEPLOYMENT_TTL: Duration = Duration::from_secs(1);
/// Most outcomes one `:feedback` request takes.
pub const MAX_FEEDBACK_BATCH: usize = 10_000;

/// A deployment as read at a moment (`None`: the model has none).
type ReadDeployment = (Instant, Option<Arc<Deployment>>);

/// A node's gateway.
pub struct Gateway {
    node: String,
    coord: Coordinator,
    host: Option<Arc<Host>>,
    client: reqwest::Client,
    /// `https` when nodes talk TLS, else `http`.
    scheme: &'static str,
    /// What every executor serves, as last read.
    replicas: RwLock<Arc<Vec<ServingInfo>>>,
    next: AtomicUsize,
    failed: Mutex<HashMap<String, Instant>>,
    metrics: Metrics,
    events: Arc<EventLog>,
    /// Deployments as last read, for `:feedback` by key.
    deployments: Mutex<HashMap<String, ReadDeployment>>,
    /// Versions known to exist, per model (versions are immutable: never forgotten).
    versions: Mutex<HashMap<String, HashSet<u64>>>,
    /// Keys' versions while a bandit runs (the host's when it serves, else its own).
    sticky: Arc<Sticky>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("node", &self.node).finish()
    }
}

/// What a request asks of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// Scores.
    Predict,
    /// Forecasts.
    Forecast,
}

impl Verb {
    fn as_str(self) -> &'static str {
        match self {
            Verb::Predict => "predict",
            Verb::Forecast => "forecast",
        }
    }
}

/// The keys a prediction exposes: the request's `key` (one exposure), or each record's
/// `key_field` (one per record, in order); none without a key.
fn exposure_keys(body: &PredictBody) -> Vec<String> {
    let clip = |k: String| {
        if k.len() <= MAX_KEY_BYTES {
            k
        } else {
            let mut end = MAX_KEY_BYTES;
            while !k.is_char_boundary(end) {
                end -= 1;
            }
            k[..end].to_string()
        }
    };
    match (&body.key, &body.key_field) {
        (Some(k), None) => vec![clip(k.clone())],
        (_, Some(f)) => body
            .records
            .iter()
            .chain(body.record.iter())
            .map(|r| {
                r.get(f)
                    .and_then(crate::host::key_string)
                    .map_or_else(String::new, clip)
            })
            .collect(),
        (None, None) => Vec::new(),
    }
}

fn not_here(name: &str) -> ApiError {
    ApiError::unavailable(format!("model {name} is not loaded here: retry"))
}

pub(crate) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "request body is not valid JSON for this call: {e} (see docs/serving.md)"
        ))
    })
}

impl Gateway {
    /// A gateway for node `node`, serving from `host` when given; it forwards to other
    /// nodes with the node's own key `token` (the caller's key was checked here), over
    /// (mutual) TLS when `tls` is given.
    pub fn new(
        node: String,
        coord: Coordinator,
        host: Option<Arc<Host>>,
        token: &str,
        tls: Option<&Tls>,
        metrics: Metrics,
        events: Arc<EventLog>,
    ) -> Arc<Gateway> {
        let mut auth = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .expect("a key is ASCII");
        auth.set_sensitive(true);
        let headers =
            reqwest::header::HeaderMap::from_iter([(reqwest::header::AUTHORIZATION, auth)]);
        let mut builder = reqwest::Client::builder()
            .default_headers(headers)
            .pool_max_idle_per_host(64)
            .timeout(ATTEMPT_TIMEOUT);
        if let Some(tls) = tls {
            builder = builder.use_preconfigured_tls((*tls.client).clone());
        }
        let client = builder.build().expect("an HTTP client builds");
        let sticky = host
            .as_ref()
            .map_or_else(|| Sticky::new(&node, coord.clone()), |h| h.sticky().clone());
        Arc::new(Gateway {
            scheme: if tls.is_some() { "https" } else { "http" },
            node,
            coord,
            host,
            client,
            replicas: RwLock::new(Arc::default()),
            next: AtomicUsize::new(0),
            failed: Mutex::new(HashMap::new()),
            metrics,
            events,
            deployments: Mutex::new(HashMap::new()),
            versions: Mutex::new(HashMap::new()),
            sticky,
        })
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Each serving executor's `GET /metrics` text (with the node's key), or why it could
    /// not be read.
    pub async fn scrape_executors(&self) -> Vec<(String, Result<String, String>)> {
        let serving = self.serving();
        let reads = serving.iter().map(|r| async move {
            let url = format!("{}://{}/metrics", self.scheme, r.address);
            let text = async {
                let resp = self
                    .client
                    .get(&url)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if !resp.status().is_success() {
                    return Err(format!("answered {}", resp.status()));
                }
                resp.text().await.map_err(|e| e.to_string())
            }
            .await;
            (r.executor.clone(), text)
        });
        futures::future::join_all(reads).await
    }

    /// Run one prediction API call (`call`: `predict`, `forecast` or `feedback`) of model
    /// `name`, counting it and its latency. A model the cluster does not serve is counted
    /// as `-`: callers cannot grow the label set by naming models.
    pub async fn observed<T>(
        &self,
        name: &str,
        call: &str,
        work: impl std::future::Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        let started = Instant::now();
        let result = work.await;
        let known = result.is_ok() || self.serving().iter().any(|r| r.models.contains_key(name));
        let model = if known { name } else { "-" };
        let code = match &result {
            Ok(_) => StatusCode::OK,
            Err(e) => e.http_status(),
        };
        self.metrics
            .prediction_requests
            .with_label_values(&[model, call, code.as_str()])
            .inc();
        self.metrics
            .prediction_seconds
            .with_label_values(&[model, call])
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// The coordinator.
    pub fn coord(&self) -> &Coordinator {
        &self.coord
    }

    /// Keep the list of serving executors fresh until `shutdown`. (Deployments are read
    /// only when needed: executors apply them, the gateway just routes.)
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let wake = self.coord.gateway_wake();
        loop {
            match self.coord.serving().await {
                Ok(replicas) => *self.replicas.write().expect("replicas lock") = Arc::new(replicas),
                Err(e) => warn!(error = %e, "cannot read serving state"),
            }
            tokio::select! {
                _ = wake.changed() => {}
                _ = tokio::time::sleep(REFRESH) => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
    }

    /// What every executor serves, as last read.
    pub fn serving(&self) -> Arc<Vec<ServingInfo>> {
        self.replicas.read().expect("replicas lock").clone()
    }

    /// Executors serving `name`, starting at the next in turn, skipping recent failures
    /// (unless every one failed recently).
    fn replicas(&self, name: &str) -> Vec<String> {
        let mut all: Vec<String> = self
            .serving()
            .iter()
            .filter(|r| {
                r.models.contains_key(name)
                    && Some(r.executor.as_str()) != self.host.as_ref().map(|h| h.executor())
            })
            .map(|r| r.address.clone())
            .collect();
        if all.is_empty() {
            return all;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % all.len();
        all.rotate_left(start);
        let failed = self.failed.lock().expect("failed lock");
        let (ok, bad): (Vec<String>, Vec<String>) = all
            .into_iter()
            .partition(|a| failed.get(a).is_none_or(|t| t.elapsed() > BENCH_FAILED));
        ok.into_iter().chain(bad).collect()
    }

    fn mark_failed(&self, address: &str) {
        self.failed
            .lock()
            .expect("failed lock")
            .insert(address.to_string(), Instant::now());
    }

    /// Why nothing could serve `name`: unknown (404) or deployed but not loaded (503).
    async fn none_serves(&self, name: &str) -> ApiError {
        match self.coord.deployment(name).await.ok().flatten() {
            Some(d) if !d.current.versions().is_empty() => ApiError::unavailable(format!(
                "model {name} is deployed but no executor has loaded it yet: retry shortly"
            )),
            _ => ApiError::not_found(format!(
                "no model {name} is deployed (see `halyard models`; deploy with `halyard deploy {name} --version N`)"
            )),
        }
    }

    /// Send `body` to another executor serving `name`: `(status, body)` of the first
    /// replica that answers (a 503 counts as not answering).
    async fn forward(
        &self,
        name: &str,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), ApiError> {
        let mut last = None;
        for address in self.replicas(name) {
            let url = format!("{}://{address}{path}", self.scheme);
            let req = match &body {
                Some(b) => self
                    .client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(b.clone()),
                None => self.client.get(&url),
            };
            match req.header(FORWARDED, &self.node).send().await {
                Ok(resp) => {
                    let status = StatusCode::from_u16(resp.status().as_u16())
                        .unwrap_or(StatusCode::BAD_GATEWAY);
                    match resp.bytes().await {
                        Ok(bytes) if status != StatusCode::SERVICE_UNAVAILABLE => {
                            return Ok((status, bytes));
                        }
                        Ok(bytes) => {
                            last = Some(String::from_utf8_lossy(&bytes).into_owned());
                        }
                        Err(e) => {
                            self.mark_failed(&address);
                            last = Some(format!("{address}: {e}"));
                        }
                    }
                }
                Err(e) => {
                    debug!(%address, error = %e, "replica failed; trying the next");
                    self.mark_failed(&address);
                    last = Some(format!("{address}: {e}"));
                }
            }
        }
        match last {
            Some(why) => Err(ApiError::unavailable(format!(
                "no executor serving model {name} answered; last: {why}"
            ))),
            None => Err(self.none_serves(name).await),
        }
    }

    /// Forward and decode the reply (or the replica's error).
    async fn forward_json<T: DeserializeOwned>(
        &self,
        name: &str,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<T, ApiError> {
        let (status, bytes) = self.forward(name, path, body).await?;
        if status.is_success() {
            serde_json::from_slice(&bytes)
                .map_err(|e| ApiError::internal(format!("a replica's answer did not decode: {e}")))
        } else {
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            Err(ApiError::new(
                halyard_core::Failure::from_http_status(status.as_u16()),
                message,
            ))
        }
    }

    fn path(name: &str, verb: Verb) -> String {
        format!("/v1/models/{name}:{}", verb.as_str())
    }

    /// Answer from this executor's host when it serves `name`, else (unless the request
    /// was forwarded here) from a replica.
    async fn local_or_forward<B, R, F, Fut>(
        &self,
        name: &str,
        verb: Verb,
        body: B,
        forwarded: bool,
        local: F,
    ) -> Result<R, ApiError>
    where
        B: Serialize,
        R: DeserializeOwned,
        F: FnOnce(Arc<Host>, B) -> Fut,
        Fut: std::future::Future<Output = Option<Result<R, ApiError>>>,
    {
        if let Some(h) = &self.host
            && h.served(name).is_some()
        {
            // Unloaded in between: the caller retries (503).
            return local(h.clone(), body)
                .await
                .unwrap_or_else(|| Err(not_here(name)));
        }
        if forwarded {
            return Err(not_here(name));
        }
        let bytes = Bytes::from(serde_json::to_vec(&body).expect("bodies serialise"));
        self.forward_json(name, &Self::path(name, verb), Some(bytes))
            .await
    }

    /// Score: locally when served here, else on a replica. `forwarded` requests are
    /// only served locally.
    pub async fn predict(
        &self,
        name: &str,
        body: PredictBody,
        forwarded: bool,
    ) -> Result<PredictReply, ApiError> {
        let keys = exposure_keys(&body);
        let reply = self
            .local_or_forward(name, Verb::Predict, body, forwarded, |h, b| async move {
                h.predict(name, b).await
            })
            .await?;
        // The node that scored records the exposures (a forwarded request's are the
        // replica's).
        if !keys.is_empty() && reply.executor == self.node {
            let now = halyard_core::records::now_ms();
            // One key per request (its first prediction's version) or one per record.
            let events = keys
                .iter()
                .zip(&reply.predictions)
                .map(|(k, p)| Event::exposure(name, p.version, k, now))
                .collect();
            self.events.record(events);
        }
        Ok(reply)
    }

    /// Score from raw JSON bytes (the HTTP path): parsed once, refused here when
    /// malformed, forwarded without re-encoding.
    pub async fn predict_bytes(
        &self,
        name: &str,
        body: Bytes,
        forwarded: bool,
    ) -> Result<PredictReply, ApiError> {
        let parsed: PredictBody = parse(&body)?;
        if forwarded || self.host.as_ref().is_some_and(|h| h.served(name).is_some()) {
            return self.predict(name, parsed, forwarded).await;
        }
        // Forward the caller's bytes as they came.
        self.forward_json(name, &Self::path(name, Verb::Predict), Some(body))
            .await
    }

    /// Forecast: locally when served here, else on a replica.
    pub async fn forecast(
        &self,
        name: &str,
        body: ForecastBody,
        forwarded: bool,
    ) -> Result<ForecastReply, ApiError> {
        self.local_or_forward(name, Verb::Forecast, body, forwarded, |h, b| async move {
            h.forecast(name, b).await
        })
        .await
    }

    /// The model's input schema: of `version` (404 when it is not deployed), else of the
    /// production version.
    pub async fn schema(
        &self,
        name: &str,
        version: Option<u64>,
        forwarded: bool,
    ) -> Result<serde_json::Value, ApiError> {
        if let Some(s) = self.host.as_ref().and_then(|h| h.schema(name, version)) {
            return s;
        }
        if forwarded {
            return Err(not_here(name));
        }
        let path = match version {
            Some(v) => format!("/v1/models/{name}?version={v}"),
            None => format!("/v1/models/{name}"),
        };
        self.forward_json(name, &path, None).await
    }

    /// A deployment, read at most every [`DEPLOYMENT_TTL`].
    async fn deployment(&self, name: &str) -> Result<Option<Arc<Deployment>>, ApiError> {
        if let Some((at, d)) = self.deployments.lock().expect("cache lock").get(name)
            && at.elapsed() < DEPLOYMENT_TTL
        {
            return Ok(d.clone());
        }
        let d = self.coord.deployment(name).await?.map(Arc::new);
        self.deployments
            .lock()
            .expect("cache lock")
            .insert(name.to_string(), (Instant::now(), d.clone()));
        Ok(d)
    }

    /// Refuse a version of `name` that does not exist.
    async fn known_version(&self, name: &str, version: u64) -> Result<(), ApiError> {
        let known = |v: &HashMap<String, HashSet<u64>>| {
            v.get(name).is_some_and(|set| set.contains(&version))
        };
        if known(&self.versions.lock().expect("cache lock")) {
            return Ok(());
        }
        if self.coord.model_version(name, version).await?.is_none() {
            return Err(ApiError::not_found(format!(
                "model {name} has no version {version}"
            )));
        }
        self.versions
            .lock()
            .expect("cache lock")
            .entry(name.to_string())
            .or_default()
            .insert(version);
        Ok(())
    }

    /// Record outcomes, each for the version that served (or the variant of its `key`),
    /// and answer once they are in the node's event log on disk. Any bad outcome refuses
    /// the whole request (naming it); a log that cannot write answers 503.
    pub async fn feedback(
        &self,
        name: &str,
        batch: Vec<FeedbackBody>,
    ) -> Result<FeedbackReply, ApiError> {
        if batch.is_empty() || batch.len() > MAX_FEEDBACK_BATCH {
            return Err(ApiError::bad_request(format!(
                "{} outcomes: send 1 to {MAX_FEEDBACK_BATCH} per request",
                batch.len()
            )));
        }
        let now = halyard_core::records::now_ms();
        let mut events = Vec::with_capacity(batch.len());
        let many = batch.len() > 1;
        // The experiment's declared metrics, when it declares any.
        let deployment = self.deployment(name).await?;
        let declared = deployment.as_ref().map_or(&[][..], |d| &d.metrics[..]);
        for (i, body) in batch.iter().enumerate() {
            let at = |e: ApiError| {
                if many {
                    ApiError {
                        message: format!("outcome {i}: {}", e.message),
                        ..e
                    }
                } else {
                    e
                }
            };
            let (metric, value) = body.outcome().map_err(at)?;
            declared_value(name, declared, metric, value).map_err(at)?;
            let version = self.credited(name, body).await.map_err(at)?;
            events.push(Event::outcome(
                name,
                version,
                body.key.as_deref().unwrap_or(""),
                metric,
                value,
                now,
            ));
        }
        let version = events.last().map_or(0, |e| e.version);
        let accepted = events.len() as u64;
        self.events.append(events).await?;
        Ok(FeedbackReply { version, accepted })
    }

    /// The version an outcome credits: the one it names, else its key's variant.
    async fn credited(&self, name: &str, body: &FeedbackBody) -> Result<u64, ApiError> {
        let version = match (body.version, &body.key) {
            (Some(v), _) => v,
            (None, Some(key)) => {
                let d = self
                    .deployment(name)
                    .await?
                    .ok_or_else(|| ApiError::not_found(format!("no model {name} is deployed")))?;
                self.sticky.credit(name, key, &d.current).await?.ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "model {name} has no traffic split to find the key's variant: send `version`"
                    ))
                })?
            }
            (None, None) => {
                return Err(ApiError::bad_request(
                    "say which version served: send `version` (from the prediction) or `key`",
                ));
            }
        };
        self.known_version(name, version).await?;
        Ok(version)
    }

    /// The experiment report of `name`: every node's published counts, this node's as
    /// they stand (what was just fed here shows at once).
    pub async fn experiment_report(
        &self,
        name: &str,
    ) -> halyard_core::Result<Option<halyard_core::proto::ExperimentResponse>> {
        let mut tallies: Vec<NodeTally> = self.coord.tallies(name).await?;
        tallies.retain(|t| t.node != self.events.node());
        tallies.extend(self.events.tally(name));
        let deployment = self.coord.deployment(name).await?;
        Ok(crate::experiment::report(
            name,
            deployment.as_ref(),
            &tallies,
        ))
    }

    /// `GET /v1/experiments/{name}`: the experiment report as JSON.
    pub async fn experiment(&self, name: &str) -> Result<serde_json::Value, ApiError> {
        let r = self
            .experiment_report(name)
            .await?
            .ok_or_else(|| ApiError::not_found(crate::experiment::never_deployed(name)))?;
        serde_json::to_value(&r).map_err(|e| ApiError::internal(e.to_string()))
    }

    /// Deployed models and where they are served.
    pub async fn overview(&self) -> Result<serde_json::Value, ApiError> {
        #[derive(Serialize)]
        struct Entry<'a> {
            name: &'a str,
            variants: &'a [halyard_core::registry::Variant],
            aliases: &'a std::collections::BTreeMap<String, u64>,
            executors: Vec<&'a str>,
        }
        let deployments = self.coord.deployments().await?;
        let serving = self.serving();
        let mut entries: Vec<Entry> = deployments
            .iter()
            .filter(|d| !d.current.versions().is_empty())
            .map(|d| Entry {
                name: &d.name,
                variants: &d.current.variants,
                aliases: &d.current.aliases,
                executors: serving
                    .iter()
                    .filter(|r| r.models.contains_key(&d.name))
                    .map(|r| r.executor.as_str())
                    .collect(),
            })
            .collect();
        entries.sort_by_key(|e| e.name);
        Ok(serde_json::json!({ "models": entries }))
    }
}
