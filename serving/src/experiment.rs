//! A/B analysis of the outcomes fed back per version: each variant's conversion rate, its
//! difference with the control's, the Wald interval and pooled z-test of that difference
//! (fixed horizon), the always-valid interval and p-value, the detectable effect, and the
//! sample-ratio check of the exposures (or outcomes) against the deployed split
//! ([`halyard_models::stats`], formulas in `docs/experiments.md`).

use halyard_core::proto::{ExperimentResponse, MetricStats, VariantStats};
use halyard_core::registry::{
    BANDIT_SCALE, BanditPolicy, CONVERSION, Deployment, MetricDecl, MetricKind, MetricRole,
    NodeTally, Outcomes, PRODUCTION, RampPolicy, Variant, VersionTally, total,
};
use halyard_models::bandit::{Arm, prob_best, shares};
use halyard_models::stats::{
    MIN_OBSERVATIONS, Moments, Sequential, detectable, proportions, sequential, srm, too_few, welch,
};
use rand::SeedableRng;

/// Confidence level of the intervals.
pub const CONFIDENCE: f64 = 0.95;
/// Power of the detectable effect.
const POWER: f64 = 0.8;

/// Posterior draws behind P(best) and a bandit's weights.
const POSTERIOR_DRAWS: usize = 20_000;

/// The outcomes fed back for `version` (zero when none were).
pub fn outcomes_of(outcomes: &[(u64, Outcomes)], version: u64) -> Outcomes {
    outcomes
        .iter()
        .find(|(v, _)| *v == version)
        .map(|(_, o)| *o)
        .unwrap_or_default()
}

/// `versions`' conversions as arms of the posterior draws.
fn arms(outcomes: &[(u64, Outcomes)], versions: impl Iterator<Item = u64>) -> Vec<Arm> {
    versions
        .map(|v| {
            let o = outcomes_of(outcomes, v);
            Arm {
                trials: o.trials,
                successes: o.conversions,
            }
        })
        .collect()
}

/// A running bandit's next weights: the posterior probability that each of its versions
/// converts best (from `outcomes`, 20,000 draws seeded by `seed`), each share at least the
/// policy's floor, in basis points adding up to [`BANDIT_SCALE`].
pub fn bandit_weights(
    policy: &BanditPolicy,
    outcomes: &[(u64, Outcomes)],
    seed: u64,
) -> halyard_models::Result<Vec<Variant>> {
    let p = prob_best(
        &arms(outcomes, policy.versions.iter().copied()),
        POSTERIOR_DRAWS,
        &mut rand::rngs::StdRng::seed_from_u64(seed),
    )?;
    let floor = f64::from(policy.floor_bp) / f64::from(BANDIT_SCALE);
    let mut weights: Vec<u32> = shares(&p, floor)
        .iter()
        .map(|s| ((s * f64::from(BANDIT_SCALE)).round() as u32).max(policy.floor_bp.max(1)))
        .collect();
    // Rounding may leave the sum a little off: the largest absorbs it.
    let sum: u32 = weights.iter().sum();
    if let Some(top) = (0..weights.len()).max_by_key(|&i| weights[i]) {
        weights[top] = (weights[top] + BANDIT_SCALE).saturating_sub(sum).max(1);
    }
    Ok(policy
        .versions
        .iter()
        .zip(weights)
        .map(|(&version, weight)| Variant { version, weight })
        .collect())
}

/// The always-valid interval and p-value of a guardrail's difference, as the audit log
/// shows them.
fn always_valid(q: &Sequential) -> String {
    format!(
        "always-valid {:.0}% interval [{:+.4}, {:+.4}], p = {:.2e}",
        CONFIDENCE * 100.0,
        q.ci_low,
        q.ci_high,
        q.p_value
    )
}

/// Why a ramping canary must be rolled back: it converts worse than production with the
/// always-valid interval of the difference wholly below 0 (valid however often the leader
/// looks). `None`: the guardrail holds, or there are too few outcomes to tell.
pub fn conversion_breach(production: Outcomes, canary: Outcomes) -> Option<String> {
    let p = Moments::rate(production.trials, production.conversions);
    let c = Moments::rate(canary.trials, canary.conversions);
    if too_few(&p, &c, true).is_some() {
        return None;
    }
    let f = proportions(&p, &c, CONFIDENCE);
    let q = sequential(f.difference, f.se, p.n + c.n, CONFIDENCE);
    (q.ci_high < 0.0).then(|| {
        format!(
            "guardrail conversion broke: the canary converts {:.4} ({} of {}) against production's {:.4} ({} of {}), difference {:+.4}, {}",
            c.mean_y,
            canary.conversions,
            canary.trials,
            p.mean_y,
            production.conversions,
            production.trials,
            f.difference,
            always_valid(&q)
        )
    })
}

