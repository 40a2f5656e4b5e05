//! The model registry's records and the rules of deployments: which versions serve a
//! model's traffic, under which aliases, and how deploy, promote and rollback change that.
//!
//! **Invariants.** A version, once registered, never changes (its artifact is immutable).
//! A deployment's variants name registered versions with positive weights; every change
//! keeps the state it replaced, so `rollback` restores exactly what served before.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The alias that names the version serving all traffic without a split.
pub const PRODUCTION: &str = "production";
/// The alias `promote` moves to production by default.
pub const CANARY: &str = "canary";
/// Deployment states kept for `rollback`.
pub const MAX_HISTORY: usize = 20;

/// One published, immutable version of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelVersion {
    /// Model name (the job spec's `name`).
    pub name: String,
    /// Version number, from 1.
    pub version: u64,
    /// URL of the version's folder in object storage.
    pub artifact: String,
    /// `logistic_regression`, `mlp` or `nbeats`.
    pub model_type: String,
    /// Held-out and training metrics.
    pub metrics: BTreeMap<String, f64>,
    /// The job that trained it.
    pub job_id: String,
    /// The training data's source URL.
    pub data_source: String,
    /// `sha256:<hex>` of the training data.
    pub data_digest: String,
    /// Registration time, ms since the epoch.
    pub created_ms: i64,
    /// `sha256:<hex>` of each file of the artifact (`model.safetensors`, `manifest.json`),
    /// recorded at publish and checked by every node that loads the version. Empty for a
    /// version published before digests were recorded.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
    /// For `halyard model NAME`: a segmentation model's segment profiles (an array, as its
    /// manifest holds them) or a tree model's column importance (an object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<serde_json::Value>,
    /// For `halyard report`: the held-out curves (`halyard_models::evaluation::Evaluation`
    /// as JSON; a few KiB). Absent for a segmentation and for a version published before
    /// reports existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<serde_json::Value>,
    /// Memory a node needs to serve it, bytes: its weights file's size plus what loading
    /// derives from the weights (a response model's plain-array copy, a forest's scoring
    /// tables; versions published before 2026-12-03 count the file alone); 0 when unknown
    /// (published before it was recorded), which fits anywhere.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub memory_bytes: u64,
    /// The id of the encryption key its files are sealed with (client-side encryption);
    /// `None` when stored in the clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_with: Option<String>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl ModelVersion {
    /// Whether `bytes` are the file `name` as it was published: `Err` names the file and
    /// both digests when it was changed in the store since.
    pub fn check_file(&self, name: &str, bytes: &[u8]) -> crate::Result<()> {
        let Some(want) = self.files.get(name) else {
            return Ok(());
        };
        let got = crate::data::digest(bytes);
        if &got == want {
            return Ok(());
        }
        Err(crate::Error::Corrupt {
            key: format!(
                "{}/{} version {} {name}",
                self.artifact, self.name, self.version
            ),
            message: format!(
                "its digest is {got}, not the {want} recorded when it was published: the artifact was changed in the object store, and is not loaded"
            ),
        })
    }
}

/// A version and its share of the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variant {
    /// The version.
    pub version: u64,
    /// Relative weight (a percentage when written by the CLI); positive.
    pub weight: u32,
}

/// Thompson-sampling allocation of a deployment's traffic (`halyard deploy --bandit`):
/// the leader re-weighs the versions every `every_secs` by the posterior probability that
/// each converts best, each keeping `floor_bp`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanditPolicy {
    /// The versions it allocates between.
    pub versions: Vec<u64>,
    /// The share each keeps at least, in basis points of [`BANDIT_SCALE`] (100 = 1 %).
    pub floor_bp: u32,
    /// Seconds between reallocations.
    pub every_secs: u64,
}

/// A canary's ramp (`halyard deploy --ramp`): its share of traffic steps up every
/// `step_secs` while its guardrail holds; after the last step the leader promotes it, and
/// when the guardrail breaks the leader rolls it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RampPolicy {
    /// The version ramped up.
    pub canary: u64,
    /// Its shares in percent, ascending, each 1 … 99.
    pub steps: Vec<u32>,
    /// The step it is at (an index into `steps`).
    pub step: usize,
    /// Least seconds at each step.
    pub step_secs: u64,
    /// Roll back when the canary converts worse than production by the always-valid
    /// interval (an interval wholly below 0).
    pub guard_conversion: bool,
    /// Roll back when the canary fails a larger share of its requests than production
    /// (always-valid interval of the difference wholly above 0).
    #[serde(default)]
    pub guard_errors: bool,
    /// Roll back when a larger share of the canary's requests than of production's takes
    /// longer than production's p99 (always-valid interval wholly above 0).
    #[serde(default)]
    pub guard_latency: bool,
    /// Roll back when the canary is worse than production in a metric the deployment
    /// declares a guardrail ([`MetricDecl`]), by the always-valid interval.
    #[serde(default)]
    pub guard_metrics: bool,
}

/// A bandit's weights add up to this (basis points).
pub const BANDIT_SCALE: u32 = 10_000;

/// What serves a model: the traffic split and the aliases.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeploymentState {
    /// Versions that share unpinned traffic, by weight.
    pub variants: Vec<Variant>,
    /// Names of versions (`production`, `canary`, any other); a request may pin one.
    pub aliases: BTreeMap<String, u64>,
    /// The allocation policy re-weighing `variants`, when a bandit runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandit: Option<BanditPolicy>,
    /// The canary's ramp, when one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramp: Option<RampPolicy>,
}

