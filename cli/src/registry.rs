//! The registry commands of the CLI: `models`, `model`, `report`, `deploy`, `promote`,
//! `rollback`, `undeploy`, `experiment`. Tables on stdout, or JSON with `--json`.

use halyard_core::proto::deploy_request::Change;
use halyard_core::proto::{
    DeclareMetrics, DeployRequest, DeployVersion, DeploymentInfo, ExperimentResponse,
    GetModelResponse, Promote, Rollback, SetReplicas, SplitTraffic, StartBandit, StartRamp,
    Undeploy, VariantInfo,
};
use halyard_core::registry::parse_split;
use serde_json::{Value, json};

use halyard_client::Client;

use crate::Result;
use crate::commands::out;

fn deployment_json(d: Option<&DeploymentInfo>) -> Value {
    d.map_or(Value::Null, |d| {
        json!({
            "variants": d.variants.iter().map(|v| json!({"version": v.version, "weight": v.weight})).collect::<Vec<_>>(),
            "aliases": d.aliases,
            "history": d.history,
            "updated_ms": d.updated_ms,
            "ramp": d.ramp.as_ref().map(|r| json!({
                "canary": r.version,
                "steps": r.steps,
                "step": r.step,
                "step_secs": r.step_secs,
                "guard_conversion": r.guard_conversion,
                "guard_errors": r.guard_errors,
                "guard_latency": r.guard_latency,
                "guard_metrics": r.guard_metrics,
            })),
            "bandit": d.bandit.as_ref().map(|b| json!({
                "versions": b.versions,
                "floor_bp": b.floor_bp,
                "every_secs": b.every_secs,
            })),
            "replicas": (d.replicas > 0).then_some(d.replicas),
            "metrics": d.metrics,
            "placed_on": d.placed_on,
            "unplaced": d.unplaced,
            "memory_bytes": d.memory_bytes,
            "served_by": d.served_by.iter().map(|s| json!({"executor": s.executor, "versions": s.versions})).collect::<Vec<_>>(),
        })
    })
}

/// A model as JSON, for scripts.
pub fn model_json(m: &GetModelResponse) -> Value {
    json!({
        "name": m.name,
        "versions": m.versions.iter().map(|v| json!({
            "version": v.version,
            "model_type": v.model_type,
            "artifact": v.artifact,
            "metrics": v.metrics,
            "job_id": v.job_id,
            "data_source": v.data_source,
            "data_digest": v.data_digest,
            "created_ms": v.created_ms,
            "profile": serde_json::from_str::<Value>(&v.profile_json).unwrap_or(Value::Null),
            "sealed_with": (!v.sealed_with.is_empty()).then_some(&v.sealed_with),
        })).collect::<Vec<_>>(),
        "deployment": deployment_json(m.deployment.as_ref()),
    })
}

fn split_text(d: Option<&DeploymentInfo>) -> String {
    match d {
        Some(d) if !d.variants.is_empty() => d
            .variants
            .iter()
            .map(|v| format!("{}={}", v.version, v.weight))
            .collect::<Vec<_>>()
            .join(","),
        _ => "-".into(),
    }
}

/// Where the leader placed a deployment, and what it could not place.
fn placed_text(d: &DeploymentInfo) -> String {
    let asked = if d.replicas == 0 {
        "every executor it fits on".to_string()
    } else {
        format!("{} replica(s)", d.replicas)
    };
    let on = if d.placed_on.is_empty() {
        "no executor".to_string()
    } else {
        d.placed_on.join(", ")
    };
    let short = if d.unplaced > 0 {
        format!(
            "; {} more would not fit (no executor with {} free: raise --memory-mb or add executors)",
            d.unplaced,
            halyard_core::disk::size_text(d.memory_bytes)
        )
    } else {
        String::new()
    };
    format!(
        "{on} ({asked}, {} each){short}",
        halyard_core::disk::size_text(d.memory_bytes)
    )
}

fn aliases_text(d: Option<&DeploymentInfo>) -> String {
    let mut a: Vec<String> = d
        .map(|d| d.aliases.iter().map(|(k, v)| format!("{k}={v}")).collect())
        .unwrap_or_default();
    a.sort();
    if a.is_empty() {
        "-".into()
    } else {
        a.join(",")
    }
}

