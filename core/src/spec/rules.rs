//! The job spec's rules. Each section has a table: every value with whether its rule
//! holds, in the order they are checked; [`JobSpec::validate`] reports the first broken
//! rule with the section, the field, the value as written and the rule. The `[features]`
//! sources and steps, whose rules repeat per item, are checked item by item.

use std::fmt::Display;

use super::{
    DeviceKind, FeaturesSpec, ForecastSpec, JobSpec, ModelKind, SeriesLayout, SplitSpec,
    is_identifier,
};
use crate::error::{Error, Result};

/// What a `date_format` must be.
const DATE_FORMAT_RULE: &str =
    "must be a strftime pattern with a date in it, such as \"%d/%m/%Y\" or \"%m/%d/%Y %H:%M\"";

/// One rule of a table: a field, its value as written, whether the rule holds, and the rule.
pub(super) struct Rule {
    field: String,
    value: String,
    holds: bool,
    rule: String,
}

pub(super) fn rule(
    field: impl Into<String>,
    value: impl Display,
    holds: bool,
    text: impl Into<String>,
) -> Rule {
    Rule {
        field: field.into(),
        value: value.to_string(),
        holds,
        rule: text.into(),
    }
}

/// The first rule of `table` that does not hold, as the error of section `at`.
pub(super) fn first_broken(at: &str, table: impl IntoIterator<Item = Rule>) -> Result<()> {
    match table.into_iter().find(|r| !r.holds) {
        Some(r) => Err(Error::invalid(at, r.field, r.value, r.rule)),
        None => Ok(()),
    }
}

