//! The `[score]` section: a registered model scores a table (batch scoring), and the scores
//! become an audience (who to contact). A job with `[score]` trains nothing: its pipeline is
//! `features → score → audience` (see [`super::Stage`]).

use serde::{Deserialize, Serialize};

use super::is_identifier;
use super::rules::{Rule, first_broken, rule};
use crate::error::Result;

/// The `[score]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreSpec {
    /// The registered model that scores (`halyard models` lists them).
    pub model: String,
    /// Its version; with neither `version` nor `alias`, the version serving production,
    /// else the latest.
    #[serde(default)]
    pub version: Option<u64>,
    /// Or the version behind this alias of its deployment (`production`, `canary`, …).
    #[serde(default)]
    pub alias: Option<String>,
    /// The column(s) that identify a row (a customer): written with each score, and what
    /// an audience's churn compares.
    pub key: Vec<String>,
    /// A SQL predicate over the table's columns; rows where it holds are left out of the
    /// audience (and counted), e.g. `days_since_contact < 14`.
    #[serde(default)]
    pub exclude: Option<String>,
    /// Executors that score at once, each the shards whose number is its rank modulo the
    /// count (default 1).
    #[serde(default)]
    pub workers: Option<u32>,
    /// A column that names each row's segment (an RFM segment, a region, a k-means
    /// model's earlier scores): carried into the scores and the audience, and what
    /// `[score.audience] per_segment` counts by.
    #[serde(default)]
    pub segment: Option<String>,
    /// Who the audience is: exactly one rule (absent: every scored row).
    #[serde(default)]
    pub audience: AudienceRule,
}

/// How an audience is picked from the scores: at most one of the fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudienceRule {
    /// The `top_k` highest scores.
    #[serde(default)]
    pub top_k: Option<u64>,
    /// The highest-scoring fraction of the scored rows, in (0, 1].
    #[serde(default)]
    pub top_fraction: Option<f64>,
    /// Every row scoring at least this.
    #[serde(default)]
    pub threshold: Option<f64>,
    /// The `per_segment` highest scores of each segment (`[score] segment`).
    #[serde(default)]
    pub per_segment: Option<u64>,
}

/// An audience rule, once validated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pick {
    /// Every scored row.
    All,
    /// The `k` highest scores.
    TopK(u64),
    /// The highest-scoring fraction.
    TopFraction(f64),
    /// Scores at least this.
    Threshold(f64),
    /// The highest `n` of each segment.
    PerSegment(u64),
}

impl AudienceRule {
    /// The one rule given (validation refuses more than one).
    pub fn pick(&self) -> Pick {
        match (
            self.top_k,
            self.top_fraction,
            self.threshold,
            self.per_segment,
        ) {
            (Some(k), ..) => Pick::TopK(k),
            (_, Some(f), ..) => Pick::TopFraction(f),
            (_, _, Some(t), _) => Pick::Threshold(t),
            (.., Some(n)) => Pick::PerSegment(n),
            _ => Pick::All,
        }
    }

    /// The most rows the rule can keep of `rows` eligible ones, when it is known before
    /// the scores are sorted (`top_k`, `top_fraction`): only that many need sorting.
    pub fn limit(&self, rows: usize) -> Option<usize> {
        match self.pick() {
            Pick::TopK(k) => Some(rows.min(usize::try_from(k).unwrap_or(usize::MAX))),
            Pick::TopFraction(f) => Some(((rows as f64 * f).round() as usize).min(rows)),
            Pick::All | Pick::Threshold(_) | Pick::PerSegment(_) => None,
        }
    }

    /// How many of `scored` rows, sorted by score (highest first), the rule keeps:
    /// `scores` are those sorted scores.
    pub fn size(&self, scores: &[f64]) -> usize {
        match self.pick() {
            Pick::Threshold(t) => scores.iter().take_while(|s| **s >= t).count(),
            _ => self.limit(scores.len()).unwrap_or(scores.len()),
        }
    }
}

impl ScoreSpec {
    /// The table's columns each score carries: the keys, then the segment column.
    pub fn carried(&self) -> Vec<String> {
        let mut out = self.key.clone();
        if let Some(s) = &self.segment
            && !out.contains(s)
        {
            out.push(s.clone());
        }
        out
    }