/// `halyard models`.
pub async fn models(client: &Client, as_json: bool) -> Result<()> {
    let models = client.models().await?;
    if as_json {
        out(&Value::Array(models.iter().map(model_json).collect()).to_string());
        return Ok(());
    }
    out(&format!(
        "{:<28} {:>8} {:<20} {:<16} ALIASES",
        "MODEL", "VERSIONS", "TYPE", "SPLIT"
    ));
    for m in &models {
        out(&format!(
            "{:<28} {:>8} {:<20} {:<16} {}",
            m.name,
            m.versions.len(),
            m.versions.last().map_or("-", |v| v.model_type.as_str()),
            split_text(m.deployment.as_ref()),
            aliases_text(m.deployment.as_ref())
        ));
    }
    Ok(())
}

fn show_model(m: &GetModelResponse) {
    out(&format!("model:    {}", m.name));
    out(&format!("split:    {}", split_text(m.deployment.as_ref())));
    out(&format!(
        "aliases:  {}",
        aliases_text(m.deployment.as_ref())
    ));
    if let Some(d) = &m.deployment {
        if let Some(b) = &d.bandit {
            out(&format!(
                "bandit:   Thompson sampling between versions {:?}, re-weighed every {} s, each keeping {:.2}% (weights in basis points)",
                b.versions,
                b.every_secs,
                f64::from(b.floor_bp) / 100.0
            ));
        }
        if let Some(r) = &d.ramp {
            out(&format!(
                "ramp:     canary version {} at step {} of {:?} (percent), each at least {} s; {}",
                r.version,
                r.step + 1,
                r.steps,
                r.step_secs,
                guards_text(r)
            ));
        }
        if !d.metrics.is_empty() {
            out(&format!("metrics:  {}", d.metrics.join(", ")));
        }
        out(&format!("rollback: {} earlier states kept", d.history));
        out(&format!("placed:   {}", placed_text(d)));
        for s in &d.served_by {
            out(&format!(
                "serving:  {} has versions {:?} loaded",
                s.executor, s.versions
            ));
        }
    }
    out(&format!(
        "{:>7} {:<20} {:<30} {:<30} DATA",
        "VERSION", "TYPE", "HELD-OUT METRICS", "JOB"
    ));
    for v in &m.versions {
        out(&format!(
            "{:>7} {:<20} {:<30} {:<30} {} {}",
            v.version,
            v.model_type,
            key_metrics(v),
            v.job_id,
            v.data_source,
            v.data_digest.get(..19).unwrap_or(&v.data_digest)
        ));
    }
    let mut sealed: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for v in m.versions.iter().filter(|v| !v.sealed_with.is_empty()) {
        sealed
            .entry(&v.sealed_with)
            .or_default()
            .push(v.version.to_string());
    }
    for (key, versions) in sealed {
        out(&format!(
            "sealed with encryption key {key}: version {}",
            versions.join(", ")
        ));
    }
    if let Some(v) = m.versions.last() {
        match serde_json::from_str::<Value>(&v.profile_json) {
            Ok(Value::Array(segments)) => show_profile(v.version, &segments),
            Ok(Value::Object(columns)) => show_importance(v.version, &columns),
            _ => {}
        }
    }
}

/// Write the report of the version `target` names to `out` (default
/// `NAME-vVERSION.html` here) and say where.
pub async fn report(
    client: &Client,
    target: &str,
    out_path: Option<&std::path::Path>,
) -> Result<()> {
    let r = client.report(target).await?;
    let path = out_path.map_or_else(
        || std::path::PathBuf::from(format!("{}-v{}.html", r.name, r.version)),
        std::path::Path::to_path_buf,
    );
    std::fs::write(&path, &r.html).map_err(|source| crate::CliError::Io {
        path: path.display().to_string(),
        source,
    })?;
    out(&format!(
        "report of {} version {} written to {} ({} KiB; open it in a browser, no network needed)",
        r.name,
        r.version,
        path.display(),
        r.html.len().div_ceil(1024)
    ));
    Ok(())
}