/// A guardrail's share (failed requests, slow requests) of the canary against
/// production's, as `(requests, of which counted)` each: the always-valid interval of the
/// difference, on counts adjusted as Agresti and Caffo do (one counted and one uncounted
/// request added to each group, so a group without a single failure still has a
/// variance). `None`: fewer than [`MIN_OBSERVATIONS`] requests in either group.
fn share_difference(production: (u64, u64), canary: (u64, u64)) -> Option<Sequential> {
    if production.0.min(canary.0) < MIN_OBSERVATIONS {
        return None;
    }
    let p = Moments::rate(production.0 + 2, production.1 + 1);
    let c = Moments::rate(canary.0 + 2, canary.1 + 1);
    let f = proportions(&p, &c, CONFIDENCE);
    Some(sequential(
        f.difference,
        f.se,
        production.0 + canary.0,
        CONFIDENCE,
    ))
}

/// Share `k` of `n` (0 when `n` is 0).
fn share(k: u64, n: u64) -> f64 {
    if n == 0 { 0.0 } else { k as f64 / n as f64 }
}

/// Why a ramping canary must be rolled back for its failures: it fails a larger share of
/// its prediction requests than production, the always-valid interval of the difference
/// wholly above 0. `None`: the guardrail holds, or there are too few requests to tell.
pub fn errors_breach(production: &VersionTally, canary: &VersionTally) -> Option<String> {
    let (p, c) = (
        (production.requests, production.errors),
        (canary.requests, canary.errors),
    );
    let q = share_difference(p, c)?;
    (q.ci_low > 0.0).then(|| {
        format!(
            "guardrail errors broke: the canary failed {} of {} prediction requests ({:.4}) against production's {} of {} ({:.4}); adjusted counts, {}",
            c.1,
            c.0,
            share(c.1, c.0),
            p.1,
            p.0,
            share(p.1, p.0),
            always_valid(&q)
        )
    })
}

/// Why a ramping canary must be rolled back for its latency: a larger share of its
/// requests than of production's takes longer than production's p99, the always-valid
/// interval of the difference wholly above 0. `None`: the guardrail holds, or there are
/// too few requests to tell.
pub fn latency_breach(production: &VersionTally, canary: &VersionTally) -> Option<String> {
    let (lp, lc) = (&production.latency, &canary.latency);
    if lp.is_empty() {
        return None;
    }
    let threshold = lp.quantile_us(0.99);
    let p = (lp.len(), lp.slower_than(threshold));
    let c = (lc.len(), lc.slower_than(threshold));
    let q = share_difference(p, c)?;
    (q.ci_low > 0.0).then(|| {
        format!(
            "guardrail latency broke: {} of the canary's {} requests ({:.4}) took longer than production's p99 of {:.2} ms, against {} of production's {} ({:.4}); the canary's p99 is {:.2} ms; adjusted counts, {}",
            c.1,
            c.0,
            share(c.1, c.0),
            threshold as f64 / 1000.0,
            p.1,
            p.0,
            share(p.1, p.0),
            lc.quantile_us(0.99) as f64 / 1000.0,
            always_valid(&q)
        )
    })
}

/// Why a ramping canary must be rolled back for a metric declared a guardrail: it is
/// worse than production (lower; higher for an `inverse` metric) by the always-valid
/// interval of the difference, a rate's or (continuous) a mean's by Welch. `None`: it
/// holds, or there are too few values to tell.
pub fn metric_breach(
    decl: &MetricDecl,
    production: &VersionTally,
    canary: &VersionTally,
) -> Option<String> {
    let moments = |t: &VersionTally| {
        let s = t.metrics.get(&decl.name).copied().unwrap_or_default();
        Moments {
            n: s.n,
            mean_y: s.mean(),
            m2_y: s.m2,
            ..Moments::default()
        }
    };
    let (p, c) = (moments(production), moments(canary));
    let binary = decl.kind == MetricKind::Binary;
    if too_few(&p, &c, binary).is_some() {
        return None;
    }
    let f = if binary {
        proportions(&p, &c, CONFIDENCE)
    } else {
        welch(&p, &c, CONFIDENCE)
    };
    let q = sequential(f.difference, f.se, p.n + c.n, CONFIDENCE);
    let worse = if decl.inverse {
        q.ci_low > 0.0
    } else {
        q.ci_high < 0.0
    };
    worse.then(|| {
        format!(
            "guardrail {} broke: the canary's mean {:.4} ({} values) against production's {:.4} ({} values), difference {:+.4} ({} is better), {}",
            decl.name,
            c.mean_y,
            c.n,
            p.mean_y,
            p.n,
            f.difference,
            if decl.inverse { "lower" } else { "higher" },
            always_valid(&q)
        )
    })
}