/// A model's deployment, with the states it replaced (newest last).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Deployment {
    /// Model name.
    pub name: String,
    /// What serves now.
    pub current: DeploymentState,
    /// Earlier states, for rollback.
    pub history: Vec<DeploymentState>,
    /// Last change, ms since the epoch.
    pub updated_ms: i64,
    /// Executors that serve it ([`crate::placement`]); `None`: every live executor it fits
    /// on. Kept across changes and rollbacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// The metrics its experiment declares (none: any well-named metric is taken). Kept
    /// across changes and rollbacks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricDecl>,
}

/// How a declared metric's values are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricKind {
    /// 0 or 1 per outcome (a visit, a conversion): compared as a rate.
    Binary,
    /// Any finite number (revenue, spend): compared by Welch's test.
    Continuous,
}

/// A declared metric's part in the analysis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricRole {
    /// The one metric the experiment is decided on (shown first).
    Primary,
    /// Reported beside it.
    Secondary,
    /// Watched for harm (reported after the secondaries).
    Guardrail,
}

impl MetricRole {
    /// Its name as declared.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricRole::Primary => "primary",
            MetricRole::Secondary => "secondary",
            MetricRole::Guardrail => "guardrail",
        }
    }
}

/// A metric an experiment declares: `NAME:KIND[:ROLE]` (`visit:binary:primary`,
/// `spend:continuous`, `unsubscribe:binary:guardrail`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricDecl {
    /// The name outcomes are fed under.
    pub name: String,
    /// How its values are read.
    pub kind: MetricKind,
    /// Its part in the analysis.
    pub role: MetricRole,
    /// Lower is better (unsubscribes, complaints): a guardrail breaks when it rises.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inverse: bool,
}

/// Why `name` cannot name a metric, if it cannot.
pub fn check_metric_name(name: &str) -> std::result::Result<(), String> {
    let well_named = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if well_named {
        Ok(())
    } else {
        Err(format!(
            "metric {name:?}: a metric's name is lowercase letters, digits and _, starting with a letter, at most 64"
        ))
    }
}

impl MetricDecl {
    /// The declaration as written, `NAME:KIND:ROLE`.
    pub fn text(&self) -> String {
        let kind = match self.kind {
            MetricKind::Binary => "binary",
            MetricKind::Continuous => "continuous",
        };
        let inverse = if self.inverse { ":inverse" } else { "" };
        format!("{}:{kind}:{}{inverse}", self.name, self.role.as_str())
    }

    /// Why `value` is not one of this metric's values, if it is not.
    pub fn check(&self, value: f64) -> std::result::Result<(), String> {
        match self.kind {
            MetricKind::Binary if value != 0.0 && value != 1.0 => Err(format!(
                "metric {}: value {value} is not 0 or 1 (it is declared binary)",
                self.name
            )),
            _ if !value.is_finite() => Err(format!(
                "metric {}: value {value} is not a finite number",
                self.name
            )),
            _ => Ok(()),
        }
    }

    /// Parse declarations `NAME:KIND[:ROLE][:inverse]`: a role left out is `secondary`,
    /// except that the first metric is `primary` when none is said to be; exactly one is
    /// primary, each name once, and `conversion` is binary; `inverse`: lower is better.
    /// An empty list clears the declarations.
    pub fn parse_all(items: &[String]) -> Result<Vec<MetricDecl>> {
        const FORM: &str = "write NAME:KIND[:ROLE][:inverse], KIND binary or continuous, ROLE primary, secondary or guardrail, inverse when lower is better (such as visit:binary:primary,unsubscribe:binary:guardrail:inverse)";
        let mut out: Vec<MetricDecl> = Vec::new();
        let mut stated = Vec::new();
        for item in items {
            let mut parts: Vec<&str> = item.trim().split(':').collect();
            let bad = |why: &str| invalid("metrics", item, &format!("{why}: {FORM}"));
            let inverse = parts.len() > 2 && parts.last() == Some(&"inverse");
            if inverse {
                parts.pop();
            }
            let (name, kind, role) = match parts.as_slice() {
                [n, k] => (*n, *k, None),
                [n, k, r] => (*n, *k, Some(*r)),
                _ => return Err(bad("not a declaration")),
            };
            check_metric_name(name).map_err(|e| bad(&e))?;
            let kind = match kind {
                "binary" => MetricKind::Binary,
                "continuous" => MetricKind::Continuous,
                other => return Err(bad(&format!("unknown kind {other:?}"))),
            };
            if name == CONVERSION && kind != MetricKind::Binary {
                return Err(bad("conversion (what `converted` feeds) is binary"));
            }
            let role = match role {
                None => None,
                Some("primary") => Some(MetricRole::Primary),
                Some("secondary") => Some(MetricRole::Secondary),
                Some("guardrail") => Some(MetricRole::Guardrail),
                Some(other) => return Err(bad(&format!("unknown role {other:?}"))),
            };
            if out.iter().any(|d| d.name == name) {
                return Err(bad(&format!("{name} is declared twice")));
            }
            stated.push(role.is_some());
            out.push(MetricDecl {
                name: name.to_string(),
                kind,
                role: role.unwrap_or(MetricRole::Secondary),
                inverse,
            });
        }
        let primaries = out.iter().filter(|d| d.role == MetricRole::Primary).count();
        if primaries > 1 {
            return Err(invalid(
                "metrics",
                items.join(","),
                "declare one primary metric (the one the experiment is decided on)",
            ));
        }
        if primaries == 0
            && let Some(first) = out.first_mut()
        {
            if stated[0] {
                return Err(invalid(
                    "metrics",
                    items.join(","),
                    "declare one primary metric (the one the experiment is decided on)",
                ));
            }
            first.role = MetricRole::Primary;
        }
        Ok(out)
    }
}