/// The held-out figures that say most of a version, by name: `auc 0.7757 log_loss 0.4764`
/// for a response model, RMSE and MAE for trees fitting numbers, Qini and AUUC for an
/// uplift model, OWA and sMAPE for a forecaster, the silhouette for segments.
fn key_metrics(v: &halyard_core::proto::ModelVersionInfo) -> String {
    let keys: &[&str] = match v.model_type.as_str() {
        "nbeats" => &["test_owa", "test_smape"],
        "uplift" => &["test_qini", "test_auuc"],
        "kmeans" => &["silhouette"],
        _ if v.metrics.contains_key("test_rmse") => &["test_rmse", "test_mae"],
        _ => &["test_auc", "test_log_loss"],
    };
    let named: Vec<String> = keys
        .iter()
        .filter_map(|k| {
            let name = k.strip_prefix("test_").unwrap_or(k);
            v.metrics.get(*k).map(|x| format!("{name} {x:.4}"))
        })
        .collect();
    if named.is_empty() {
        "-".into()
    } else {
        named.join(" ")
    }
}

/// The columns a tree model splits on, by the gain of their splits (the ten largest).
fn show_importance(version: u64, columns: &serde_json::Map<String, Value>) {
    let mut by_gain: Vec<(&String, f64, u64)> = columns
        .iter()
        .map(|(name, i)| {
            (
                name,
                i["gain"].as_f64().unwrap_or(0.0),
                i["splits"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    by_gain.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
    let total: f64 = by_gain
        .iter()
        .map(|c| c.1)
        .sum::<f64>()
        .max(f64::MIN_POSITIVE);
    out(&format!(
        "column importance of version {version} (share of the splits' gain; {} of {} columns):",
        by_gain.len().min(10),
        by_gain.len()
    ));
    out(&format!("{:<24} {:>6} {:>7}", "COLUMN", "GAIN", "SPLITS"));
    for (name, gain, splits) in by_gain.iter().take(10) {
        out(&format!(
            "{name:<24} {:>5.1}% {splits:>7}",
            gain / total * 100.0
        ));
    }
}

/// A segmentation model's profile: one line per segment (size, share, response rate,
/// numeric means, top categories).
fn show_profile(version: u64, segments: &[Value]) {
    out(&format!("segments of version {version}:"));
    out(&format!(
        "{:>7} {:>8} {:>6} {:>9}  MEANS; TOP VALUES",
        "SEGMENT", "ROWS", "SHARE", "RESPONSE"
    ));
    for p in segments {
        let means = p["means"].as_object().map_or(String::new(), |m| {
            m.iter()
                .map(|(k, v)| format!("{k} {:.1}", v.as_f64().unwrap_or(f64::NAN)))
                .collect::<Vec<_>>()
                .join(", ")
        });
        let top = p["top"].as_object().map_or(String::new(), |m| {
            m.iter()
                .map(|(k, v)| {
                    format!(
                        "{k} {} ({:.0}%)",
                        v[0].as_str().unwrap_or(""),
                        v[1].as_f64().unwrap_or(0.0) * 100.0
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        });
        out(&format!(
            "{:>7} {:>8} {:>5.1}% {:>9}  {means}; {top}",
            p["segment"].as_u64().unwrap_or(0),
            p["rows"].as_u64().unwrap_or(0),
            p["share"].as_f64().unwrap_or(0.0) * 100.0,
            p["response_rate"]
                .as_f64()
                .map_or("-".into(), |r| format!("{:.1}%", r * 100.0))
        ));
    }
}

/// `halyard model NAME`.
pub async fn model(client: &Client, name: &str, as_json: bool) -> Result<()> {
    let m = client.model(name).await?;
    if as_json {
        out(&model_json(&m).to_string());
    } else {
        show_model(&m);
    }
    Ok(())
}

/// What `halyard deploy` and friends ask for.
#[derive(Debug, Clone)]
pub enum DeployAction {
    /// `deploy NAME --version N [--alias A] [--percent P]`.
    Version {
        /// The version.
        version: u64,
        /// Its alias.
        alias: String,
        /// Its share beside production.
        percent: Option<u32>,
    },
    /// `deploy NAME --split 3=90,4=10`.
    Split(String),
    /// `promote NAME [--alias A]`.
    Promote(String),
    /// `rollback NAME`.
    Rollback,
    /// `undeploy NAME`.
    Undeploy,
    /// `deploy NAME --version N --ramp 1,10,50 [--step 1h] [--guardrail conversion]`.
    Ramp(StartRamp),
    /// `deploy NAME --replicas N`: on N executors (0: every one it fits on).
    Replicas(u32),
    /// `deploy NAME --metrics visit:binary:primary,spend:continuous`: the experiment's
    /// metrics (empty: take any).
    Metrics(Vec<String>),
    /// `deploy NAME --bandit 3,4,5 [--floor 1%] [--every 60s]`.
    Bandit {
        /// The versions.
        versions: Vec<u64>,
        /// Each one's least share, basis points.
        floor_bp: u32,
        /// Seconds between reallocations.
        every_secs: u64,
    },
}

/// Seconds of a duration flag (`30s`, `10m`, `1h`).
fn seconds(flag: &str, text: &str) -> Result<u64> {
    match halyard_core::schedule::Timing::parse(Some(text), None) {
        Ok(halyard_core::schedule::Timing::Every(secs)) => Ok(secs),
        _ => Err(crate::CliError::Failed(format!(
            "{flag} {text:?} is not a duration: write it as 30s, 10m or 1h"
        ))),
    }
}

/// What a ramp guards (`--guardrail`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Guardrail {
    /// The conversion rate fed back with :feedback
    Conversion,
    /// The share of prediction requests the canary fails
    Errors,
    /// The share of the canary's requests slower than production's p99
    Latency,
    /// Every metric the deployment declares a guardrail (--metrics NAME:KIND:guardrail)
    Metrics,
}

/// The guardrails a ramp holds, in words.
fn guards_text(r: &StartRamp) -> String {
    let named: Vec<&str> = [
        (r.guard_conversion, "conversion"),
        (r.guard_errors, "errors"),
        (r.guard_latency, "latency"),
        (r.guard_metrics, "the declared guardrail metrics"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    if named.is_empty() {
        "no guardrail".to_string()
    } else {
        format!(
            "rolled back if worse than production (always-valid) in {}",
            named.join(", ")
        )
    }
}

impl DeployAction {
    /// `deploy --version N --ramp …`'s flags.
    pub fn ramp(
        version: u64,
        steps: Vec<u32>,
        step: &str,
        guards: &[Guardrail],
    ) -> Result<DeployAction> {
        Ok(DeployAction::Ramp(StartRamp {
            version,
            steps,
            step_secs: seconds("--step", step)?,
            guard_conversion: guards.contains(&Guardrail::Conversion),
            guard_errors: guards.contains(&Guardrail::Errors),
            guard_latency: guards.contains(&Guardrail::Latency),
            guard_metrics: guards.contains(&Guardrail::Metrics),
            step: 0,
        }))
    }

    /// `deploy --bandit`'s flags: `--floor` in percent (`1%`, `0.5`), `--every` a duration.
    pub fn bandit(versions: Vec<u64>, floor: &str, every: &str) -> Result<DeployAction> {
        let pct: f64 = floor.trim().trim_end_matches('%').parse().map_err(|_| {
            crate::CliError::Failed(format!(
                "--floor {floor:?} is not a percentage: write it as 1% or 0.5"
            ))
        })?;
        if !(0.0..50.0).contains(&pct) {
            return Err(crate::CliError::Failed(format!(
                "--floor {floor:?} must lie between 0% and 50%"
            )));
        }
        let every_secs = seconds("--every", every)?;
        Ok(DeployAction::Bandit {
            versions,
            floor_bp: (pct * 100.0).round() as u32,
            every_secs,
        })
    }

    /// `deploy`'s flags: `--version` (with `--alias`, `--percent`) or `--split`.
    pub fn from_flags(
        version: Option<u64>,
        alias: String,
        percent: Option<u32>,
        split: Option<String>,
    ) -> Result<DeployAction> {
        match (version, split) {
            (Some(version), None) => Ok(DeployAction::Version {
                version,
                alias,
                percent,
            }),
            (None, Some(split)) => Ok(DeployAction::Split(split)),
            _ => Err(crate::CliError::Failed(
                "deploy takes --version N or --split VERSION=WEIGHT,…, one of the two".into(),
            )),
        }
    }
}

/// `halyard deploy | promote | rollback | undeploy`: change the deployment, show the result.
pub async fn deploy(
    client: &Client,
    name: &str,
    action: DeployAction,
    as_json: bool,
) -> Result<()> {
    let change = match action {
        DeployAction::Version {
            version,
            alias,
            percent,
        } => Change::Deploy(DeployVersion {
            version,
            alias,
            percent,
        }),
        DeployAction::Split(text) => Change::Split(SplitTraffic {
            variants: parse_split(&text)?
                .into_iter()
                .map(|v| VariantInfo {
                    version: v.version,
                    weight: v.weight,
                })
                .collect(),
        }),
        DeployAction::Promote(alias) => Change::Promote(Promote { alias }),
        DeployAction::Rollback => Change::Rollback(Rollback {}),
        DeployAction::Undeploy => Change::Undeploy(Undeploy {}),
        DeployAction::Bandit {
            versions,
            floor_bp,
            every_secs,
        } => Change::Bandit(StartBandit {
            versions,
            floor_bp,
            every_secs,
        }),
        DeployAction::Ramp(ramp) => Change::Ramp(ramp),
        DeployAction::Replicas(count) => Change::Replicas(SetReplicas { count }),
        DeployAction::Metrics(metrics) => Change::Metrics(DeclareMetrics { metrics }),
    };
    let m = client
        .deploy(DeployRequest {
            name: name.into(),
            change: Some(change),
        })
        .await?;
    if as_json {
        out(&model_json(&m).to_string());
    } else {
        out(&format!(
            "{name}: split {} aliases {} (executors load new versions before serving them)",
            split_text(m.deployment.as_ref()),
            aliases_text(m.deployment.as_ref())
        ));
    }
    Ok(())
}

/// An experiment as JSON (the same as `GET /v1/experiments/NAME`; NaN is null).
pub fn experiment_json(e: &ExperimentResponse) -> Value {
    serde_json::to_value(e).unwrap_or(Value::Null)
}

/// The variants' serving figures (what the errors and latency guardrails compare), when
/// any served a request.
fn print_serving(e: &ExperimentResponse) {
    if e.variants.iter().all(|v| v.requests == 0) {
        return;
    }
    out(&format!(
        "serving (since each node started):\n{:>7} {:>9} {:>7} {:>10} {:>9} {:>9}",
        "VERSION", "REQUESTS", "ERRORS", "ERROR RATE", "P50 MS", "P99 MS"
    ));
    for v in e.variants.iter().filter(|v| v.requests > 0) {
        out(&format!(
            "{:>7} {:>9} {:>7} {:>10.4} {:>9.3} {:>9.3}",
            v.version, v.requests, v.errors, v.error_rate, v.p50_ms, v.p99_ms
        ));
    }
}

/// The experiment's metrics other than conversion, one table each.
fn print_metrics(e: &ExperimentResponse) {
    let mut names: Vec<(&str, &str)> = e
        .metrics
        .iter()
        .map(|m| (m.metric.as_str(), m.role.as_str()))
        .collect();
    names.dedup();
    for (name, role) in names {
        let what = if role.is_empty() {
            "mean".to_string()
        } else {
            format!("mean, {role}")
        };
        out(&format!(
            "{name} ({what}):\n{:>7} {:>8} {:>12} {:>12} {:>25} {:>8} {:>25} {:>8}",
            "VERSION", "N", "MEAN", "DIFF", "FIXED INTERVAL", "P", "ALWAYS-VALID", "P"
        ));
        for m in e.metrics.iter().filter(|m| m.metric == name) {
            let head = format!("{:>7} {:>8} {:>12.4}", m.version, m.n, m.mean);
            if m.version == e.control {
                out(&format!("{head} {:>12}", "control"));
            } else if m.needed > 0 {
                out(&format!(
                    "{head} {:>12}  too few values for a comparison: {} more in the smaller group",
                    "-", m.needed
                ));
            } else {
                out(&format!(
                    "{head} {:>+12.4} {:>25} {:>8} {:>25} {:>8.4}",
                    m.difference,
                    format!("[{:+.4}, {:+.4}]", m.ci_low, m.ci_high),
                    format!(
                        "{:.4}{}",
                        m.p_value,
                        if m.p_value < 1.0 - e.confidence {
                            " *"
                        } else {
                            ""
                        }
                    ),
                    format!("[{:+.4}, {:+.4}]", m.seq_low, m.seq_high),
                    m.seq_p_value,
                ));
            }
        }
    }
}

/// `halyard experiment NAME`.
pub async fn experiment(client: &Client, name: &str, as_json: bool) -> Result<()> {
    let e = client.experiment(name).await?;
    if as_json {
        out(&experiment_json(&e).to_string());
        return Ok(());
    }
    out(&format!(
        "model {} — control: version {} — {:.0}% intervals",
        e.name,
        e.control,
        e.confidence * 100.0
    ));
    // The sample-ratio check comes before any result: when it fires, none can be trusted.
    let outcomes: Vec<String> = e
        .variants
        .iter()
        .filter(|v| v.weight > 0)
        .map(|v| {
            let n = if e.srm_counts == "exposures" {
                v.exposures
            } else {
                v.trials
            };
            format!("version {} {n} (weight {})", v.version, v.weight)
        })
        .collect();
    if e.srm_mismatch {
        out(&format!(
            "SAMPLE RATIO MISMATCH: {} {} against the split: chi-square {:.2}, p = {:.2e} < 0.001. The assignment or the feedback is broken: do not trust the results below.",
            e.srm_counts,
            outcomes.join(", "),
            e.srm_chi2,
            e.srm_p_value
        ));
    } else if e.srm_p_value.is_finite() {
        out(&format!(
            "sample ratio: {} {} against the split: chi-square {:.2}, p = {:.4}: no mismatch",
            e.srm_counts,
            outcomes.join(", "),
            e.srm_chi2,
            e.srm_p_value
        ));
    }
    out(&format!(
        "{:>7} {:>6} {:>8} {:>8} {:>8} {:>7} {:>9} {:>21} {:>8} {:>21} {:>8} {:>10}",
        "VERSION",
        "WEIGHT",
        "OUTCOMES",
        "CONVERTS",
        "RATE",
        "P(BEST)",
        "DIFF",
        "FIXED INTERVAL",
        "P",
        "ALWAYS-VALID",
        "P",
        "DETECTABLE"
    ));
    for v in &e.variants {
        let head = format!(
            "{:>7} {:>6} {:>8} {:>8} {:>8.4} {:>7.3}",
            v.version, v.weight, v.trials, v.conversions, v.rate, v.prob_best
        );
        if v.version == e.control {
            out(&format!("{head} {:>9}", "control"));
        } else if v.needed > 0 {
            out(&format!(
                "{head} {:>9}  too few outcomes for a comparison: {} more in the smaller group",
                "-", v.needed
            ));
        } else if v.p_value.is_finite() {
            out(&format!(
                "{head} {:>+9.4} {:>21} {:>8} {:>21} {:>8.4} {:>10.4}",
                v.difference,
                format!("[{:+.4}, {:+.4}]", v.ci_low, v.ci_high),
                format!("{:.4}{}", v.p_value, if v.significant { " *" } else { "" }),
                format!("[{:+.4}, {:+.4}]", v.seq_low, v.seq_high),
                v.seq_p_value,
                v.detectable
            ));
        } else {
            out(&format!("{head} {:>9}", "-"));
        }
    }
    print_metrics(&e);
    print_serving(&e);
    out(&format!(
        "* significant at {:.0}% for one planned look (two-proportion z-test; Welch's t-test for other metrics); read ALWAYS-VALID when looking more than once; P(BEST): the posterior probability of the highest rate; feed outcomes with POST /v1/models/{}:feedback (docs/experiments.md)",
        e.confidence * 100.0,
        e.name
    ));
    Ok(())
}

/// `halyard audiences [NAME]`: every audience's versions (or one audience's), with size
/// and churn from the version before.
pub async fn audiences(client: &Client, name: Option<&str>, as_json: bool) -> Result<()> {
    let list = client.audiences(name).await?;
    if as_json {
        let rows: Vec<Value> = list
            .iter()
            .map(|a| {
                json!({
                    "name": a.name, "version": a.version, "location": a.location,
                    "job_id": a.job_id, "model": a.model, "model_version": a.model_version,
                    "rule": a.rule, "size": a.size, "scored": a.scored,
                    "excluded": a.excluded, "rejected": a.rejected,
                    "entered": a.entered, "left": a.left, "created_ms": a.created_ms,
                })
            })
            .collect();
        out(&Value::Array(rows).to_string());
        return Ok(());
    }
    if list.is_empty() {
        out("no audiences yet: a job with a [score] section writes one (docs/targeting.md)");
        return Ok(());
    }
    out(&format!(
        "{:<24} {:>7} {:>10} {:>9} {:>9} {:<24} {:<20} LOCATION",
        "AUDIENCE", "VERSION", "SIZE", "ENTERED", "LEFT", "MODEL", "RULE"
    ));
    for a in &list {
        out(&format!(
            "{:<24} {:>7} {:>10} {:>9} {:>9} {:<24} {:<20} {}",
            a.name,
            a.version,
            a.size,
            a.entered,
            a.left,
            format!("{} v{}", a.model, a.model_version),
            a.rule,
            a.location
        ));
    }
    Ok(())
}

/// `halyard monitor NAME`: each served version's input drift against its training data.
pub async fn monitor(client: &Client, name: &str, as_json: bool) -> Result<()> {
    let text = client.drift(name).await?;
    if as_json {
        out(&text);
        return Ok(());
    }
    let r: Value = serde_json::from_str(&text)
        .map_err(|e| crate::CliError::Failed(format!("the drift report does not decode: {e}")))?;
    let versions = r["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        out(&format!(
            "model {name}: no whole window yet (each executor scores every {} records of a version it serves against the training data)",
            r["window"]
        ));
        return Ok(());
    }
    for v in &versions {
        let executors: Vec<&str> = v["executors"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let closed = v["closed_ms"].as_i64().unwrap_or(0);
        let ago = (halyard_core::records::now_ms() - closed).max(0) / 1000;
        out(&format!(
            "model {name} version {}: {} records from {} ({}), last window closed {ago} s ago; drift at score >= {}",
            v["version"],
            v["rows"],
            executors.len(),
            executors.join(", "),
            r["threshold"]
        ));
        out(&format!(
            "{:<28} {:<15} {:>8} {:>8}  {}",
            "FEATURE", "METHOD", "SCORE", "PSI", "DRIFT"
        ));
        for f in v["features"].as_array().into_iter().flatten() {
            out(&format!(
                "{:<28} {:<15} {:>8.4} {:>8.4}  {}",
                f["name"].as_str().unwrap_or(""),
                f["method"].as_str().unwrap_or(""),
                f["score"].as_f64().unwrap_or(f64::NAN),
                f["psi"].as_f64().unwrap_or(f64::NAN),
                if f["drifted"].as_bool() == Some(true) {
                    "DRIFT"
                } else {
                    "-"
                }
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(model_type: &str, metrics: &[(&str, f64)]) -> halyard_core::proto::ModelVersionInfo {
        halyard_core::proto::ModelVersionInfo {
            model_type: model_type.into(),
            metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn each_kind_of_version_lists_its_own_held_out_figures_by_name() {
        let response = version("gbdt", &[("test_auc", 0.77571), ("test_log_loss", 0.4764)]);
        assert_eq!(key_metrics(&response), "auc 0.7757 log_loss 0.4764");
        let numbers = version(
            "gbdt",
            &[
                ("test_rmse", 129725.27),
                ("test_mae", 73186.7),
                ("test_r2", 0.9),
            ],
        );
        assert_eq!(key_metrics(&numbers), "rmse 129725.2700 mae 73186.7000");
        let uplift = version("uplift", &[("test_qini", 0.0706), ("test_auuc", 0.0332)]);
        assert_eq!(key_metrics(&uplift), "qini 0.0706 auuc 0.0332");
        assert_eq!(
            key_metrics(&version("kmeans", &[("silhouette", 0.41)])),
            "silhouette 0.4100"
        );
        assert_eq!(key_metrics(&version("mlp", &[])), "-");
    }
}