/// Why a ramping canary must be rolled back by the guardrails its `ramp` holds (the
/// first that broke; the metrics `declared` guardrails with `guard_metrics`), from the
/// summed tallies of production and the canary. `None`: every one holds.
pub fn ramp_breach(
    ramp: &RampPolicy,
    declared: &[MetricDecl],
    production: &VersionTally,
    canary: &VersionTally,
) -> Option<String> {
    type Check = fn(&VersionTally, &VersionTally) -> Option<String>;
    let checks: [(bool, Check); 3] = [
        (ramp.guard_conversion, |p, c| {
            conversion_breach(p.outcomes(), c.outcomes())
        }),
        (ramp.guard_errors, errors_breach),
        (ramp.guard_latency, latency_breach),
    ];
    checks
        .into_iter()
        .filter(|(on, _)| *on)
        .find_map(|(_, check)| check(production, canary))
        .or_else(|| {
            declared
                .iter()
                .filter(|d| ramp.guard_metrics && d.role == MetricRole::Guardrail)
                .find_map(|d| metric_breach(d, production, canary))
        })
}

/// The experiment report of model `name` from its deployment and the event-log counts of
/// every node; `None` when it was never deployed and nothing was counted. The message for
/// that case is [`never_deployed`].
pub fn report(
    name: &str,
    deployment: Option<&Deployment>,
    tallies: &[NodeTally],
) -> Option<ExperimentResponse> {
    let totals = total(tallies);
    if deployment.is_none() && totals.is_empty() {
        return None;
    }
    let outcomes = halyard_core::registry::outcomes_of(&totals);
    let exposures: Vec<(u64, u64)> = totals.iter().map(|(v, t)| (*v, t.exposures)).collect();
    let mut r = analyse(name, deployment, &outcomes, &exposures);
    for v in &mut r.variants {
        if let Some(t) = totals.get(&v.version) {
            served_stats(v, t);
        }
    }
    let versions: Vec<u64> = r.variants.iter().map(|v| v.version).collect();
    let declared = deployment.map_or(&[][..], |d| &d.metrics[..]);
    r.metrics = metric_stats(r.control, &versions, &totals, declared);
    Some(r)
}

/// A variant's serving figures from its summed tally: requests, failures and their
/// share, the median and 99th percentile of their times.
fn served_stats(v: &mut VariantStats, t: &VersionTally) {
    v.requests = t.requests;
    v.errors = t.errors;
    v.error_rate = if t.requests == 0 {
        f64::NAN
    } else {
        share(t.errors, t.requests)
    };
    let ms = |q| {
        if t.latency.is_empty() {
            f64::NAN
        } else {
            t.latency.quantile_us(q) as f64 / 1000.0
        }
    };
    (v.p50_ms, v.p99_ms) = (ms(0.5), ms(0.99));
}