/// A change to a deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Name `version` with `alias`. For production (without `percent`), it takes all
    /// traffic. With `percent`, it takes that share and production keeps the rest.
    Deploy {
        /// The version.
        version: u64,
        /// The alias to give it.
        alias: String,
        /// Its share of traffic, 1..=99, beside production.
        percent: Option<u32>,
    },
    /// Set the traffic split explicitly.
    Split(Vec<Variant>),
    /// Make the version behind `alias` production with all traffic; the alias is dropped.
    Promote {
        /// Alias to promote (default `canary`).
        alias: String,
    },
    /// Restore the state before the last change.
    Rollback,
    /// Stop serving the model.
    Undeploy,
    /// Start Thompson-sampling allocation between the policy's versions (equal shares to
    /// begin with); any later change other than [`Change::Rebalance`] ends it.
    Bandit(BanditPolicy),
    /// The leader's reallocation of a running bandit: new weights, the same policy.
    Rebalance(Vec<Variant>),
    /// Start ramping `policy.canary` up beside production, at its first step (the policy's
    /// `step` is ignored).
    Ramp(RampPolicy),
    /// The leader's move of a running ramp to its next step.
    RampStep,
    /// The leader's rollback of a running ramp whose guardrail broke: production takes
    /// all traffic again and the canary alias is dropped.
    RampAbort,
    /// Serve the model on this many executors (`None`: every one it fits on); the
    /// traffic split stays as it is.
    Replicas(Option<u32>),
    /// Declare the experiment's metrics (empty: take any); the traffic split stays as
    /// it is.
    Metrics(Vec<MetricDecl>),
}

