//! The model host of an executor: follows the deployments in the coordinator, loads the
//! versions they name from object storage with the candle runtime, and serves them.
//!
//! **Invariants.** A deployment change takes effect on this executor only once every
//! version it names is loaded: the routing table is swapped whole, so a request is served
//! by the old table or the new one, never by a half-loaded model. Requests in flight keep
//! the models they started with; a version no deployment names is dropped from the table
//! and its scoring thread ends when its last request is answered.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use halyard_core::coord::Coordinator;
use halyard_core::events::EventLog;
use halyard_core::metrics::Metrics;
use halyard_core::registry::{Deployment, DeploymentState, DriftWindow, ServingInfo};
use halyard_core::store::{MANIFEST_FILE, Store, WEIGHTS_FILE, read_model};
use halyard_models::drift::{self, Sketch, Window};
use halyard_models::json_records::{Record, RecordEncoder};
use halyard_models::runtime::LoadedModel;
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::api::{
    ApiError, ForecastBody, ForecastReply, PredictBody, PredictReply, Prediction, SeriesForecast,
};
use crate::batcher::{BatchConfig, BatchMetrics, Batcher};
use crate::sticky::Sticky;

/// How often the host looks at the deployments without being woken: a change to them or
/// to the placements wakes it at once ([`halyard_core::coord::Coordinator::serving_wake`]);
/// this pass retries failed loads and re-advertises under a new lease.
pub const REFRESH: Duration = Duration::from_millis(1000);
/// How long a version that failed to load waits before the next try.
const RETRY_LOAD: Duration = Duration::from_secs(5);

/// One loaded version.
#[derive(Debug)]
pub struct Loaded {
    /// Version number.
    pub version: u64,
    /// The artifact in candle tensors.
    pub model: Arc<LoadedModel>,
    /// Its record encoder and scoring thread (response models).
    scorer: Option<(RecordEncoder, Batcher)>,
    /// Counts of the inputs it scored, against its training data (tabular models).
    drift: Option<Mutex<Sketch>>,
}

/// A model as this executor serves it: a deployment state whose versions are all loaded.
#[derive(Debug)]
pub struct Served {
    /// What serves.
    pub state: DeploymentState,
    /// Every version the state names.
    pub versions: BTreeMap<u64, Arc<Loaded>>,
}

type Table = HashMap<String, Arc<Served>>;

/// An executor's loaded models.
pub struct Host {
    executor: String,
    address: String,
    coord: Coordinator,
    store: Store,
    batch: BatchConfig,
    table: RwLock<Arc<Table>>,
    /// Spreads unkeyed requests over a split.
    counter: AtomicU64,
    metrics: Metrics,
    /// Counts each version's requests, failures and times (the guardrails read them).
    events: Arc<EventLog>,
    /// Keys' versions while a bandit runs.
    sticky: Arc<Sticky>,
    /// The executor's current lease ([`Host::run`] sets it): drift windows live under it.
    lease: OnceLock<Arc<AtomicI64>>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("executor", &self.executor)
            .finish()
    }
}

/// Which version serves each record of a request.
enum Choice<'a> {
    Pinned(u64),
    ByKey(&'a DeploymentState),
}