/// Every metric but conversion, per version (of `versions`, then any other with values),
/// against `control`'s mean: Welch's test and the always-valid interval. `declared`
/// metrics come first, by role (primary, secondary, guardrail) and then as declared,
/// each even before it has values; undeclared ones with values follow by name.
pub fn metric_stats(
    control: u64,
    versions: &[u64],
    totals: &std::collections::BTreeMap<u64, halyard_core::registry::VersionTally>,
    declared: &[MetricDecl],
) -> Vec<MetricStats> {
    let mut by_role: Vec<&MetricDecl> = declared.iter().collect();
    by_role.sort_by_key(|d| d.role);
    let seen: std::collections::BTreeSet<&String> =
        totals.values().flat_map(|t| t.metrics.keys()).collect();
    let names: Vec<(&String, &str)> = by_role
        .iter()
        .map(|d| (&d.name, d.role.as_str()))
        .chain(
            seen.into_iter()
                .filter(|m| !declared.iter().any(|d| &d.name == *m))
                .map(|m| (m, "")),
        )
        .filter(|(m, _)| *m != CONVERSION)
        .collect();
    let mut order: Vec<u64> = versions.to_vec();
    order.extend(totals.keys().filter(|v| !versions.contains(v)));
    let moments = |metric: &str, v: u64| {
        let s = totals
            .get(&v)
            .and_then(|t| t.metrics.get(metric))
            .copied()
            .unwrap_or_default();
        Moments {
            n: s.n,
            mean_y: s.mean(),
            m2_y: s.m2,
            ..Moments::default()
        }
    };
    let mut out = Vec::new();
    for (metric, role) in names {
        let c = moments(metric, control);
        for &version in &order {
            let m = moments(metric, version);
            let mut s = MetricStats {
                metric: metric.clone(),
                version,
                n: m.n,
                mean: m.mean_y,
                difference: m.mean_y - c.mean_y,
                ci_low: f64::NAN,
                ci_high: f64::NAN,
                p_value: f64::NAN,
                seq_low: f64::NAN,
                seq_high: f64::NAN,
                seq_p_value: f64::NAN,
                needed: 0,
                role: role.to_string(),
            };
            if version != control {
                if let Some(short) = too_few(&c, &m, false) {
                    s.needed = short.more;
                } else {
                    let f = welch(&c, &m, CONFIDENCE);
                    let q = sequential(f.difference, f.se, c.n + m.n, CONFIDENCE);
                    (s.ci_low, s.ci_high, s.p_value) = (f.ci_low, f.ci_high, f.p_value);
                    (s.seq_low, s.seq_high, s.seq_p_value) = (q.ci_low, q.ci_high, q.p_value);
                }
            }
            out.push(s);
        }
    }
    out
}

/// Why there is no report for `name`.
pub fn never_deployed(name: &str) -> String {
    format!("model {name} was never deployed and has no outcomes")
}