impl DeploymentState {
    /// Every version this state can serve (variants and aliases), ascending.
    pub fn versions(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .variants
            .iter()
            .map(|v| v.version)
            .chain(self.aliases.values().copied())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The variant a request key falls in: a stable hash of the key over the weights, so
    /// one key always gets the same variant while the split stands.
    pub fn variant_for(&self, key: &str) -> Option<u64> {
        let total: u64 = self.variants.iter().map(|v| u64::from(v.weight)).sum();
        if total == 0 {
            return None;
        }
        let mut point = fnv1a(key.as_bytes()) % total;
        for v in &self.variants {
            if point < u64::from(v.weight) {
                return Some(v.version);
            }
            point -= u64::from(v.weight);
        }
        None
    }
}

/// FNV-1a, 64 bit: the same in every process and release.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Mix the high bits down: FNV's low bits follow the last byte closely.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

fn invalid(field: &str, value: impl std::fmt::Display, rule: &str) -> Error {
    Error::invalid("deployment", field, value, rule)
}

/// Production and a canary at `percent` of the traffic.
fn ramp_split(production: u64, canary: u64, percent: u32) -> Vec<Variant> {
    vec![
        Variant {
            version: production,
            weight: 100 - percent,
        },
        Variant {
            version: canary,
            weight: percent,
        },
    ]
}

/// Parse a split written as `3=90,4=10`.
pub fn parse_split(text: &str) -> Result<Vec<Variant>> {
    text.split(',')
        .map(|part| {
            let (v, w) = part.trim().split_once('=').ok_or_else(|| {
                invalid(
                    "split",
                    part,
                    "write VERSION=WEIGHT pairs, such as 3=90,4=10",
                )
            })?;
            let version = v
                .trim()
                .parse()
                .map_err(|_| invalid("split", part, "the version must be a whole number"))?;
            let weight = w
                .trim()
                .parse()
                .map_err(|_| invalid("split", part, "the weight must be a whole number"))?;
            Ok(Variant { version, weight })
        })
        .collect()
}

impl Deployment {
    /// Apply `change`; `exists(v)` says whether version `v` is registered.
    pub fn apply(&self, change: &Change, exists: impl Fn(u64) -> bool) -> Result<Deployment> {
        let check = |version: u64| {
            if exists(version) {
                Ok(())
            } else {
                Err(invalid(
                    "version",
                    version,
                    &format!(
                        "model {} has no such version (see `halyard model {}`)",
                        self.name, self.name
                    ),
                ))
            }
        };
        let old = &self.current;
        let mut next = old.clone();
        // A change by hand ends a running bandit or ramp.
        if !matches!(change, Change::Rebalance(_)) {
            next.bandit = None;
        }
        if !matches!(change, Change::RampStep) {
            next.ramp = None;
        }
        match change {
            Change::Deploy {
                version,
                alias,
                percent,
            } => {
                check(*version)?;
                if alias.is_empty() {
                    return Err(invalid("alias", "\"\"", "an alias needs a name"));
                }
                match (alias.as_str(), percent) {
                    (PRODUCTION, None) => {
                        next.variants = vec![Variant {
                            version: *version,
                            weight: 100,
                        }];
                    }
                    (PRODUCTION, Some(_)) => {
                        return Err(invalid(
                            "percent",
                            "set",
                            "production takes the traffic the others leave; give --percent to a canary",
                        ));
                    }
                    (_, Some(p)) => {
                        if !(1..=99).contains(p) {
                            return Err(invalid("percent", p, "must be between 1 and 99"));
                        }
                        let Some(prod) = old.aliases.get(PRODUCTION) else {
                            return Err(invalid(
                                "percent",
                                p,
                                "a share beside production needs a production version: deploy one first",
                            ));
                        };
                        next.variants = vec![
                            Variant {
                                version: *prod,
                                weight: 100 - p,
                            },
                            Variant {
                                version: *version,
                                weight: *p,
                            },
                        ];
                    }
                    (_, None) => {}
                }
                next.aliases.insert(alias.clone(), *version);
            }
            Change::Split(variants) => {
                if variants.is_empty() {
                    return Err(invalid("split", "(empty)", "name at least one version"));
                }
                let mut seen = Vec::new();
                for v in variants {
                    check(v.version)?;
                    if v.weight == 0 {
                        return Err(invalid("split", v.version, "a weight must be positive"));
                    }
                    if seen.contains(&v.version) {
                        return Err(invalid("split", v.version, "a version appears twice"));
                    }
                    seen.push(v.version);
                }
                next.variants = variants.clone();
                if !next.aliases.contains_key(PRODUCTION) {
                    let top = variants.iter().max_by_key(|v| v.weight).expect("not empty");
                    next.aliases.insert(PRODUCTION.into(), top.version);
                }
            }
            Change::Promote { alias } => {
                let Some(version) = old.aliases.get(alias).copied() else {
                    return Err(invalid(
                        "alias",
                        alias,
                        &format!("model {} has no such alias to promote", self.name),
                    ));
                };
                next.aliases.remove(alias);
                next.aliases.insert(PRODUCTION.into(), version);
                next.variants = vec![Variant {
                    version,
                    weight: 100,
                }];
            }
            Change::Replicas(n) => {
                if *n == Some(0) {
                    return Err(invalid(
                        "replicas",
                        0,
                        "serve on at least 1 executor (undeploy to stop serving; 0 in a request means every executor)",
                    ));
                }
                let mut out = self.clone();
                out.replicas = *n;
                out.updated_ms = crate::records::now_ms();
                return Ok(out);
            }
            Change::Metrics(declared) => {
                let mut out = self.clone();
                out.metrics = declared.clone();
                return Ok(out);
            }
            Change::Rollback => {
                let mut out = self.clone();
                let Some(prev) = out.history.pop() else {
                    return Err(invalid(
                        "rollback",
                        &self.name,
                        "nothing to roll back to: the deployment has no earlier state",
                    ));
                };
                out.current = prev;
                out.updated_ms = crate::records::now_ms();
                return Ok(out);
            }
            Change::Undeploy => {
                next = DeploymentState::default();
            }
            Change::Bandit(policy) => {
                let n = policy.versions.len();
                if n < 2 {
                    return Err(invalid(
                        "bandit",
                        n,
                        "name at least two versions to allocate between",
                    ));
                }
                for (i, v) in policy.versions.iter().enumerate() {
                    check(*v)?;
                    if policy.versions[..i].contains(v) {
                        return Err(invalid("bandit", v, "a version appears twice"));
                    }
                }
                if policy.floor_bp as usize * n >= BANDIT_SCALE as usize {
                    return Err(invalid(
                        "floor",
                        format!("{:.2}%", f64::from(policy.floor_bp) / 100.0),
                        &format!("the {n} versions' floors must leave traffic to allocate"),
                    ));
                }
                if policy.every_secs == 0 {
                    return Err(invalid("every", 0, "must be at least one second"));
                }
                let share = BANDIT_SCALE / n as u32;
                next.variants = policy
                    .versions
                    .iter()
                    .enumerate()
                    .map(|(i, v)| Variant {
                        version: *v,
                        // The first takes the remainder of the division.
                        weight: share + if i == 0 { BANDIT_SCALE % n as u32 } else { 0 },
                    })
                    .collect();
                if !next
                    .aliases
                    .get(PRODUCTION)
                    .is_some_and(|p| policy.versions.contains(p))
                {
                    next.aliases.insert(PRODUCTION.into(), policy.versions[0]);
                }
                next.bandit = Some(policy.clone());
            }
            Change::Ramp(policy) => {
                check(policy.canary)?;
                let Some(prod) = old.aliases.get(PRODUCTION).copied() else {
                    return Err(invalid(
                        "ramp",
                        policy.canary,
                        "a ramp beside production needs a production version: deploy one first",
                    ));
                };
                if prod == policy.canary {
                    return Err(invalid(
                        "ramp",
                        policy.canary,
                        "this version is production already",
                    ));
                }
                let steps = &policy.steps;
                if steps.is_empty()
                    || steps.iter().any(|s| !(1..=99).contains(s))
                    || steps.windows(2).any(|w| w[0] >= w[1])
                {
                    return Err(invalid(
                        "ramp",
                        format!("{steps:?}"),
                        "give ascending shares between 1 and 99, such as 1,10,50 (the last step promotes)",
                    ));
                }
                if policy.step_secs == 0 {
                    return Err(invalid("step", 0, "must be at least one second"));
                }
                if policy.guard_metrics
                    && !self.metrics.iter().any(|m| m.role == MetricRole::Guardrail)
                {
                    return Err(invalid(
                        "guardrail",
                        "metrics",
                        &format!(
                            "model {} declares no guardrail metric: declare one first (halyard deploy {} --metrics NAME:KIND:guardrail)",
                            self.name, self.name
                        ),
                    ));
                }
                next.variants = ramp_split(prod, policy.canary, steps[0]);
                next.aliases.insert(CANARY.into(), policy.canary);
                next.ramp = Some(RampPolicy {
                    step: 0,
                    ..policy.clone()
                });
            }
            Change::RampStep => {
                let Some(ramp) = next.ramp.as_mut() else {
                    return Err(invalid(
                        "ramp",
                        &self.name,
                        "no ramp runs on this deployment",
                    ));
                };
                let prod = old.aliases.get(PRODUCTION).copied().unwrap_or_default();
                if ramp.step + 1 >= ramp.steps.len() {
                    return Err(invalid(
                        "ramp",
                        &self.name,
                        "the ramp is at its last step: promote the canary",
                    ));
                }
                ramp.step += 1;
                next.variants = ramp_split(prod, ramp.canary, ramp.steps[ramp.step]);
            }
            Change::RampAbort => {
                let Some(ramp) = &old.ramp else {
                    return Err(invalid(
                        "ramp",
                        &self.name,
                        "no ramp runs on this deployment",
                    ));
                };
                let prod = old.aliases.get(PRODUCTION).copied().unwrap_or_default();
                next.variants = vec![Variant {
                    version: prod,
                    weight: 100,
                }];
                if next.aliases.get(CANARY) == Some(&ramp.canary) {
                    next.aliases.remove(CANARY);
                }
            }
            Change::Rebalance(variants) => {
                let Some(policy) = &old.bandit else {
                    return Err(invalid(
                        "rebalance",
                        &self.name,
                        "no bandit runs on this deployment",
                    ));
                };
                if variants.len() != policy.versions.len()
                    || variants
                        .iter()
                        .any(|v| v.weight == 0 || !policy.versions.contains(&v.version))
                {
                    return Err(invalid(
                        "rebalance",
                        &self.name,
                        "the weights must cover the bandit's versions, each positive",
                    ));
                }
                next.variants = variants.clone();
            }
        }
        let mut out = self.clone();
        out.history.push(old.clone());
        if out.history.len() > MAX_HISTORY {
            out.history.remove(0);
        }
        out.current = next;
        out.updated_ms = crate::records::now_ms();
        Ok(out)
    }
}

/// Outcomes fed back for one version of a model: the `conversion` metric's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Outcomes {
    /// Outcomes recorded.
    pub trials: u64,
    /// Of which conversions.
    pub conversions: u64,
}