    pub(super) fn validate(&self, at: &str) -> Result<()> {
        first_broken(at, self.rules())?;
        first_broken(&format!("{at} audience"), self.audience.rules())
    }

    fn rules(&self) -> Vec<Rule> {
        let bad_key = self.key.iter().find(|k| !is_identifier(k));
        vec![
            rule(
                "model",
                format!("{:?}", self.model),
                !self.model.trim().is_empty(),
                "must name a registered model (halyard models lists them)",
            ),
            rule(
                "alias",
                format!("{:?}", self.alias),
                !(self.version.is_some() && self.alias.is_some()),
                "give version or alias, not both",
            ),
            rule(
                "version",
                format!("{:?}", self.version),
                self.version != Some(0),
                "versions start at 1",
            ),
            rule(
                "key",
                format!("{:?}", self.key),
                !self.key.is_empty(),
                "must name the column(s) that identify a row, e.g. key = [\"customer_id\"]",
            ),
            rule(
                "key",
                format!("{bad_key:?}"),
                bad_key.is_none(),
                "each key must be a column name (letters, digits, '_')",
            ),
            rule(
                "exclude",
                format!("{:?}", self.exclude),
                self.exclude.as_ref().is_none_or(|e| !e.trim().is_empty()),
                "must be a SQL predicate over the table's columns, or absent",
            ),
            rule(
                "segment",
                format!("{:?}", self.segment),
                self.segment.as_ref().is_none_or(|c| is_identifier(c))
                    && (self.audience.per_segment.is_none() || self.segment.is_some()),
                "audience.per_segment needs segment = \"COLUMN\", a column of the table naming each row's segment",
            ),
            rule(
                "workers",
                format!("{:?}", self.workers),
                self.workers.is_none_or(|w| (1..=64).contains(&w)),
                "must be 1 to 64",
            ),
        ]
    }
}

impl AudienceRule {
    fn rules(&self) -> Vec<Rule> {
        let given = [
            self.top_k.is_some(),
            self.top_fraction.is_some(),
            self.threshold.is_some(),
            self.per_segment.is_some(),
        ]
        .iter()
        .filter(|g| **g)
        .count();
        vec![
            rule(
                "top_k",
                format!("{self:?}"),
                given <= 1,
                "give one of top_k, top_fraction, threshold or per_segment",
            ),
            rule(
                "top_k",
                format!("{:?}", self.top_k),
                self.top_k != Some(0),
                "must be at least 1",
            ),
            rule(
                "per_segment",
                format!("{:?}", self.per_segment),
                self.per_segment != Some(0),
                "must be at least 1",
            ),
            rule(
                "top_fraction",
                format!("{:?}", self.top_fraction),
                self.top_fraction.is_none_or(|f| f > 0.0 && f <= 1.0),
                "must be in (0, 1]",
            ),
            rule(
                "threshold",
                format!("{:?}", self.threshold),
                self.threshold.is_none_or(f64::is_finite),
                "must be a number",
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rule_sizes_the_audience_from_the_sorted_scores() {
        let scores = [0.9, 0.8, 0.5, 0.4, 0.1];
        let sized = |r: AudienceRule| r.size(&scores);
        assert_eq!(sized(AudienceRule::default()), 5);
        let r = |k, f, t| AudienceRule {
            top_k: k,
            top_fraction: f,
            threshold: t,
            per_segment: None,
        };
        assert_eq!(sized(r(Some(2), None, None)), 2);
        assert_eq!(sized(r(Some(99), None, None)), 5);
        assert_eq!(sized(r(None, Some(0.4), None)), 2);
        assert_eq!(sized(r(None, None, Some(0.5))), 3);
        assert_eq!(sized(r(None, None, Some(0.95))), 0);
        assert_eq!(r(Some(2), None, None).limit(5), Some(2));
        assert_eq!(r(None, Some(0.4), None).limit(5), Some(2));
        assert_eq!(r(None, None, Some(0.5)).limit(5), None);
    }
}