/// Compare every variant (and every version with outcomes) with the control: the
/// production version, or the first variant when there is none.
pub fn analyse(
    name: &str,
    deployment: Option<&Deployment>,
    outcomes: &[(u64, Outcomes)],
    exposures: &[(u64, u64)],
) -> ExperimentResponse {
    let state = deployment.map(|d| d.current.clone()).unwrap_or_default();
    let mut versions: Vec<(u64, u32)> = state
        .variants
        .iter()
        .map(|v| (v.version, v.weight))
        .collect();
    // Versions no longer in the split that were counted (a canary rolled back) follow.
    for v in outcomes
        .iter()
        .map(|o| o.0)
        .chain(exposures.iter().map(|e| e.0))
    {
        if !versions.iter().any(|(x, _)| *x == v) {
            versions.push((v, 0));
        }
    }
    let control = state
        .aliases
        .get(PRODUCTION)
        .copied()
        .or_else(|| versions.first().map(|v| v.0))
        .unwrap_or(0);
    let counts = |v: u64| outcomes_of(outcomes, v);
    let moments = |v: u64| {
        let o = counts(v);
        Moments::rate(o.trials, o.conversions)
    };
    let c = moments(control);
    let exposed = |v: u64| {
        exposures
            .iter()
            .find(|(x, _)| *x == v)
            .map_or(0, |(_, n)| *n)
    };
    let weighted: Vec<&(u64, u32)> = versions.iter().filter(|(_, w)| *w > 0).collect();
    // Exposures are what the split assigns; outcomes stand in when nothing was exposed
    // (callers that send no key).
    let by_exposures = weighted.iter().any(|(v, _)| exposed(*v) > 0);
    let check = srm(
        &weighted
            .iter()
            .map(|(v, _)| {
                if by_exposures {
                    exposed(*v)
                } else {
                    counts(*v).trials
                }
            })
            .collect::<Vec<_>>(),
        &weighted
            .iter()
            .map(|(_, w)| f64::from(*w))
            .collect::<Vec<_>>(),
    );
    // Draws of the posteriors, seeded: the same counts give the same report. Over the
    // versions in the split or with outcomes: one only served (a canary rolled back before
    // any outcome) would bring its flat prior in.
    let contenders: Vec<u64> = versions
        .iter()
        .map(|(v, w)| (*v, *w))
        .filter(|(v, w)| *w > 0 || counts(*v).trials > 0)
        .map(|(v, _)| v)
        .collect();
    let drawn = prob_best(
        &arms(outcomes, contenders.iter().copied()),
        POSTERIOR_DRAWS,
        &mut rand::rngs::StdRng::seed_from_u64(0),
    )
    .unwrap_or_default();
    let best = |v: u64| {
        contenders
            .iter()
            .position(|c| *c == v)
            .and_then(|i| drawn.get(i).copied())
            .unwrap_or(f64::NAN)
    };
    let variants = versions
        .into_iter()
        .map(|(version, weight)| {
            let o = counts(version);
            let m = moments(version);
            let mut s = VariantStats {
                version,
                weight,
                trials: o.trials,
                conversions: o.conversions,
                exposures: exposed(version),
                rate: m.mean_y,
                difference: m.mean_y - c.mean_y,
                ci_low: f64::NAN,
                ci_high: f64::NAN,
                p_value: f64::NAN,
                significant: false,
                seq_low: f64::NAN,
                seq_high: f64::NAN,
                seq_p_value: f64::NAN,
                detectable: f64::NAN,
                needed: 0,
                prob_best: best(version),
                requests: 0,
                errors: 0,
                error_rate: f64::NAN,
                p50_ms: f64::NAN,
                p99_ms: f64::NAN,
            };
            if version == control {
                return s;
            }
            if let Some(short) = too_few(&c, &m, true) {
                s.needed = short.more;
                return s;
            }
            let f = proportions(&c, &m, CONFIDENCE);
            let q = sequential(f.difference, f.se, c.n + m.n, CONFIDENCE);
            (s.ci_low, s.ci_high, s.p_value) = (f.ci_low, f.ci_high, f.p_value);
            (s.seq_low, s.seq_high, s.seq_p_value) = (q.ci_low, q.ci_high, q.p_value);
            s.significant = s.p_value < 1.0 - CONFIDENCE;
            s.detectable = detectable(f.se, CONFIDENCE, POWER);
            s
        })
        .collect();
    ExperimentResponse {
        name: name.to_string(),
        control,
        variants,
        confidence: CONFIDENCE,
        srm_chi2: check.as_ref().map_or(f64::NAN, |s| s.chi2),
        srm_p_value: check.as_ref().map_or(f64::NAN, |s| s.p_value),
        srm_mismatch: check.is_some_and(|s| s.mismatch),
        srm_counts: if by_exposures {
            "exposures"
        } else {
            "outcomes"
        }
        .to_string(),
        metrics: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use halyard_core::registry::{DeploymentState, Variant};

    #[test]
    fn bandit_weights_follow_the_better_version_above_the_floors() {
        let policy = BanditPolicy {
            versions: vec![1, 2, 3],
            floor_bp: 100,
            every_secs: 60,
        };
        let o = |trials, conversions| Outcomes {
            trials,
            conversions,
        };
        let seen = [(1, o(2000, 200)), (2, o(2000, 400)), (3, o(2000, 300))];
        let w = bandit_weights(&policy, &seen, 1).unwrap();
        assert_eq!(w.iter().map(|v| v.weight).sum::<u32>(), BANDIT_SCALE);
        assert!(w[1].weight >= 9_700, "{w:?}");
        // The losers keep their floor, no less.
        assert!(w[0].weight == 100 && w[2].weight == 100, "{w:?}");
        // The same outcomes and seed give the same weights.
        assert_eq!(w, bandit_weights(&policy, &seen, 1).unwrap());
        // A version without outcomes is explored: its uniform prior often beats 20 %.
        let w = bandit_weights(&policy, &seen[..2], 1).unwrap();
        assert!(w[2].weight > 1_000, "{w:?}");
    }

    #[test]
    fn the_conversion_guardrail_breaks_only_on_an_always_valid_loss() {
        let o = |trials, conversions| Outcomes {
            trials,
            conversions,
        };
        let why = conversion_breach(o(400, 120), o(400, 40)).unwrap();
        assert!(
            why.contains("guardrail conversion broke") && why.contains("40 of 400"),
            "{why}"
        );
        assert!(conversion_breach(o(400, 120), o(400, 118)).is_none());
        assert!(
            conversion_breach(o(400, 120), o(400, 160)).is_none(),
            "a better canary"
        );
        assert!(
            conversion_breach(o(20, 10), o(20, 0)).is_none(),
            "too few to tell"
        );
    }

    /// A tally of `requests` with `errors` failures and the given times (µs).
    fn served(requests: u64, errors: u64, times: &[u64]) -> VersionTally {
        let mut t = VersionTally {
            requests,
            errors,
            ..VersionTally::default()
        };
        for &us in times {
            t.latency.record(us);
        }
        t
    }

    #[test]
    fn the_errors_guardrail_breaks_on_a_failing_canary_only() {
        let why = errors_breach(&served(1000, 0, &[]), &served(100, 30, &[])).unwrap();
        assert!(
            why.contains("guardrail errors broke")
                && why.contains("failed 30 of 100")
                && why.contains("production's 0 of 1000"),
            "{why}"
        );
        // Every request failing, against production never failing: the adjusted counts
        // still give an interval (a zero-variance one would too, for the wrong reason).
        assert!(errors_breach(&served(500, 0, &[]), &served(40, 40, &[])).is_some());
        assert!(errors_breach(&served(1000, 10, &[]), &served(100, 1, &[])).is_none());
        assert!(
            errors_breach(&served(1000, 10, &[]), &served(1000, 0, &[])).is_none(),
            "a canary that fails less"
        );
        assert!(
            errors_breach(&served(1000, 0, &[]), &served(29, 29, &[])).is_none(),
            "too few requests to tell"
        );
    }

    #[test]
    fn the_latency_guardrail_breaks_when_the_canary_is_slower_than_production_p99() {
        let times = |n: u64, spread: u64, base: u64| -> Vec<u64> {
            (0..n).map(|i| base + (i * 7919) % spread).collect()
        };
        let production = served(2000, 0, &times(2000, 400, 800));
        // The same times: holds.
        assert!(latency_breach(&production, &served(500, 0, &times(500, 400, 800))).is_none());
        // A fifth of the canary's requests take 5 ms: breaks, naming production's p99.
        let mut slow = times(400, 400, 800);
        slow.extend(std::iter::repeat_n(5_000, 100));
        let why = latency_breach(&production, &served(500, 0, &slow)).unwrap();
        assert!(
            why.contains("guardrail latency broke") && why.contains("100 of the canary's 500"),
            "{why}"
        );
        let p99 = production.latency.quantile_us(0.99) as f64 / 1000.0;
        assert!(
            why.contains(&format!("production's p99 of {p99:.2} ms")),
            "{why}"
        );
        assert!(latency_breach(&served(0, 0, &[]), &served(500, 0, &slow)).is_none());
        // The ramp checks only what it guards.
        let ramp = |errors, latency| RampPolicy {
            canary: 2,
            steps: vec![50],
            step: 0,
            step_secs: 60,
            guard_conversion: false,
            guard_errors: errors,
            guard_latency: latency,
            guard_metrics: false,
        };
        let canary = served(500, 0, &slow);
        assert!(ramp_breach(&ramp(true, false), &[], &production, &canary).is_none());
        let why = ramp_breach(&ramp(true, true), &[], &production, &canary).unwrap();
        assert!(why.contains("guardrail latency broke"), "{why}");
    }

    #[test]
    fn a_declared_guardrail_metric_breaks_when_it_moves_the_wrong_way() {
        let fed = |values: &[(f64, u64)]| {
            let mut t = VersionTally::default();
            let m = t.metrics.entry("unsubscribe".into()).or_default();
            for &(v, n) in values {
                for _ in 0..n {
                    m.push(v);
                }
            }
            t
        };
        let decl = |inverse| MetricDecl {
            name: "unsubscribe".into(),
            kind: MetricKind::Binary,
            role: MetricRole::Guardrail,
            inverse,
        };
        // 2 % of production's customers unsubscribe, 20 % of the canary's.
        let (p, c) = (fed(&[(1.0, 10), (0.0, 490)]), fed(&[(1.0, 40), (0.0, 160)]));
        let why = metric_breach(&decl(true), &p, &c).unwrap();
        assert!(
            why.contains("guardrail unsubscribe broke") && why.contains("lower is better"),
            "{why}"
        );
        // Higher is better: the same figures are no harm.
        assert!(metric_breach(&decl(false), &p, &c).is_none());
        assert!(metric_breach(&decl(false), &c, &p).is_some());
        // A continuous guardrail (spend falling) by Welch.
        let spend = MetricDecl {
            name: "unsubscribe".into(),
            kind: MetricKind::Continuous,
            ..decl(false)
        };
        let (p, c) = (
            fed(&[(10.0, 100), (14.0, 100)]),
            fed(&[(6.0, 100), (8.0, 100)]),
        );
        assert!(metric_breach(&spend, &p, &c).is_some());
        // Only with --guardrail metrics, and only for guardrails.
        let ramp = |on| RampPolicy {
            canary: 2,
            steps: vec![50],
            step: 0,
            step_secs: 60,
            guard_conversion: false,
            guard_errors: false,
            guard_latency: false,
            guard_metrics: on,
        };
        assert!(ramp_breach(&ramp(true), std::slice::from_ref(&spend), &p, &c).is_some());
        assert!(ramp_breach(&ramp(false), std::slice::from_ref(&spend), &p, &c).is_none());
        let secondary = MetricDecl {
            role: MetricRole::Secondary,
            ..spend
        };
        assert!(ramp_breach(&ramp(true), &[secondary], &p, &c).is_none());
    }

    /// Over 1,000 A/A ramps watched 20 times each, a guardrail that looks at every tick
    /// breaks at most 5 % of the time (it is always valid), for failures at 2 % and for
    /// latencies drawn from one log-normal distribution.
    #[test]
    fn the_serving_guardrails_rarely_break_in_a_and_a_tests_looked_at_20_times() {
        use rand::Rng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (runs, looks, per_look) = (1000, 20, 100);
        let (mut error_alarms, mut latency_alarms) = (0, 0);
        for _ in 0..runs {
            let (mut p, mut c) = (VersionTally::default(), VersionTally::default());
            let (mut error_alarm, mut latency_alarm) = (false, false);
            for _ in 0..looks {
                for t in [&mut p, &mut c] {
                    for _ in 0..per_look {
                        t.requests += 1;
                        t.errors += u64::from(rng.random::<f64>() < 0.02);
                        // exp(N(7, 0.5)) µs: a median of about 1.1 ms.
                        let z: f64 = (0..12).map(|_| rng.random::<f64>()).sum::<f64>() - 6.0;
                        t.latency.record((7.0 + 0.5 * z).exp() as u64);
                    }
                }
                error_alarm |= errors_breach(&p, &c).is_some();
                latency_alarm |= latency_breach(&p, &c).is_some();
            }
            error_alarms += u64::from(error_alarm);
            latency_alarms += u64::from(latency_alarm);
        }
        let rate = |n: u64| n as f64 / runs as f64;
        eprintln!(
            "A/A ramps breaking: errors {:.3}, latency {:.3}",
            rate(error_alarms),
            rate(latency_alarms)
        );
        assert!(rate(error_alarms) <= 0.05, "errors: {}", rate(error_alarms));
        assert!(
            rate(latency_alarms) <= 0.05,
            "latency: {}",
            rate(latency_alarms)
        );
    }

    #[test]
    fn a_clear_winner_is_significant_and_a_tie_is_not() {
        let d = Deployment {
            name: "m".into(),
            current: DeploymentState {
                variants: vec![
                    Variant {
                        version: 1,
                        weight: 50,
                    },
                    Variant {
                        version: 2,
                        weight: 50,
                    },
                ],
                aliases: [(PRODUCTION.to_string(), 1)].into(),
                ..DeploymentState::default()
            },
            ..Deployment::default()
        };
        let o = |trials, conversions| Outcomes {
            trials,
            conversions,
        };
        let r = analyse("m", Some(&d), &[(1, o(1000, 100)), (2, o(1000, 150))], &[]);
        assert_eq!(r.control, 1);
        let v2 = &r.variants[1];
        assert!((v2.difference - 0.05).abs() < 1e-12);
        // Pooled z = 0.05 / sqrt(0.125 * 0.875 * 0.002) = 3.381: p = 0.00072.
        assert!((v2.p_value - 0.000_722).abs() < 2e-5, "{}", v2.p_value);
        assert!(v2.significant && v2.ci_low > 0.0);
        // The always-valid interval is wider and holds the fixed one.
        assert!(v2.seq_low < v2.ci_low && v2.seq_high > v2.ci_high);
        assert!(v2.seq_p_value > v2.p_value);
        assert!(!r.srm_mismatch && r.srm_p_value > 0.9, "{r:?}");
        assert!(
            v2.prob_best > 0.99 && r.variants[0].prob_best < 0.01,
            "{r:?}"
        );
        let r = analyse("m", Some(&d), &[(1, o(1000, 100)), (2, o(1000, 104))], &[]);
        assert!(!r.variants[1].significant && r.variants[1].ci_low < 0.0);
        assert!(
            r.variants[0].p_value.is_nan(),
            "the control is not compared with itself"
        );
        // A 50/50 split that delivered 1,000 against 1,300 outcomes is flagged.
        let r = analyse("m", Some(&d), &[(1, o(1000, 100)), (2, o(1300, 130))], &[]);
        assert!(r.srm_mismatch && r.srm_p_value < 0.001, "{r:?}");
        assert_eq!(r.srm_counts, "outcomes");
        // Exposures, when there are any, are what the check counts: balanced outcomes
        // from 1,000 against 1,300 exposures are flagged, and the reverse passes.
        let even = [(1, o(1000, 100)), (2, o(1000, 130))];
        let r = analyse("m", Some(&d), &even, &[(1, 1000), (2, 1300)]);
        assert!(r.srm_mismatch && r.srm_counts == "exposures", "{r:?}");
        assert_eq!(r.variants[1].exposures, 1300);
        let uneven = [(1, o(1000, 100)), (2, o(1300, 130))];
        let r = analyse("m", Some(&d), &uneven, &[(1, 2000), (2, 2010)]);
        assert!(!r.srm_mismatch, "{r:?}");
        // Too few outcomes: no p-value, and how many more are needed.
        let r = analyse("m", Some(&d), &[(1, o(20, 5)), (2, o(20, 10))], &[]);
        assert!(r.variants[1].p_value.is_nan());
        assert_eq!(r.variants[1].needed, 10);
        let r = analyse("m", Some(&d), &[(1, o(100, 4)), (2, o(100, 10))], &[]);
        assert_eq!(
            r.variants[1].needed, 6,
            "the control has 4 conversions of 10"
        );
    }

    #[test]
    fn live_metrics_match_welch_on_the_same_values_however_the_nodes_split_them() {
        use halyard_core::registry::{MetricSums, VersionTally};
        use halyard_models::stats::welch;
        // Revenue per customer: version 2 0.3 above the control, at a large mean (agreement
        // to 6 significant figures: the sums and the reference round differently).
        let values = |v: u64, n: usize| -> Vec<f64> {
            (0..n)
                .map(|i| 1e6 + 10.0 + (v as f64 - 1.0) * 0.3 + ((i * 7919) % 13) as f64 * 0.5)
                .collect()
        };
        let (a, b) = (values(1, 400), values(2, 300));
        // Two nodes counted halves of each; the tallies merge.
        let sums = |xs: &[f64]| {
            let mut s = MetricSums::default();
            xs.iter().for_each(|x| s.push(*x));
            s
        };
        let mut totals = std::collections::BTreeMap::new();
        for (v, xs) in [(1u64, &a), (2, &b)] {
            let (left, right) = xs.split_at(xs.len() / 3);
            let mut t = VersionTally::default();
            t.metrics.insert("revenue".into(), sums(left));
            let mut other = VersionTally::default();
            other.metrics.insert("revenue".into(), sums(right));
            t.merge(&other);
            totals.insert(v, t);
        }
        let got = metric_stats(1, &[1, 2], &totals, &[]);
        assert_eq!(got.len(), 2);
        let reference = |xs: &[f64]| {
            let mut m = Moments::default();
            xs.iter().for_each(|x| m.add(*x, 0.0));
            m
        };
        let want = welch(&reference(&a), &reference(&b), CONFIDENCE);
        let g = &got[1];
        assert_eq!((g.metric.as_str(), g.version, g.n), ("revenue", 2, 300));
        for (x, y) in [
            (g.difference, want.difference),
            (g.ci_low, want.ci_low),
            (g.ci_high, want.ci_high),
            (g.p_value, want.p_value),
        ] {
            assert!((x - y).abs() <= 1e-6 * y.abs(), "{x} vs {y}");
        }
        assert!(g.seq_low < g.ci_low && g.seq_p_value >= g.p_value);
        assert!(
            got[0].p_value.is_nan(),
            "the control is not compared with itself"
        );
        // Too few values: how many more, no p-value.
        let mut few = totals.clone();
        few.get_mut(&2)
            .unwrap()
            .metrics
            .insert("revenue".into(), sums(&b[..12]));
        let g = &metric_stats(1, &[1, 2], &few, &[])[1];
        assert!(g.p_value.is_nan() && g.needed == 18, "{g:?}");
    }
}