/// The metric a `converted` outcome feeds (values 0 and 1).
pub const CONVERSION: &str = "conversion";

/// The running moments of one metric's values: count, sum and the sum of squared
/// deviations (Welford's update, Chan's merge: no cancellation at large means).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct MetricSums {
    /// Values.
    pub n: u64,
    /// Their sum.
    pub sum: f64,
    /// Sum of squared deviations from their mean.
    pub m2: f64,
}

impl MetricSums {
    /// The mean (0 when empty).
    pub fn mean(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.sum / self.n as f64
        }
    }

    /// Add one value.
    pub fn push(&mut self, x: f64) {
        let before = self.mean();
        self.n += 1;
        self.sum += x;
        self.m2 += (x - before) * (x - self.mean());
    }

    /// Add another set's values.
    pub fn merge(&mut self, o: &MetricSums) {
        if o.n == 0 {
            return;
        }
        if self.n == 0 {
            *self = *o;
            return;
        }
        let (na, nb) = (self.n as f64, o.n as f64);
        let delta = o.mean() - self.mean();
        self.m2 += o.m2 + delta * delta * na * nb / (na + nb);
        self.n += o.n;
        self.sum += o.sum;
    }
}

/// Longest served time a [`Latency`] tells apart (longer ones count as this), µs.
const LATENCY_MAX_US: u64 = 600_000_000;

/// The times a version took to score its requests, in microseconds: an HdrHistogram
/// (two significant digits, 1 µs to 10 minutes) that merges across nodes. On the wire it
/// is the list of recorded `[value, count]` pairs.
#[derive(Debug, Clone, PartialEq)]
pub struct Latency(hdrhistogram::Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Latency(
            hdrhistogram::Histogram::new_with_bounds(1, LATENCY_MAX_US, 2)
                .expect("valid histogram bounds"),
        )
    }
}

impl Latency {
    /// Count one request that took `micros`.
    pub fn record(&mut self, micros: u64) {
        self.0.saturating_record(micros.max(1));
    }

    /// Add another's counts.
    pub fn merge(&mut self, o: &Latency) {
        self.0.add(&o.0).expect("latencies share their bounds");
    }

    /// Requests counted.
    pub fn len(&self) -> u64 {
        self.0.len()
    }

    /// Whether none was counted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The time under which a share `q` of the requests finished, µs (0 when empty).
    pub fn quantile_us(&self, q: f64) -> u64 {
        self.0.value_at_quantile(q)
    }

    /// Requests that took longer than `micros` (beyond the histogram bucket that holds
    /// it, so a request in that bucket is not counted as slower).
    pub fn slower_than(&self, micros: u64) -> u64 {
        self.len() - self.0.count_between(0, micros)
    }
}

impl Serialize for Latency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(
            self.0
                .iter_recorded()
                .map(|v| [v.value_iterated_to(), v.count_at_value()]),
        )
    }
}

impl<'de> Deserialize<'de> for Latency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let pairs = Vec::<[u64; 2]>::deserialize(d)?;
        let mut l = Latency::default();
        for [value, count] in pairs {
            l.0.saturating_record_n(value.max(1), count);
        }
        Ok(l)
    }
}

/// What one node counted for one version of a model: exposures and outcomes from its
/// event log, and the requests it served (since the node started: serving counts are
/// kept in memory and published, not logged, so a restarted node counts from zero).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct VersionTally {
    /// Exposures: predictions served with a request key.
    pub exposures: u64,
    /// Outcomes by metric name.
    pub metrics: BTreeMap<String, MetricSums>,
    /// Prediction requests the version was chosen for.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub requests: u64,
    /// Of which failed: it could not read a record or score it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub errors: u64,
    /// How long it took to read and score each request's records.
    #[serde(default, skip_serializing_if = "Latency::is_empty")]
    pub latency: Latency,
}