pub(crate) fn key_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Host {
    /// A host with nothing loaded; [`Host::run`] follows the deployments.
    pub fn new(
        executor: String,
        address: String,
        coord: Coordinator,
        store: Store,
        batch: BatchConfig,
        metrics: Metrics,
        events: Arc<EventLog>,
    ) -> Arc<Host> {
        let sticky = Sticky::new(&executor, coord.clone());
        Arc::new(Host {
            executor,
            address,
            coord,
            store,
            batch,
            table: RwLock::new(Arc::new(Table::new())),
            counter: AtomicU64::new(0),
            metrics,
            events,
            sticky,
            lease: OnceLock::new(),
        })
    }

    /// Keys' versions while a bandit runs (the gateway credits outcomes by them).
    pub fn sticky(&self) -> &Arc<Sticky> {
        &self.sticky
    }

    /// This executor's id.
    pub fn executor(&self) -> &str {
        &self.executor
    }

    fn table(&self) -> Arc<Table> {
        self.table.read().expect("table lock").clone()
    }

    /// The model as served here, if it is.
    pub fn served(&self, name: &str) -> Option<Arc<Served>> {
        self.table().get(name).cloned()
    }

    /// Follow the deployments until `shutdown`; advertise what is loaded under `lease`
    /// (the executor's current lease, which changes when it registers again).
    pub async fn run(self: Arc<Self>, lease: Arc<AtomicI64>, mut shutdown: watch::Receiver<bool>) {
        let _ = self.lease.set(lease.clone());
        let mut failed: HashMap<(String, u64), Instant> = HashMap::new();
        let mut advertised: Option<(i64, ServingInfo)> = None;
        let wake = self.coord.serving_wake();
        loop {
            match self.wanted_here().await {
                Ok(deployments) => self.refresh(&deployments, &mut failed).await,
                Err(e) => warn!(error = %e, "cannot read deployments and placements"),
            }
            let info = self.serving_info();
            let lease_now = lease.load(Ordering::Relaxed);
            if advertised.as_ref() != Some(&(lease_now, info.clone())) {
                match self.coord.advertise_serving(&info, lease_now).await {
                    Ok(()) => advertised = Some((lease_now, info)),
                    Err(e) => warn!(error = %e, "cannot advertise served models"),
                }
            }
            tokio::select! {
                _ = wake.changed() => {}
                _ = tokio::time::sleep(REFRESH) => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
    }

    /// The deployments the leader placed on this executor
    /// ([`halyard_core::placement`]).
    async fn wanted_here(&self) -> halyard_core::Result<Vec<Deployment>> {
        let placed: std::collections::BTreeSet<String> = self
            .coord
            .placements()
            .await?
            .into_iter()
            .filter(|p| p.executors.contains(&self.executor))
            .map(|p| p.model)
            .collect();
        let mut deployments = self.coord.deployments().await?;
        deployments.retain(|d| placed.contains(&d.name));
        Ok(deployments)
    }

    fn serving_info(&self) -> ServingInfo {
        ServingInfo {
            executor: self.executor.clone(),
            address: self.address.clone(),
            models: self
                .table()
                .iter()
                .map(|(name, s)| (name.clone(), s.versions.keys().copied().collect()))
                .collect(),
        }
    }

    /// Bring the table in line with `deployments`, loading what is missing first.
    async fn refresh(
        &self,
        deployments: &[Deployment],
        failed: &mut HashMap<(String, u64), Instant>,
    ) {
        let old = self.table();
        let mut next = Table::new();
        let mut changed = false;
        for d in deployments {
            let wanted = d.current.versions();
            if wanted.is_empty() {
                continue;
            }
            if let Some(s) = old.get(&d.name)
                && s.state == d.current
            {
                next.insert(d.name.clone(), s.clone());
                continue;
            }
            let mut versions = BTreeMap::new();
            let mut complete = true;
            for v in wanted {
                let have = old.get(&d.name).and_then(|s| s.versions.get(&v)).cloned();
                let loaded = match have {
                    Some(l) => Some(l),
                    None => self.load(&d.name, v, failed).await,
                };
                let Some(l) = loaded else {
                    complete = false;
                    break;
                };
                versions.insert(v, l);
            }
            if complete {
                info!(model = %d.name, versions = ?versions.keys().collect::<Vec<_>>(), "serving");
                next.insert(
                    d.name.clone(),
                    Arc::new(Served {
                        state: d.current.clone(),
                        versions,
                    }),
                );
                changed = true;
            } else if let Some(s) = old.get(&d.name) {
                // Not all loaded yet: the old state keeps serving.
                next.insert(d.name.clone(), s.clone());
            }
        }
        if changed || next.len() != old.len() {
            for name in old.keys().filter(|n| !next.contains_key(*n)) {
                info!(model = %name, "no longer deployed or placed here: unloaded");
            }
            *self.table.write().expect("table lock") = Arc::new(next);
        }
    }

    /// A version's files, checked against the digests its registry record holds: a file
    /// changed in the store since it was published is refused, naming the file.
    async fn read_checked(
        &self,
        name: &str,
        version: u64,
    ) -> halyard_core::Result<Option<(bytes::Bytes, bytes::Bytes)>> {
        let Some((weights, manifest)) = read_model(&self.store, name, version).await? else {
            return Ok(None);
        };
        if let Some(record) = self.coord.model_version(name, version).await? {
            record.check_file(WEIGHTS_FILE, &weights)?;
            record.check_file(MANIFEST_FILE, &manifest)?;
        }
        Ok(Some((weights, manifest)))
    }

    async fn load(
        &self,
        name: &str,
        version: u64,
        failed: &mut HashMap<(String, u64), Instant>,
    ) -> Option<Arc<Loaded>> {
        let key = (name.to_string(), version);
        if failed.get(&key).is_some_and(|t| t.elapsed() < RETRY_LOAD) {
            return None;
        }
        let started = Instant::now();
        let plain_rows = self.batch.plain_rows;
        let result = match self.read_checked(name, version).await {
            Ok(Some((weights, manifest))) => tokio::task::spawn_blocking(move || {
                LoadedModel::from_bytes(&weights, &manifest).map(|m| m.with_plain_rows(plain_rows))
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string())),
            Ok(None) => Err("the artifact has no manifest in the store".to_string()),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(model) => {
                failed.remove(&key);
                let model = Arc::new(model);
                let scorer = model.manifest.architecture.preprocessor().map(|p| {
                    let label = format!("{name}-{version}");
                    (
                        RecordEncoder::new(p.clone()),
                        Batcher::start(
                            model.clone(),
                            p.dim,
                            self.batch,
                            &label,
                            BatchMetrics {
                                rows: self.metrics.batch_rows.with_label_values(&[name]),
                                queued: self.metrics.queue_depth.with_label_values(&[name]),
                            },
                        ),
                    )
                });
                info!(model = %name, version, ms = started.elapsed().as_millis() as u64, "loaded");
                let drift = model
                    .manifest
                    .reference
                    .clone()
                    .map(|r| Mutex::new(Sketch::new(r)));
                Some(Arc::new(Loaded {
                    version,
                    model,
                    scorer,
                    drift,
                }))
            }
            Err(e) => {
                warn!(model = %name, version, error = %e, "cannot load; retrying in 5 s");
                failed.insert(key, Instant::now());
                None
            }
        }
    }

    fn choose<'a>(
        &self,
        name: &str,
        served: &'a Served,
        version: Option<u64>,
        alias: Option<&str>,
    ) -> Result<Choice<'a>, ApiError> {
        let deployed = || {
            served
                .versions
                .keys()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        if let Some(v) = version {
            if !served.versions.contains_key(&v) {
                return Err(ApiError::not_found(format!(
                    "version {v} of model {name} is not deployed; deployed: {}",
                    deployed()
                )));
            }
            return Ok(Choice::Pinned(v));
        }
        if let Some(a) = alias {
            return served
                .state
                .aliases
                .get(a)
                .map(|v| Choice::Pinned(*v))
                .ok_or_else(|| {
                    ApiError::not_found(format!(
                        "model {name} has no alias {a:?}; aliases: {}",
                        served
                            .state
                            .aliases
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                });
        }
        if served.state.variants.is_empty() {
            return Err(ApiError::not_found(format!(
                "model {name} has no traffic split: pin a version or an alias"
            )));
        }
        Ok(Choice::ByKey(&served.state))
    }

    fn unkeyed(&self) -> String {
        self.counter.fetch_add(1, Ordering::Relaxed).to_string()
    }

    /// Score records; `None` when this executor does not serve the model.
    pub async fn predict(
        &self,
        name: &str,
        body: PredictBody,
    ) -> Option<Result<PredictReply, ApiError>> {
        let served = self.served(name)?;
        Some(self.predict_served(name, &served, body).await)
    }

    async fn predict_served(
        &self,
        name: &str,
        served: &Served,
        body: PredictBody,
    ) -> Result<PredictReply, ApiError> {
        let PredictBody {
            mut records,
            record,
            key,
            key_field,
            version,
            alias,
        } = body;
        if let Some(r) = record {
            if !records.is_empty() {
                return Err(ApiError::bad_request(
                    "send either `record` or `records`, not both",
                ));
            }
            records.push(r);
        }
        if records.is_empty() {
            return Err(ApiError::bad_request(
                "no records: send {\"record\": {...}} or {\"records\": [{...}, ...]}",
            ));
        }
        let choice = self.choose(name, served, version, alias.as_deref())?;
        let request_key = key.unwrap_or_else(|| self.unkeyed());
        // The version of each record.
        let mut of_row = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            let v = match &choice {
                Choice::Pinned(v) => *v,
                Choice::ByKey(state) => {
                    let k = match &key_field {
                        Some(f) => r.get(f).and_then(key_string).ok_or_else(|| {
                            ApiError::bad_request(format!(
                                "record {} has no string or number in key field {f:?}",
                                i + 1
                            ))
                        })?,
                        None => request_key.clone(),
                    };
                    self.sticky
                        .assign(name, &k, state)
                        .expect("a split with positive weights")
                }
            };
            of_row.push(v);
        }
        let mut predictions: Vec<Option<Prediction>> = vec![None; records.len()];
        let mut versions: Vec<u64> = of_row.clone();
        versions.sort_unstable();
        versions.dedup();
        for v in versions {
            let rows: Vec<usize> = (0..records.len()).filter(|&i| of_row[i] == v).collect();
            let started = Instant::now();
            let scored = self
                .score_rows(name, &served.versions[&v], &records, &rows)
                .await;
            self.events
                .served(name, v, scored.is_ok(), started.elapsed());
            for (p, &i) in scored?.into_iter().zip(&rows) {
                predictions[i] = Some(p);
            }
        }
        Ok(PredictReply {
            model: name.to_string(),
            predictions: predictions
                .into_iter()
                .map(|p| p.expect("every record was scored by its version"))
                .collect(),
            executor: self.executor.clone(),
        })
    }

    /// Score `rows` of `records` with one loaded version, in the order of `rows`.
    async fn score_rows(
        &self,
        name: &str,
        loaded: &Loaded,
        records: &[Record],
        rows: &[usize],
    ) -> Result<Vec<Prediction>, ApiError> {
        let v = loaded.version;
        let Some((encoder, batcher)) = loaded.scorer.as_ref() else {
            return Err(ApiError::bad_request(format!(
                "model {name} version {v} is a forecaster: POST /v1/models/{name}:forecast"
            )));
        };
        let refs: Vec<&Record> = rows.iter().map(|&i| &records[i]).collect();
        let encoded = encoder.encode(&refs).map_err(|e| {
            // Record numbers are the request's, not the group's.
            ApiError::bad_request(renumber(&e.to_string(), rows))
        })?;
        self.observe(name, loaded, &refs);
        let s = batcher.score(encoded).await?;
        self.metrics
            .predicted_records
            .with_label_values(&[name, &v.to_string()])
            .inc_by(rows.len() as u64);
        let per = batcher.outputs();
        Ok(s.chunks(per)
            .take(rows.len())
            .map(|out| {
                let out: Vec<f64> = out.iter().map(|x| f64::from(*x)).collect();
                let mut p = Prediction {
                    score: out[0],
                    version: v,
                    treated: None,
                    control: None,
                    distances: None,
                };
                match batcher.kind() {
                    "uplift" => (p.treated, p.control) = (out.get(1).copied(), out.get(2).copied()),
                    "kmeans" => p.distances = Some(out[1..].to_vec()),
                    _ => {}
                }
                p
            })
            .collect())
    }

    /// Count scored records into the version's drift sketch; a whole window is scored
    /// into the metrics and published for the drift monitor.
    fn observe(&self, name: &str, loaded: &Loaded, records: &[&Record]) {
        let Some(sketch) = &loaded.drift else { return };
        let closed = {
            let mut sketch = sketch.lock().expect("sketch lock");
            for r in records {
                sketch.observe(r);
            }
            (sketch.rows() >= drift::WINDOW).then(|| sketch.take())
        };
        if let Some(window) = closed {
            self.window_closed(name, loaded.version, window);
        }
    }

    fn window_closed(&self, name: &str, version: u64, window: Window) {
        let v = version.to_string();
        for d in window.scores() {
            let m = &self.metrics;
            m.drift_score
                .with_label_values(&[name, &v, &d.name, &d.method])
                .set(d.score);
            m.drift_score
                .with_label_values(&[name, &v, &d.name, "psi"])
                .set(d.psi);
            m.drift_flag
                .with_label_values(&[name, &v, &d.name])
                .set(if d.drifted { 1.0 } else { 0.0 });
        }
        let Some(lease) = self.lease.get().map(|l| l.load(Ordering::Relaxed)) else {
            return;
        };
        let record = DriftWindow {
            executor: self.executor.clone(),
            model: name.to_string(),
            version,
            closed_ms: halyard_core::records::now_ms(),
            window: serde_json::to_value(&window).expect("a window serialises"),
        };
        let coord = self.coord.clone();
        tokio::spawn(async move {
            if let Err(e) = coord.put_drift(&record, lease).await {
                warn!(model = %record.model, version = record.version, error = %e, "cannot publish a drift window");
            }
        });
    }

    /// Forecast series; `None` when this executor does not serve the model.
    pub async fn forecast(
        &self,
        name: &str,
        body: ForecastBody,
    ) -> Option<Result<ForecastReply, ApiError>> {
        let served = self.served(name)?;
        Some(self.forecast_served(name, &served, body).await)
    }

    async fn forecast_served(
        &self,
        name: &str,
        served: &Served,
        body: ForecastBody,
    ) -> Result<ForecastReply, ApiError> {
        if body.series.is_empty() {
            return Err(ApiError::bad_request(
                "no series: send {\"series\": [{\"id\": ..., \"values\": [...]}], \"horizon\": N}",
            ));
        }
        if body.horizon == 0 {
            return Err(ApiError::bad_request("horizon must be at least 1"));
        }
        let version = match self.choose(name, served, body.version, body.alias.as_deref())? {
            Choice::Pinned(v) => v,
            Choice::ByKey(state) => state
                .variant_for(&body.key.clone().unwrap_or_else(|| self.unkeyed()))
                .expect("a split with positive weights"),
        };
        let loaded = served.versions[&version].clone();
        if loaded.scorer.is_some() {
            return Err(ApiError::bad_request(format!(
                "model {name} version {version} is a response model: POST /v1/models/{name}:predict"
            )));
        }
        let series = body.series;
        let horizon = body.horizon;
        let ids: Vec<String> = series.iter().map(|s| s.id.clone()).collect();
        let values = tokio::task::spawn_blocking(move || loaded.model.forecast(&series, horizon))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))??;
        Ok(ForecastReply {
            model: name.to_string(),
            version,
            forecasts: ids
                .into_iter()
                .zip(values)
                .map(|(id, values)| SeriesForecast { id, values })
                .collect(),
            executor: self.executor.clone(),
        })
    }

    /// The model's input schema (of `version`, else of production or the first version
    /// loaded) and what serves it; `None` when not served here, an error when `version`
    /// is not deployed.
    pub fn schema(&self, name: &str, version: Option<u64>) -> Option<Result<Value, ApiError>> {
        let served = self.served(name)?;
        let chosen = match version {
            Some(v) => Some(v),
            None => served
                .state
                .aliases
                .get(halyard_core::registry::PRODUCTION)
                .or_else(|| served.versions.keys().next())
                .copied(),
        };
        let Some(main) = chosen.and_then(|v| served.versions.get(&v)) else {
            let v = version?;
            let deployed: Vec<String> = served.versions.keys().map(u64::to_string).collect();
            return Some(Err(ApiError::not_found(format!(
                "version {v} of model {name} is not deployed; deployed: {}",
                deployed.join(", ")
            ))));
        };
        let arch = &main.model.manifest.architecture;
        let mut out = json!({
            "model": name,
            "model_type": arch.kind(),
            "schema_version": main.version,
            "variants": served.state.variants,
            "aliases": served.state.aliases,
            "executor": self.executor,
        });
        match arch.preprocessor() {
            Some(p) => {
                out["inputs"] = json!(p.input_fields());
                out["missing_values"] = json!(
                    "send null: a numeric takes its training mean, a categorical the `other` slot"
                );
                out["unknown_categories"] =
                    json!("served as the `other` slot (hashed columns hash them)");
            }
            None => {
                if let halyard_models::artifact::Architecture::NBeats { config } = arch {
                    out["horizon"] = json!(config.horizon);
                    out["covariates"] = json!(config.members.first().map_or(0, |m| m.covariates));
                }
            }
        }
        Some(Ok(out))
    }
}

/// Rewrite `record K` (1-based within a group) to the request's own record number.
fn renumber(message: &str, rows: &[usize]) -> String {
    if let Some(rest) = message.strip_prefix("record ")
        && let Some((n, tail)) = rest.split_once(' ')
        && let Ok(k) = n.parse::<usize>()
        && let Some(i) = rows.get(k.wrapping_sub(1))
    {
        return format!("record {}{}", i + 1, format_args!(" {tail}"));
    }
    message.to_string()
}
