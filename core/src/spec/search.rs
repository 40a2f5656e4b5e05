//! The `[search]` section of a job spec: the space of parameters, how trials are sampled
//! from it, how a trial's parameters are set on a spec, and the rungs of successive
//! halving. The search's progress (trials, promotions) is `crate::search`.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::JobSpec;
use crate::error::{Error, Result};

/// The `[search]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchSpec {
    /// `grid`, `random` or `asha`.
    pub strategy: Strategy,
    /// Trials to sample (`random`, `asha`); `grid` runs every combination, or the first
    /// `trials` of them.
    #[serde(default)]
    pub trials: Option<usize>,
    /// Trials running at once.
    #[serde(default = "default_parallel")]
    pub parallel: usize,
    /// Seed of the sampling.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// ASHA: epochs of the first rung (trees, for boosted trees).
    #[serde(default = "default_min_epochs")]
    pub min_epochs: u32,
    /// ASHA: each rung trains `reduction` times longer and keeps `1 / reduction` of the trials.
    #[serde(default = "default_reduction")]
    pub reduction: u32,
    /// The parameters searched: `[train]` `learning_rate`, `weight_decay`, `batch_size`,
    /// `patience`; `[model]` `hidden`, `max_embedding`, `max_categories`; for boosted trees
    /// `num_leaves`, `max_depth`, `min_data_in_leaf`, `min_sum_hessian`, `lambda_l1`,
    /// `lambda_l2`, `feature_fraction`, `bagging_fraction`, `max_bins`.
    pub space: BTreeMap<String, Dist>,
}

fn default_parallel() -> usize {
    2
}
fn default_seed() -> u64 {
    1
}
fn default_min_epochs() -> u32 {
    1
}
fn default_reduction() -> u32 {
    3
}

/// Search strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Every combination of the `choice` values.
    Grid,
    /// `trials` samples, each trained to the end.
    Random,
    /// `trials` samples, trained rung by rung; the weak ones stop early.
    Asha,
}

/// A parameter's distribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Dist {
    /// One of the values.
    Choice(Vec<serde_json::Value>),
    /// Uniform in `[low, high]`.
    Uniform([f64; 2]),
    /// Log-uniform in `[low, high]` (both > 0).
    LogUniform([f64; 2]),
    /// An integer in `[low, high]`.
    Int([i64; 2]),
}

/// The parameters of one trial.
pub type Params = BTreeMap<String, serde_json::Value>;

const PARAMS: &[&str] = &[
    "learning_rate",
    "weight_decay",
    "batch_size",
    "patience",
    "hidden",
    "max_embedding",
    "max_categories",
    "num_leaves",
    "max_depth",
    "min_data_in_leaf",
    "min_sum_hessian",
    "lambda_l1",
    "lambda_l2",
    "feature_fraction",
    "bagging_fraction",
    "max_bins",
];

impl SearchSpec {
    /// Check the section (`at` names it in errors).
    pub fn validate(&self, at: &str, spec: &JobSpec) -> Result<()> {
        if self.space.is_empty() {
            return Err(Error::invalid(
                at,
                "space",
                "{}",
                "must name at least one parameter",
            ));
        }
        for (name, dist) in &self.space {
            if !PARAMS.contains(&name.as_str()) {
                return Err(Error::invalid(
                    at,
                    format!("space.{name}"),
                    name,
                    format!(
                        "is not a searchable parameter; these are: {}",
                        PARAMS.join(", ")
                    ),
                ));
            }
            let ok = match dist {
                Dist::Choice(v) => !v.is_empty(),
                Dist::Uniform([lo, hi]) => lo.is_finite() && hi.is_finite() && lo <= hi,
                Dist::LogUniform([lo, hi]) => {
                    lo.is_finite() && hi.is_finite() && *lo > 0.0 && lo <= hi
                }
                Dist::Int([lo, hi]) => lo <= hi,
            };
            if !ok {
                return Err(Error::invalid(
                    at,
                    format!("space.{name}"),
                    format!("{dist:?}"),
                    "choice needs values; uniform, log_uniform and int need [low, high] with low <= high (log_uniform: low > 0)",
                ));
            }
            if self.strategy == Strategy::Grid && !matches!(dist, Dist::Choice(_) | Dist::Int(_)) {
                return Err(Error::invalid(
                    at,
                    format!("space.{name}"),
                    format!("{dist:?}"),
                    "a grid search takes choice or int parameters only",
                ));
            }
        }
        if self.strategy != Strategy::Grid && self.trials.is_none_or(|t| t == 0) {
            return Err(Error::invalid(
                at,
                "trials",
                "(absent)",
                "random and asha searches need trials >= 1",
            ));
        }
        if self.trials.is_some_and(|t| t > 1000) {
            return Err(Error::invalid(
                at,
                "trials",
                self.trials.unwrap_or(0),
                "must be at most 1000",
            ));
        }
        if !(1..=64).contains(&self.parallel) {
            return Err(Error::invalid(
                at,
                "parallel",
                self.parallel,
                "must be between 1 and 64",
            ));
        }
        if self.reduction < 2 {
            return Err(Error::invalid(
                at,
                "reduction",
                self.reduction,
                "must be at least 2",
            ));
        }
        let (budget, unit) = spec.rung_budget();
        if self.min_epochs < 1 || self.min_epochs > budget {
            let limit = if unit == "trees" {
                "[model] trees"
            } else {
                "[train] epochs"
            };
            return Err(Error::invalid(
                at,
                "min_epochs",
                self.min_epochs,
                format!("must be between 1 and {limit} ({budget}): a rung counts {unit}"),
            ));
        }
        if spec.model.ensemble != 1 {
            return Err(Error::invalid(
                at,
                "strategy",
                format!("{:?}", self.strategy),
                "a search trains one model per trial: set [model] ensemble = 1",
            ));
        }
        // Every sampled trial must make a valid spec.
        if !matches!(
            spec.model.kind,
            crate::spec::ModelKind::Mlp
                | crate::spec::ModelKind::Gbdt
                | crate::spec::ModelKind::Blend
        ) {
            return Err(Error::invalid(
                at,
                "strategy",
                format!("{:?}", self.strategy),
                "a search trains [model] type = \"mlp\", \"gbdt\" or \"blend\" (its trials run data-parallel, with checkpoints)",
            ));
        }
        if spec.model.kind == crate::spec::ModelKind::Blend && self.strategy == Strategy::Asha {
            return Err(Error::invalid(
                at,
                "strategy",
                "asha",
                "a blend's trial trains its mlp, then its trees, to the end (a rung would span both parts): use \"random\" or \"grid\"",
            ));
        }
        for params in self.sample().iter().take(50) {
            let mut s = spec.clone();
            s.search = None;
            apply(&mut s, params)
                .map_err(|e| Error::invalid(at, "space", format!("{params:?}"), e))?;
        }
        Ok(())
    }