impl VersionTally {
    /// Add another tally's counts.
    pub fn merge(&mut self, o: &VersionTally) {
        self.exposures += o.exposures;
        self.requests += o.requests;
        self.errors += o.errors;
        self.latency.merge(&o.latency);
        for (name, m) in &o.metrics {
            self.metrics.entry(name.clone()).or_default().merge(m);
        }
    }

    /// The `conversion` metric as counts.
    pub fn outcomes(&self) -> Outcomes {
        self.metrics
            .get(CONVERSION)
            .map_or_else(Outcomes::default, |m| Outcomes {
                trials: m.n,
                conversions: m.sum.round() as u64,
            })
    }
}

/// One node's event-log counts for one model (published to the coordinator; the live
/// views add up every node's).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct NodeTally {
    /// The event log (one per node's data folder).
    pub node: String,
    /// The model.
    pub model: String,
    /// When it was counted (ms since the epoch).
    pub updated_ms: i64,
    /// Counts per version.
    pub versions: BTreeMap<u64, VersionTally>,
}

/// The `conversion` outcomes of each version that has any, from the summed tallies.
pub fn outcomes_of(totals: &BTreeMap<u64, VersionTally>) -> Vec<(u64, Outcomes)> {
    totals
        .iter()
        .map(|(v, t)| (*v, t.outcomes()))
        .filter(|(_, o)| o.trials > 0)
        .collect()
}

/// The sum of nodes' tallies per version.
pub fn total(tallies: &[NodeTally]) -> BTreeMap<u64, VersionTally> {
    let mut out: BTreeMap<u64, VersionTally> = BTreeMap::new();
    for t in tallies {
        for (v, c) in &t.versions {
            out.entry(*v).or_default().merge(c);
        }
    }
    out
}

/// Sticky assignments one node made while a bandit ran: each key and the version it got
/// (the first record of a key, by the coordinator's revision, is the one every node
/// keeps).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StickyBatch {
    /// Request keys (customer ids).
    pub keys: Vec<String>,
    /// The version each got.
    pub versions: Vec<u64>,
}

/// A stored [`StickyBatch`] with where and when it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct StickyRecord {
    /// Its key in the coordinator (names it among a model's records).
    pub id: String,
    /// The coordinator's revision when it was written: the earlier record of a key wins.
    pub revision: i64,
    /// The assignments.
    pub batch: StickyBatch,
}

/// What one executor serves, under its lease: model name → loaded versions.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ServingInfo {
    /// The executor.
    pub executor: String,
    /// Where it answers (`HOST:PORT`, HTTP and gRPC).
    pub address: String,
    /// Models and their loaded versions.
    pub models: BTreeMap<String, Vec<u64>>,
}