impl JobSpec {
    /// Check every value against its rule; `origin` (the file) prefixes the error's section.
    /// The first broken rule is the error ([`JobSpec::problems`] lists them all).
    pub fn validate(&self, origin: &str) -> Result<()> {
        match self.problems(origin).into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Every broken rule of the spec, section by section (a section whose own check
    /// fails reports that one problem).
    pub fn problems(&self, origin: &str) -> Vec<crate::Error> {
        let at = |section: &str| {
            if section.is_empty() {
                origin.to_string()
            } else {
                format!("{origin} {section}")
            }
        };
        let broken = |section: &str, rules: Vec<Rule>| -> Vec<crate::Error> {
            rules
                .into_iter()
                .filter(|r| !r.holds)
                .map(|r| Error::invalid(at(section), r.field, r.value, r.rule))
                .collect()
        };
        let check = |r: Option<Result<()>>| r.and_then(|r| r.err()).into_iter().collect();
        let input = match &self.features {
            Some(f) => check(Some(f.validate(&at("[features]")))),
            None if self.data.source.trim().is_empty() => broken(
                "[data]",
                vec![rule(
                    "source",
                    "\"\"",
                    false,
                    "must name a file or URL (or add a [features] section whose SQL builds the input)",
                )],
            ),
            None => check(Some(self.data.format_at(&at("[data]")).map(|_| ()))),
        };
        // In the order of the file's sections, as the first error has always been.
        [
            broken("", self.top_rules()),
            input,
            broken("[data]", self.data_rules()),
            broken("[features]", self.features_rules()),
            broken("[forecast]", self.forecast_rules()),
            check(
                self.forecast
                    .as_ref()
                    .map(|f| f.validate(&at("[forecast]"))),
            ),
            broken("[model]", self.model_rules()),
            broken("[train]", self.train_rules()),
            check(
                self.search
                    .as_ref()
                    .map(|s| s.validate(&at("[search]"), self)),
            ),
            check(self.score.as_ref().map(|s| s.validate(&at("[score]")))),
            broken("[resources]", self.resources_rules()),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// The spec's own keys, and which sections its model needs.
    fn top_rules(&self) -> Vec<Rule> {
        let name = &self.name;
        let forecasting = self.model.kind == ModelKind::Nbeats;
        vec![
            rule(
                "name",
                format!("{name:?}"),
                super::is_name(name),
                "must be 1 to 64 letters, digits, '-' or '_', starting with a letter or digit",
            ),
            rule(
                "forecast",
                "(absent)",
                !(forecasting && self.forecast.is_none()),
                "a [forecast] section with at least `horizon` is needed for [model] type = \"nbeats\"",
            ),
            rule(
                "forecast",
                "(present)",
                forecasting || self.forecast.is_none(),
                format!(
                    "[forecast] only applies to [model] type = \"nbeats\", not {:?}",
                    self.model.kind.as_str()
                ),
            ),
            rule(
                "score",
                "(present)",
                self.score.is_none() || (self.search.is_none() && self.forecast.is_none()),
                "a [score] job scores with a registered model: it takes no [search] or [forecast]",
            ),
        ]
    }

    fn data_rules(&self) -> Vec<Rule> {
        let d = &self.data;
        let forecasting = self.model.kind == ModelKind::Nbeats;
        let short_cross = d.crosses.iter().find(|c| c.len() < 2);
        vec![
            rule(
                "delimiter",
                format!("{:?}", d.delimiter),
                d.delimiter.len() == 1,
                "must be exactly one ASCII character",
            ),
            rule(
                "label",
                "\"\"",
                forecasting
                    || self.score.is_some()
                    || self.model.kind == ModelKind::Kmeans
                    || !d.label.trim().is_empty(),
                "must name the column to predict",
            ),
            rule(
                "exclude",
                format!("{:?}", d.exclude),
                !d.exclude.contains(&d.label),
                format!("must not contain the label column {:?}", d.label),
            ),
            rule(
                "date_format",
                format!("{:?}", d.date_format.as_deref().unwrap_or_default()),
                d.date_format
                    .as_deref()
                    .is_none_or(crate::csv::is_date_format),
                DATE_FORMAT_RULE,
            ),
            rule(
                "crosses",
                short_cross.map_or(String::new(), |c| format!("{c:?}")),
                short_cross.is_none(),
                "each cross must list at least two columns",
            ),
            rule(
                "treatment",
                format!("{:?}", d.treatment),
                d.treatment
                    .as_ref()
                    .is_none_or(|t| *t != d.label && !t.trim().is_empty()),
                "must name the 0/1 column that says who was treated, not the label",
            ),
            rule(
                "treatment",
                format!("{:?}", d.treatment),
                d.treatment.is_none()
                    || (self.search.is_none()
                        && self.train.workers.is_none()
                        && self.forecast.is_none()
                        && self.score.is_none()),
                "an uplift job trains alone: no [search], [train] workers, [forecast] or [score]",
            ),
        ]
    }

    /// What a job fed by `[features]` needs of them.
    fn features_rules(&self) -> Vec<Rule> {
        let Some(f) = &self.features else {
            return Vec::new();
        };
        let workers = self.workers().unwrap_or(1) as usize;
        vec![
            rule(
                "split",
                "(absent)",
                self.forecast.is_some()
                    || self.score.is_some()
                    || self.model.kind == ModelKind::Kmeans
                    || f.split.is_some(),
                "a response model needs [features.split]: method = \"hash\", \"modulo\" or \"time\"",
            ),
            rule(
                "shards",
                f.shards,
                f.shards >= workers,
                format!(
                    "must be at least the job's workers ({workers}): each worker reads its own shards"
                ),
            ),
        ]
    }

    /// What a forecaster fed by `[features]` needs.
    fn forecast_rules(&self) -> Vec<Rule> {
        match (&self.features, &self.forecast) {
            (Some(_), Some(fc)) => vec![rule(
                "time_column",
                "(absent)",
                fc.layout == SeriesLayout::Long && fc.time_column.is_some(),
                "a forecaster fed by [features] needs layout = \"long\" and time_column (the shards keep no row order)",
            )],
            _ => Vec::new(),
        }
    }

    fn model_rules(&self) -> Vec<Rule> {
        let m = &self.model;
        vec![
            rule(
                "max_categories",
                m.max_categories,
                m.max_categories >= 1,
                "must be at least 1",
            ),
            rule(
                "hash_buckets",
                m.hash_buckets,
                (2..=1 << 20).contains(&m.hash_buckets),
                "must be between 2 and 1048576",
            ),
            rule(
                "hidden",
                format!("{:?}", m.hidden),
                !m.hidden.is_empty() && m.hidden.iter().all(|h| (1..=65_536).contains(h)),
                "must list one or more layer widths between 1 and 65536",
            ),
            rule(
                "numeric_buckets",
                m.numeric_buckets,
                m.numeric_buckets != 1 && m.numeric_buckets <= 1024,
                "must be 0 (off) or between 2 and 1024",
            ),
            rule(
                "max_embedding",
                m.max_embedding,
                (1..=1024).contains(&m.max_embedding),
                "must be between 1 and 1024",
            ),
            rule(
                "ensemble",
                m.ensemble,
                (1..=64).contains(&m.ensemble),
                "must be between 1 and 64",
            ),
            rule(
                "trees",
                m.trees,
                (1..=100_000).contains(&m.trees),
                "must be between 1 and 100000",
            ),
            rule(
                "num_leaves",
                m.num_leaves,
                (2..=65_536).contains(&m.num_leaves),
                "must be between 2 and 65536",
            ),
            rule(
                "max_depth",
                m.max_depth,
                m.max_depth <= 64,
                "must be 0 (no limit) or at most 64",
            ),
            rule(
                "min_data_in_leaf",
                m.min_data_in_leaf,
                m.min_data_in_leaf >= 1,
                "must be at least 1",
            ),
            rule(
                "min_sum_hessian",
                m.min_sum_hessian,
                m.min_sum_hessian.is_finite() && m.min_sum_hessian >= 0.0,
                "must be a finite number >= 0",
            ),
            rule(
                "lambda_l1",
                m.lambda_l1,
                m.lambda_l1.is_finite() && m.lambda_l1 >= 0.0,
                "must be a finite number >= 0",
            ),
            rule(
                "lambda_l2",
                m.lambda_l2,
                m.lambda_l2.is_finite() && m.lambda_l2 >= 0.0,
                "must be a finite number >= 0",
            ),
            rule(
                "max_bins",
                m.max_bins,
                (2..=65_535).contains(&m.max_bins),
                "must be between 2 and 65535",
            ),
            rule(
                "feature_fraction",
                m.feature_fraction,
                m.feature_fraction > 0.0 && m.feature_fraction <= 1.0,
                "must be in (0, 1]",
            ),
            rule(
                "bagging_fraction",
                m.bagging_fraction,
                m.bagging_fraction > 0.0 && m.bagging_fraction <= 1.0,
                "must be in (0, 1]",
            ),
            rule(
                "shrinkage",
                format!("{:?}", m.shrinkage),
                m.shrinkage.is_none_or(|r| r.is_finite() && r > 0.0),
                "must be > 0",
            ),
            rule(
                "type",
                format!("{:?}", m.kind.as_str()),
                !matches!(m.kind, ModelKind::Gbdt | ModelKind::Blend)
                    || (self.forecast.is_none()
                        && (m.kind == ModelKind::Gbdt || self.data.treatment.is_none())),
                "boosted trees and blends train response models: no [forecast], and a blend no [data] treatment (uplift arms are logistic_regression, mlp or gbdt)",
            ),
            rule(
                "objective",
                format!("{:?}", m.objective.as_str()),
                m.objective == super::Objective::Binary
                    || (m.kind == ModelKind::Gbdt
                        && self.data.treatment.is_none()
                        && self.train.class_weight != super::ClassWeight::Balanced),
                "l2, l1 and poisson fit numbers with type = \"gbdt\" only, without [data] treatment (uplift arms fit responses) or class_weight = \"balanced\"",
            ),
            rule(
                "uplift",
                format!("{:?}", m.uplift),
                m.uplift == super::UpliftLearner::TLearner || self.data.treatment.is_some(),
                "an uplift learner needs [data] treatment, the column that says who was treated",
            ),
            rule(
                "k",
                format!("{:?}", m.k),
                !m.k.is_empty() && m.k.iter().all(|k| (2..=1000).contains(k)),
                "must list cluster counts between 2 and 1000, such as [4, 6, 8]",
            ),
            rule(
                "type",
                "\"kmeans\"",
                m.kind != ModelKind::Kmeans
                    || (self.data.treatment.is_none()
                        && self.forecast.is_none()
                        && self.search.is_none()),
                "k-means takes no [data] treatment, [forecast] or [search]",
            ),
            rule(
                "l2",
                m.l2,
                m.l2.is_finite() && m.l2 >= 0.0,
                "must be a finite number >= 0",
            ),
        ]
    }

    fn train_rules(&self) -> Vec<Rule> {
        let t = &self.train;
        let workers = t.workers.unwrap_or(1);
        vec![
            rule("epochs", t.epochs, t.epochs >= 1, "must be at least 1"),
            rule(
                "epochs",
                t.epochs,
                t.epochs <= 100_000,
                "must be at most 100000",
            ),
            rule(
                "workers",
                workers,
                (1..=64).contains(&workers),
                "must be between 1 and 64",
            ),
            rule(
                "workers",
                workers,
                t.workers.is_none()
                    || matches!(
                        self.model.kind,
                        ModelKind::Mlp | ModelKind::Gbdt | ModelKind::Blend | ModelKind::Kmeans
                    ),
                format!(
                    "data-parallel training trains [model] type = \"mlp\", \"gbdt\", \"blend\" or \"kmeans\", not {:?}",
                    self.model.kind.as_str()
                ),
            ),
            rule(
                "step_timeout_secs",
                t.step_timeout_secs,
                t.step_timeout_secs.is_finite() && (0.1..=3600.0).contains(&t.step_timeout_secs),
                "must be between 0.1 and 3600",
            ),
            rule(
                "checkpoint_secs",
                t.checkpoint_secs,
                t.checkpoint_secs.is_finite() && t.checkpoint_secs >= 0.0,
                "must be a number of seconds >= 0",
            ),
            rule(
                "batch_size",
                t.batch_size,
                t.batch_size >= 1,
                "must be at least 1",
            ),
            rule(
                "learning_rate",
                t.learning_rate,
                t.learning_rate.is_finite() && t.learning_rate > 0.0,
                "must be > 0",
            ),
            rule(
                "weight_decay",
                t.weight_decay,
                t.weight_decay.is_finite() && t.weight_decay >= 0.0,
                "must be a finite number >= 0",
            ),
            rule(
                "holdout_every",
                t.holdout_every,
                t.holdout_every >= 2,
                "must be at least 2 (every n-th row is held out for testing)",
            ),
        ]
    }

    fn resources_rules(&self) -> Vec<Rule> {
        let r = &self.resources;
        vec![
            rule(
                "gpus",
                r.gpus,
                self.train.device != DeviceKind::Gpu || r.gpus >= 1,
                "must be at least 1 when [train] device = \"gpu\"",
            ),
            rule("cpus", r.cpus, r.cpus >= 1, "must be at least 1"),
            rule(
                "memory_mb",
                r.memory_mb,
                r.memory_mb >= 1,
                "must be at least 1",
            ),
        ]
    }
}

impl FeaturesSpec {
    pub(super) fn validate(&self, at: &str) -> Result<()> {
        if self.sources.is_empty() {
            return Err(Error::invalid(
                at,
                "sources",
                "[]",
                "list at least one [[features.sources]] table",
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for src in &self.sources {
            if !is_identifier(&src.name) {
                return Err(Error::invalid(
                    at,
                    "sources.name",
                    format!("{:?}", src.name),
                    "must be a SQL name: letters, digits and '_', starting with a letter or '_'",
                ));
            }
            if !names.insert(src.name.to_ascii_lowercase()) {
                return Err(Error::invalid(
                    at,
                    "sources.name",
                    format!("{:?}", src.name),
                    "names two sources",
                ));
            }
            if src.path.trim().is_empty() {
                return Err(Error::invalid(
                    at,
                    "sources.path",
                    "\"\"",
                    format!("source {:?} needs a path or URL", src.name),
                ));
            }
            // A folder's format is read off its files' names when the stage lists them.
            if !src.path.ends_with('/') {
                src.resolved_format(at)?;
            }
            if src.delimiter.len() != 1 {
                return Err(Error::invalid(
                    at,
                    "sources.delimiter",
                    format!("{:?}", src.delimiter),
                    "must be exactly one ASCII character",
                ));
            }
            if let Some(f) = &src.date_format
                && !crate::csv::is_date_format(f)
            {
                return Err(Error::invalid(
                    at,
                    "sources.date_format",
                    format!("{f:?}"),
                    DATE_FORMAT_RULE,
                ));
            }
            if src.row_index.is_some() && src.path.ends_with('/') {
                return Err(Error::invalid(
                    at,
                    "sources.row_index",
                    format!("{:?}", src.row_index),
                    format!(
                        "source {:?} is a folder: rows have a file order only within one file",
                        src.name
                    ),
                ));
            }
        }
        match (&self.sql, self.steps.is_empty()) {
            (Some(q), true) if !q.trim().is_empty() => {}
            (None, false) => {
                for step in &self.steps {
                    if !is_identifier(&step.name) || step.sql.trim().is_empty() {
                        return Err(Error::invalid(
                            at,
                            "steps",
                            format!("{:?}", step.name),
                            "every step needs a SQL name and a query",
                        ));
                    }
                }
            }
            _ => {
                return Err(Error::invalid(
                    at,
                    "sql",
                    "(one of sql or steps)",
                    "give either sql = \"SELECT …\" or [[features.steps]], not both and not neither",
                ));
            }
        }
        if !(1..=4096).contains(&self.shards) {
            return Err(Error::invalid(
                at,
                "shards",
                self.shards,
                "must be between 1 and 4096",
            ));
        }
        if self.shards > 1 && self.split.is_none() && self.shard_key.is_none() {
            return Err(Error::invalid(
                at,
                "shard_key",
                "(absent)",
                "with more than one shard and no split, name the column that assigns rows to shards",
            ));
        }
        match &self.split {
            None => {}
            Some(SplitSpec::Hash {
                test_percent,
                validation_percent,
                ..
            }) => {
                let ok = |p: f64| p.is_finite() && (0.0..100.0).contains(&p);
                if !ok(*test_percent)
                    || !ok(*validation_percent)
                    || test_percent + validation_percent >= 100.0
                    || *test_percent <= 0.0
                {
                    return Err(Error::invalid(
                        at,
                        "split.test_percent",
                        format!("{test_percent} (validation {validation_percent})"),
                        "test_percent must be above 0, and with validation_percent below 100",
                    ));
                }
            }
            Some(SplitSpec::Modulo {
                every,
                test_remainder,
                validation_remainder,
                ..
            }) if *every < 2
                || test_remainder >= every
                || validation_remainder.is_some_and(|v| v >= *every || v == *test_remainder) =>
            {
                return Err(Error::invalid(
                    at,
                    "split.every",
                    every,
                    "every must be at least 2 and the remainders distinct and below it",
                ));
            }
            Some(SplitSpec::Time { test_from, .. }) if test_from.trim().is_empty() => {
                return Err(Error::invalid(
                    at,
                    "split.test_from",
                    "\"\"",
                    "must give the first test date or time",
                ));
            }
            Some(_) => {}
        }
        Ok(())
    }
}

impl ForecastSpec {
    fn validate(&self, at: &str) -> Result<()> {
        let mut table = vec![
            rule(
                "horizon",
                self.horizon,
                (1..=10_000).contains(&self.horizon),
                "must be between 1 and 10000",
            ),
            rule(
                "period",
                self.period,
                (1..=10_000).contains(&self.period),
                "must be between 1 and 10000",
            ),
            rule(
                "layout",
                "\"long\"",
                self.layout != SeriesLayout::Long
                    || (self.id_column.is_some() && self.value_column.is_some()),
                "needs id_column and value_column",
            ),
            rule(
                "lookbacks",
                format!("{:?}", self.lookbacks),
                !self.lookbacks.is_empty() && self.lookbacks.iter().all(|l| (1..=100).contains(l)),
                "must list one or more multiples of the horizon between 1 and 100",
            ),
        ];
        for (field, v, max) in [
            ("blocks", self.blocks, 256),
            ("layers", self.layers, 64),
            ("width", self.width, 65_536),
            ("history_horizons", self.history_horizons, 100_000),
            ("steps", self.steps, 10_000_000),
        ] {
            table.push(rule(
                field,
                v,
                (1..=max).contains(&v),
                format!("must be between 1 and {max}"),
            ));
        }
        first_broken(at, table)
    }
}