    /// The trials' parameters, in trial order.
    pub fn sample(&self) -> Vec<Params> {
        match self.strategy {
            Strategy::Grid => {
                let mut all: Vec<Params> = vec![Params::new()];
                for (name, dist) in &self.space {
                    let values: Vec<serde_json::Value> = match dist {
                        Dist::Choice(v) => v.clone(),
                        Dist::Int([lo, hi]) => (*lo..=*hi).map(serde_json::Value::from).collect(),
                        _ => Vec::new(),
                    };
                    all = all
                        .into_iter()
                        .flat_map(|p| {
                            values.iter().map(move |v| {
                                let mut p = p.clone();
                                p.insert(name.clone(), v.clone());
                                p
                            })
                        })
                        .collect();
                }
                all.truncate(self.trials.unwrap_or(usize::MAX).min(1000));
                all
            }
            Strategy::Random | Strategy::Asha => {
                let mut rng = rand::rngs::StdRng::seed_from_u64(self.seed);
                (0..self.trials.unwrap_or(0))
                    .map(|_| {
                        self.space
                            .iter()
                            .map(|(name, dist)| {
                                let v = match dist {
                                    Dist::Choice(v) => v[rng.random_range(0..v.len())].clone(),
                                    Dist::Uniform([lo, hi]) => serde_json::Value::from(
                                        lo + rng.random::<f64>() * (hi - lo),
                                    ),
                                    Dist::LogUniform([lo, hi]) => serde_json::Value::from(
                                        (lo.ln() + rng.random::<f64>() * (hi.ln() - lo.ln())).exp(),
                                    ),
                                    Dist::Int([lo, hi]) => {
                                        serde_json::Value::from(rng.random_range(*lo..=*hi))
                                    }
                                };
                                (name.clone(), v)
                            })
                            .collect()
                    })
                    .collect()
            }
        }
    }

    /// Epochs at the end of each rung: `min_epochs × reduction^k`, then `[train] epochs`.
    /// Grid and random searches have one rung, the whole training.
    pub fn rungs(&self, epochs: u32) -> Vec<u32> {
        if self.strategy != Strategy::Asha {
            return vec![epochs];
        }
        let mut out = Vec::new();
        let mut r = self.min_epochs.max(1);
        while r < epochs {
            out.push(r);
            r = r.saturating_mul(self.reduction);
        }
        out.push(epochs);
        out
    }
}

/// Set a trial's parameters on a spec; the error says which value does not fit.
pub fn apply(spec: &mut JobSpec, params: &Params) -> std::result::Result<(), String> {
    let float = |v: &serde_json::Value| v.as_f64().ok_or(format!("{v} is not a number"));
    let int = |v: &serde_json::Value| {
        v.as_u64()
            .or_else(|| {
                v.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                    .map(|f| f as u64)
            })
            .ok_or(format!("{v} is not a whole number >= 0"))
    };
    for (name, v) in params {
        match name.as_str() {
            "learning_rate" => spec.train.learning_rate = float(v)?,
            "weight_decay" => spec.train.weight_decay = float(v)?,
            "batch_size" => spec.train.batch_size = int(v)? as usize,
            "patience" => spec.train.patience = int(v)? as u32,
            "max_embedding" => spec.model.max_embedding = int(v)? as usize,
            "max_categories" => spec.model.max_categories = int(v)? as usize,
            "num_leaves" => spec.model.num_leaves = int(v)? as usize,
            "max_depth" => spec.model.max_depth = int(v)? as usize,
            "min_data_in_leaf" => spec.model.min_data_in_leaf = int(v)? as usize,
            "min_sum_hessian" => spec.model.min_sum_hessian = float(v)?,
            "lambda_l1" => spec.model.lambda_l1 = float(v)?,
            "lambda_l2" => spec.model.lambda_l2 = float(v)?,
            "feature_fraction" => spec.model.feature_fraction = float(v)?,
            "bagging_fraction" => spec.model.bagging_fraction = float(v)?,
            "max_bins" => spec.model.max_bins = int(v)? as usize,
            "hidden" => {
                spec.model.hidden = match v {
                    serde_json::Value::Array(a) => a
                        .iter()
                        .map(|x| int(x).map(|n| n as usize))
                        .collect::<std::result::Result<_, _>>()?,
                    other => vec![int(other)? as usize],
                }
            }
            other => return Err(format!("{other} is not a searchable parameter")),
        }
    }
    spec.validate("trial").map_err(|e| e.to_string())
}