/// An executor's last whole window of a served version's inputs, under its lease (the
/// drift monitor merges the windows of every executor serving the version).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftWindow {
    /// The executor.
    pub executor: String,
    /// The model.
    pub model: String,
    /// The version whose inputs were counted.
    pub version: u64,
    /// When the window closed, ms since the epoch.
    pub closed_ms: i64,
    /// The counts and their reference, as `halyard_models::drift::Window` writes them.
    pub window: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_metrics_parse_and_outlive_changes_to_the_split() {
        let parse = |items: &[&str]| {
            MetricDecl::parse_all(&items.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        };
        let m = parse(&[
            "visit:binary",
            "spend:continuous:primary",
            "unsub:binary:guardrail:inverse",
        ])
        .unwrap();
        let text: Vec<String> = m.iter().map(MetricDecl::text).collect();
        assert_eq!(
            text,
            [
                "visit:binary:secondary",
                "spend:continuous:primary",
                "unsub:binary:guardrail:inverse"
            ]
        );
        assert!(m[2].inverse && !m[0].inverse);
        // Written back as read.
        assert_eq!(
            parse(&text.iter().map(String::as_str).collect::<Vec<_>>()).unwrap(),
            m
        );
        assert_eq!(
            parse(&["visit:binary"]).unwrap()[0].role,
            MetricRole::Primary
        );
        assert!(parse(&[]).unwrap().is_empty());
        for bad in [
            &["visit"][..],
            &["visit:binary:main"],
            &["visit:binary:secondary"],
            &["a:binary:primary", "b:binary:primary"],
            &["conversion:continuous"],
            &["9lives:binary"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(m[0].check(1.0).is_ok() && m[0].check(0.5).is_err());
        assert!(m[1].check(-3.25).is_ok() && m[1].check(f64::NAN).is_err());

        let exists = |v: u64| (1..=2).contains(&v);
        let d = Deployment {
            name: "m".into(),
            ..Deployment::default()
        };
        let d = d.apply(&Change::Metrics(m.clone()), exists).unwrap();
        let d = d
            .apply(
                &Change::Deploy {
                    version: 1,
                    alias: PRODUCTION.into(),
                    percent: None,
                },
                exists,
            )
            .unwrap();
        let d = d.apply(&Change::Rollback, exists).unwrap();
        assert_eq!(d.metrics, m);
        assert!(
            d.apply(&Change::Metrics(vec![]), exists)
                .unwrap()
                .metrics
                .is_empty()
        );
    }

    #[test]
    fn latencies_merge_across_nodes_and_travel_as_recorded_pairs() {
        let (mut a, mut b, mut all) = (Latency::default(), Latency::default(), Latency::default());
        for us in 1..=1000u64 {
            let l = if us % 3 == 0 { &mut a } else { &mut b };
            l.record(us * 10);
            all.record(us * 10);
        }
        a.merge(&b);
        assert_eq!(a, all);
        assert_eq!(a.len(), 1000);
        // Two significant digits: the p99 of 10 µs … 10 ms is 9.9 ms to within 1 %.
        let p99 = a.quantile_us(0.99) as f64;
        assert!((p99 - 9_900.0).abs() <= 99.0, "{p99}");
        // Ten took longer than 9.9 ms; the one in 9.9 ms's bucket (64 µs wide there) is
        // not counted as slower.
        assert_eq!(a.slower_than(9_900), 9);
        let t = VersionTally {
            requests: 1000,
            errors: 3,
            latency: a.clone(),
            ..VersionTally::default()
        };
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<VersionTally>(&json).unwrap(), t);
        // A tally without requests is written as before (older nodes read it).
        let plain = serde_json::to_string(&VersionTally::default()).unwrap();
        assert_eq!(plain, r#"{"exposures":0,"metrics":{}}"#);
    }

    #[test]
    fn a_file_changed_since_publishing_is_refused_by_name() {
        let v = ModelVersion {
            sealed_with: None,
            name: "m".into(),
            version: 2,
            artifact: "file:///s/models/m/2".into(),
            model_type: "mlp".into(),
            metrics: Default::default(),
            job_id: "j".into(),
            data_source: String::new(),
            data_digest: String::new(),
            created_ms: 0,
            memory_bytes: 0,
            files: [(
                "model.safetensors".to_string(),
                crate::data::digest(b"weights"),
            )]
            .into(),
            profile: None,
            evaluation: None,
        };
        assert!(v.check_file("model.safetensors", b"weights").is_ok());
        let err = v
            .check_file("model.safetensors", b"weightz")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("model.safetensors") && err.contains("changed"),
            "{err}"
        );
        // A file without a recorded digest (published before digests) is not checked.
        assert!(v.check_file("manifest.json", b"anything").is_ok());
    }

    fn deployed(versions: &[u64]) -> impl Fn(u64) -> bool + '_ {
        move |v| versions.contains(&v)
    }

    fn deploy(
        d: &Deployment,
        version: u64,
        alias: &str,
        percent: Option<u32>,
    ) -> Result<Deployment> {
        d.apply(
            &Change::Deploy {
                version,
                alias: alias.into(),
                percent,
            },
            deployed(&[1, 2, 3]),
        )
    }

    #[test]
    fn canary_promote_and_rollback_restore_each_state() {
        let d = Deployment {
            name: "m".into(),
            ..Deployment::default()
        };
        let d1 = deploy(&d, 1, PRODUCTION, None).unwrap();
        assert_eq!(
            d1.current.variants,
            vec![Variant {
                version: 1,
                weight: 100
            }]
        );
        let d2 = deploy(&d1, 2, CANARY, Some(10)).unwrap();
        assert_eq!(
            d2.current.variants,
            vec![
                Variant {
                    version: 1,
                    weight: 90
                },
                Variant {
                    version: 2,
                    weight: 10
                }
            ]
        );
        let d3 = d2
            .apply(
                &Change::Promote {
                    alias: CANARY.into(),
                },
                deployed(&[1, 2]),
            )
            .unwrap();
        assert_eq!(d3.current.aliases.get(PRODUCTION), Some(&2));
        assert!(!d3.current.aliases.contains_key(CANARY));
        assert_eq!(d3.current.versions(), vec![2]);
        let back = d3.apply(&Change::Rollback, deployed(&[])).unwrap();
        assert_eq!(back.current, d2.current);
        let back = back.apply(&Change::Rollback, deployed(&[])).unwrap();
        assert_eq!(back.current, d1.current);
    }

    #[test]
    fn bad_changes_are_refused_with_the_rule() {
        let d = Deployment {
            name: "m".into(),
            ..Deployment::default()
        };
        let e = deploy(&d, 9, PRODUCTION, None).unwrap_err().to_string();
        assert!(e.contains("no such version"), "{e}");
        let e = deploy(&d, 2, CANARY, Some(10)).unwrap_err().to_string();
        assert!(e.contains("needs a production version"), "{e}");
        let d1 = deploy(&d, 1, PRODUCTION, None).unwrap();
        assert!(deploy(&d1, 2, CANARY, Some(100)).is_err());
        let e = d
            .apply(&Change::Rollback, deployed(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nothing to roll back"), "{e}");
        assert!(parse_split("3=90,4").is_err());
        assert!(
            d1.apply(&Change::Split(parse_split("1=0").unwrap()), deployed(&[1]))
                .is_err()
        );
    }

    #[test]
    fn a_bandit_starts_equal_rebalances_and_ends_with_a_change_by_hand() {
        let d = Deployment {
            name: "m".into(),
            ..Deployment::default()
        };
        let exists = |v: u64| (1..=3).contains(&v);
        let policy = BanditPolicy {
            versions: vec![1, 2, 3],
            floor_bp: 100,
            every_secs: 60,
        };
        let d = d.apply(&Change::Bandit(policy.clone()), exists).unwrap();
        let weights: Vec<u32> = d.current.variants.iter().map(|v| v.weight).collect();
        assert_eq!(weights, vec![3334, 3333, 3333]);
        assert_eq!(d.current.aliases[PRODUCTION], 1);
        let shift = parse_split("1=100,2=9800,3=100").unwrap();
        let d = d.apply(&Change::Rebalance(shift.clone()), exists).unwrap();
        assert_eq!(d.current.variants, shift);
        assert_eq!(d.current.bandit.as_ref(), Some(&policy));
        // Weights for versions the bandit does not run are refused.
        let err = d.apply(
            &Change::Rebalance(parse_split("1=50,4=50").unwrap()),
            exists,
        );
        assert!(err.is_err());
        // Rollback restores the state before the last change, policy included.
        let back = d.apply(&Change::Rollback, exists).unwrap();
        assert_eq!(back.current.variants.len(), 3);
        assert!(back.current.bandit.is_some());
        // A split by hand ends the bandit; the leader can no longer rebalance.
        let manual = d
            .apply(&Change::Split(parse_split("2=100").unwrap()), exists)
            .unwrap();
        assert!(manual.current.bandit.is_none());
        assert!(manual.apply(&Change::Rebalance(shift), exists).is_err());
        // Too few versions, or floors that leave nothing to allocate, are refused.
        let bad = |versions: Vec<u64>, floor_bp| {
            Deployment::default()
                .apply(
                    &Change::Bandit(BanditPolicy {
                        versions,
                        floor_bp,
                        every_secs: 60,
                    }),
                    exists,
                )
                .unwrap_err()
                .to_string()
        };
        assert!(bad(vec![1], 100).contains("at least two"));
        assert!(bad(vec![1, 2], 5000).contains("floors"));
    }

    #[test]
    fn a_ramp_steps_up_aborts_to_production_and_ends_with_a_change_by_hand() {
        let exists = |v: u64| (1..=2).contains(&v);
        let d = Deployment {
            name: "m".into(),
            ..Deployment::default()
        }
        .apply(
            &Change::Deploy {
                version: 1,
                alias: PRODUCTION.into(),
                percent: None,
            },
            exists,
        )
        .unwrap();
        let policy = RampPolicy {
            canary: 2,
            steps: vec![1, 10, 50],
            step: 7,
            step_secs: 60,
            guard_conversion: true,
            guard_errors: true,
            guard_latency: false,
            guard_metrics: false,
        };
        let d = d.apply(&Change::Ramp(policy), exists).unwrap();
        assert_eq!(d.current.variants, parse_split("1=99,2=1").unwrap());
        assert_eq!(d.current.aliases[CANARY], 2);
        assert_eq!(d.current.ramp.as_ref().unwrap().step, 0);
        let d = d.apply(&Change::RampStep, exists).unwrap();
        let d = d.apply(&Change::RampStep, exists).unwrap();
        assert_eq!(d.current.variants, parse_split("1=50,2=50").unwrap());
        assert!(
            d.apply(&Change::RampStep, exists).is_err(),
            "past the last step"
        );
        let aborted = d.apply(&Change::RampAbort, exists).unwrap();
        assert_eq!(aborted.current.variants, parse_split("1=100").unwrap());
        assert!(aborted.current.ramp.is_none() && !aborted.current.aliases.contains_key(CANARY));
        let promoted = d
            .apply(
                &Change::Promote {
                    alias: CANARY.into(),
                },
                exists,
            )
            .unwrap();
        assert!(promoted.current.ramp.is_none());
        assert_eq!(promoted.current.aliases[PRODUCTION], 2);
        let bad = |steps: Vec<u32>| {
            let p = RampPolicy {
                canary: 2,
                steps,
                step: 0,
                step_secs: 60,
                guard_conversion: false,
                guard_errors: false,
                guard_latency: false,
                guard_metrics: false,
            };
            d.apply(&Change::Ramp(p), exists).is_err()
        };
        assert!(bad(vec![]) && bad(vec![10, 5]) && bad(vec![0, 50]) && bad(vec![50, 100]));
    }

    #[test]
    fn split_by_key_is_stable_and_follows_the_weights() {
        let state = DeploymentState {
            variants: parse_split("3=90,4=10").unwrap(),
            ..DeploymentState::default()
        };
        let mut fours = 0;
        for i in 0..10_000 {
            let key = format!("customer-{i}");
            let v = state.variant_for(&key).unwrap();
            assert_eq!(state.variant_for(&key), Some(v));
            if v == 4 {
                fours += 1;
            }
        }
        assert!(
            (800..1200).contains(&fours),
            "{fours} of 10000 on the 10% variant"
        );
    }
}

/// One immutable version of an audience: who a scoring job picked, and how it differs
/// from the version before.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudienceVersion {
    /// Audience name (the scoring job spec's `name`).
    pub name: String,
    /// Version number, from 1.
    pub version: u64,
    /// URL of the version's folder (`audience.parquet`, `added.parquet`, `removed.parquet`,
    /// `audience.json`).
    pub location: String,
    /// The job that wrote it.
    pub job_id: String,
    /// The model that scored.
    pub model: String,
    /// Its version.
    pub model_version: u64,
    /// The rule that picked it, as written (`top_k = 1000`, …).
    pub rule: String,
    /// Rows in the audience.
    pub size: u64,
    /// Rows scored (the table's rows less the rejected ones).
    pub scored: u64,
    /// Rows the `exclude` predicate left out.
    pub excluded: u64,
    /// Rows that could not be scored (in the run's rejects files).
    pub rejected: u64,
    /// Keys in this version and not the previous one.
    pub entered: u64,
    /// Keys in the previous version and not this one.
    pub left: u64,
    /// Scoring time, ms since the epoch.
    pub created_ms: i64,
}
