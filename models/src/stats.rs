//! Statistics of experiments: a group's moments of a metric (and of a pre-experiment
//! covariate), the sample-ratio-mismatch check, two-proportion and Welch comparisons,
//! CUPED, always-valid sequential intervals and the sample size a test needs.
//!
//! References (the formulas are written out in `docs/experiments.md`):
//! - SRM: Pearson's chi-square test of the observed counts against the configured split
//!   (as `scipy.stats.chisquare`), flagged below p = 0.001 as GrowthBook does.
//! - Proportions: the pooled two-proportion z-test (`statsmodels proportions_ztest`) and
//!   the unpooled Wald interval of the difference (`confint_proportions_2indep`, `wald`).
//! - Means: Welch's t-test (`scipy.stats.ttest_ind(equal_var=False)`) and its interval
//!   with the Welch–Satterthwaite degrees of freedom (`statsmodels CompareMeans`).
//! - CUPED (Deng et al. 2013): `y − θ (x − x̄)` with `θ = cov(x, y) / var(x)` over both
//!   groups, then Welch on the adjusted metric.
//! - Sequential: the asymptotic confidence sequence of Waudby-Smith et al. (2023) for the
//!   difference (a normal mixture, as GrowthBook's): valid at every look, so a result may
//!   be watched continuously; its p-value is the smallest α whose sequence excludes 0.

use serde::{Deserialize, Serialize};
use statrs::distribution::{ChiSquared, ContinuousCDF, Normal, StudentsT};

/// SRM is flagged below this p-value (GrowthBook's threshold).
pub const SRM_P_VALUE: f64 = 0.001;
/// Fewest observations per group for a comparison (below it the normal approximation the
/// tests rest on is not trusted).
pub const MIN_OBSERVATIONS: u64 = 30;
/// Fewest successes and failures per group for a proportion test.
pub const MIN_EVENTS: u64 = 10;
/// The sequential interval is tightest near this many observations in all
/// (GrowthBook's default tuning).
pub const SEQUENTIAL_TUNING: f64 = 5000.0;

/// Count, means and co-moments of a metric `y` and a covariate `x` over one group,
/// accumulated and merged without cancellation (Welford; Chan et al. for merges).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Moments {
    /// Observations.
    pub n: u64,
    /// Mean of `y`.
    pub mean_y: f64,
    /// Mean of `x`.
    pub mean_x: f64,
    /// Sum of squared deviations of `y`.
    pub m2_y: f64,
    /// Sum of squared deviations of `x`.
    pub m2_x: f64,
    /// Sum of products of the deviations of `x` and `y`.
    pub c_xy: f64,
}

impl Moments {
    /// The moments of a 0/1 metric from its counts.
    pub fn rate(trials: u64, successes: u64) -> Moments {
        let n = trials as f64;
        let p = if trials == 0 {
            0.0
        } else {
            successes as f64 / n
        };
        Moments {
            n: trials,
            mean_y: p,
            m2_y: n * p * (1.0 - p),
            ..Moments::default()
        }
    }

    /// Add an observation (`x` = 0 when there is no covariate).
    pub fn add(&mut self, y: f64, x: f64) {
        self.merge(&Moments {
            n: 1,
            mean_y: y,
            mean_x: x,
            ..Moments::default()
        });
    }

    /// Add another group's moments.
    pub fn merge(&mut self, o: &Moments) {
        if o.n == 0 {
            return;
        }
        if self.n == 0 {
            *self = *o;
            return;
        }
        let (na, nb) = (self.n as f64, o.n as f64);
        let n = na + nb;
        let (dy, dx) = (o.mean_y - self.mean_y, o.mean_x - self.mean_x);
        self.mean_y += dy * nb / n;
        self.mean_x += dx * nb / n;
        self.m2_y += o.m2_y + dy * dy * na * nb / n;
        self.m2_x += o.m2_x + dx * dx * na * nb / n;
        self.c_xy += o.c_xy + dx * dy * na * nb / n;
        self.n += o.n;
    }

    /// Sample variance of `y` (n − 1).
    pub fn var_y(&self) -> f64 {
        self.m2_y / (self.n as f64 - 1.0)
    }

    /// Sample variance of `x` (n − 1).
    pub fn var_x(&self) -> f64 {
        self.m2_x / (self.n as f64 - 1.0)
    }

    /// Sample covariance of `x` and `y` (n − 1).
    pub fn cov(&self) -> f64 {
        self.c_xy / (self.n as f64 - 1.0)
    }

    /// Successes when `y` is 0/1.
    pub fn successes(&self) -> u64 {
        (self.mean_y * self.n as f64).round() as u64
    }
}

/// The sample-ratio-mismatch check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Srm {
    /// Pearson's chi-square statistic.
    pub chi2: f64,
    /// Degrees of freedom (groups − 1).
    pub df: u32,
    /// Its p-value.
    pub p_value: f64,
    /// Observations each group should have had under the configured split.
    pub expected: Vec<f64>,
    /// `p_value` < [`SRM_P_VALUE`]: the split is broken and no result can be trusted.
    pub mismatch: bool,
}

/// Chi-square test of `observed` counts against the split `weights` (any scale); `None`
/// with fewer than two groups or no observations.
pub fn srm(observed: &[u64], weights: &[f64]) -> Option<Srm> {
    let total: f64 = observed.iter().map(|o| *o as f64).sum();
    let w: f64 = weights.iter().sum();
    if observed.len() < 2 || observed.len() != weights.len() || total <= 0.0 || w <= 0.0 {
        return None;
    }
    let expected: Vec<f64> = weights.iter().map(|x| total * x / w).collect();
    let chi2 = observed
        .iter()
        .zip(&expected)
        .map(|(o, e)| (*o as f64 - e).powi(2) / e)
        .sum::<f64>();
    let df = observed.len() as u32 - 1;
    let p_value = ChiSquared::new(f64::from(df)).ok()?.sf(chi2);
    Some(Srm {
        chi2,
        df,
        p_value,
        expected,
        mismatch: p_value < SRM_P_VALUE,
    })
}

/// A variant against the control on one metric (fixed-horizon: valid at one planned look).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The control's mean (rate for a 0/1 metric).
    pub control: f64,
    /// The variant's mean.
    pub variant: f64,
    /// `variant − control`.
    pub difference: f64,
    /// `difference / control` (NaN when the control's mean is 0).
    pub relative: f64,
    /// Standard error of the difference.
    pub se: f64,
    /// Lower end of the interval.
    pub ci_low: f64,
    /// Upper end of the interval.
    pub ci_high: f64,
    /// The test statistic (z or t).
    pub statistic: f64,
    /// Degrees of freedom of a t statistic (`None` for z).
    pub df: Option<f64>,
    /// Two-sided p-value.
    pub p_value: f64,
}

impl Comparison {
    /// The comparison of the means `(control, variant)` whose difference has standard
    /// error `se`, with the interval `± quantile · se` and the test's
    /// `(statistic, df, p_value)`.
    fn of(
        (control, variant): (f64, f64),
        se: f64,
        quantile: f64,
        (statistic, df, p_value): (f64, Option<f64>, f64),
    ) -> Comparison {
        let difference = variant - control;
        Comparison {
            control,
            variant,
            difference,
            relative: relative(difference, control),
            se,
            ci_low: difference - quantile * se,
            ci_high: difference + quantile * se,
            statistic,
            df,
            p_value,
        }
    }
}

fn normal() -> Normal {
    Normal::new(0.0, 1.0).expect("the standard normal")
}

/// The two-sided normal quantile of `confidence`.
pub fn z_of(confidence: f64) -> f64 {
    normal().inverse_cdf(0.5 + confidence / 2.0)
}

fn relative(difference: f64, control: f64) -> f64 {
    if control == 0.0 {
        f64::NAN
    } else {
        difference / control
    }
}

/// Two proportions (`y` is 0/1): the pooled z-test and the unpooled Wald interval.
pub fn proportions(control: &Moments, variant: &Moments, confidence: f64) -> Comparison {
    let (n1, n2) = (variant.n as f64, control.n as f64);
    let (p1, p2) = (variant.mean_y, control.mean_y);
    let difference = p1 - p2;
    let se = (p1 * (1.0 - p1) / n1 + p2 * (1.0 - p2) / n2).sqrt();
    let pooled = (p1 * n1 + p2 * n2) / (n1 + n2);
    let se0 = (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)).sqrt();
    let statistic = if se0 > 0.0 { difference / se0 } else { 0.0 };
    let p_value = 2.0 * normal().sf(statistic.abs());
    Comparison::of((p2, p1), se, z_of(confidence), (statistic, None, p_value))
}

/// Welch's comparison of the means of `y` with per-group variances `var_c`, `var_v`.
fn welch_with(
    (mean_c, var_c, n_c): (f64, f64, f64),
    (mean_v, var_v, n_v): (f64, f64, f64),
    confidence: f64,
) -> Comparison {
    let (a, b) = (var_v / n_v, var_c / n_c);
    let se = (a + b).sqrt();
    let df = (a + b).powi(2) / (a * a / (n_v - 1.0) + b * b / (n_c - 1.0));
    let difference = mean_v - mean_c;
    let statistic = if se > 0.0 { difference / se } else { 0.0 };
    let (p_value, t) = match StudentsT::new(0.0, 1.0, df) {
        Ok(dist) => (
            2.0 * dist.sf(statistic.abs()),
            dist.inverse_cdf(0.5 + confidence / 2.0),
        ),
        // Zero variance in both groups: nothing varies, nothing differs.
        Err(_) => (1.0, z_of(confidence)),
    };
    Comparison::of((mean_c, mean_v), se, t, (statistic, Some(df), p_value))
}

/// Welch's t-test and interval of the difference of the means of `y`.
pub fn welch(control: &Moments, variant: &Moments, confidence: f64) -> Comparison {
    welch_with(
        (control.mean_y, control.var_y(), control.n as f64),
        (variant.mean_y, variant.var_y(), variant.n as f64),
        confidence,
    )
}

/// A ratio metric of one group (`Σy / Σx`: revenue per visit, with `y` each customer's
/// revenue and `x` their visits) and the variance of its estimate by the delta method:
/// `(var y − 2 r cov + r² var x) / (x̄² n)`, as GrowthBook's `RatioStatistic`; `None`
/// when the denominator's mean is 0.
pub fn ratio_of(m: &Moments) -> Option<(f64, f64)> {
    if m.mean_x == 0.0 || m.n < 2 {
        return None;
    }
    let r = m.mean_y / m.mean_x;
    let var =
        (m.var_y() - 2.0 * r * m.cov() + r * r * m.var_x()) / (m.mean_x * m.mean_x * m.n as f64);
    Some((r, var.max(0.0)))
}

/// Two ratio metrics (`y` the numerator, `x` the denominator, per customer): the
/// difference of the ratios with its delta-method standard error, a z-test and interval;
/// `None` when a group's denominator has mean 0.
pub fn ratio(control: &Moments, variant: &Moments, confidence: f64) -> Option<Comparison> {
    let (rc, vc) = ratio_of(control)?;
    let (rv, vv) = ratio_of(variant)?;
    let se = (vc + vv).sqrt();
    let statistic = if se > 0.0 { (rv - rc) / se } else { 0.0 };
    let p_value = 2.0 * normal().sf(statistic.abs());
    Some(Comparison::of(
        (rc, rv),
        se,
        z_of(confidence),
        (statistic, None, p_value),
    ))
}

/// A CUPED comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cuped {
    /// `cov(x, y) / var(x)` over both groups.
    pub theta: f64,
    /// Welch on the adjusted metric.
    pub comparison: Comparison,
    /// `1 − var(adjusted difference) / var(plain difference)`.
    pub variance_reduction: f64,
}

/// CUPED: Welch on `y − θ (x − x̄)`, `θ` and `x̄` over both groups; `None` when the
/// covariate does not vary.
pub fn cuped(control: &Moments, variant: &Moments, confidence: f64) -> Option<Cuped> {
    let mut both = *control;
    both.merge(variant);
    if both.var_x() <= 0.0 || !both.var_x().is_finite() {
        return None;
    }
    let theta = both.cov() / both.var_x();
    let adjusted = |g: &Moments| {
        (
            g.mean_y - theta * (g.mean_x - both.mean_x),
            g.var_y() + theta * theta * g.var_x() - 2.0 * theta * g.cov(),
            g.n as f64,
        )
    };
    let comparison = welch_with(adjusted(control), adjusted(variant), confidence);
    let plain = welch(control, variant, confidence);
    Some(Cuped {
        theta,
        variance_reduction: 1.0 - (comparison.se / plain.se).powi(2),
        comparison,
    })
}

/// An always-valid interval and p-value of a difference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sequential {
    /// Lower end of the confidence sequence at this look.
    pub ci_low: f64,
    /// Upper end.
    pub ci_high: f64,
    /// The smallest α whose confidence sequence excludes 0 here.
    pub p_value: f64,
}

/// The mixture's ρ² tuned so the sequence is tightest near `tuning` observations.
fn rho2(alpha: f64, tuning: f64) -> f64 {
    (-2.0 * alpha.ln() + (-2.0 * alpha.ln() + 1.0).ln()) / tuning
}

/// The confidence sequence of a difference estimated as `difference` with standard error
/// `se` from `n` observations in all, at level `confidence`:
/// `difference ± se √(2 (nρ² + 1) / (nρ²) · ln(√(nρ² + 1) / α))`, α = 1 − confidence.
pub fn sequential(difference: f64, se: f64, n: u64, confidence: f64) -> Sequential {
    let alpha = 1.0 - confidence;
    let r = n as f64 * rho2(alpha, SEQUENTIAL_TUNING);
    let half = se * (2.0 * (r + 1.0) / r * ((r + 1.0).sqrt() / alpha).ln()).sqrt();
    // The sequence excludes 0 when z² ≥ 2 (r + 1) / r · ln(√(r + 1) / α), i.e. when
    // α ≥ √(r + 1) · exp(−z² r / (2 (r + 1))): the mixture likelihood ratio's inverse.
    let z = if se > 0.0 { difference / se } else { 0.0 };
    let p_value = ((r + 1.0).sqrt() * (-z * z * r / (2.0 * (r + 1.0))).exp()).min(1.0);
    Sequential {
        ci_low: difference - half,
        ci_high: difference + half,
        p_value,
    }
}

/// Observations per group a fixed-horizon test needs to detect a difference of `effect`
/// between two groups whose metric has standard deviation `sd`, two-sided at
/// `confidence` with `power`: `2 (z₁₋α/₂ + z_power)² sd² / effect²`.
pub fn sample_size(sd: f64, effect: f64, confidence: f64, power: f64) -> f64 {
    let z = z_of(confidence) + normal().inverse_cdf(power);
    2.0 * (z * sd / effect).powi(2)
}

/// A fixed-horizon test planned before it starts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The metric's standard deviation used (for a rate, `sqrt((p₁q₁ + p₂q₂) / 2)`).
    pub sd: f64,
    /// Observations each group needs (not rounded).
    pub per_group: f64,
}

/// Plan a test of a difference `effect` from `baseline`: a rate when `sd` is `None` (the
/// baseline is the control's rate), else a mean with standard deviation `sd`.
pub fn plan(baseline: f64, effect: f64, sd: Option<f64>, confidence: f64, power: f64) -> Plan {
    let sd = sd.unwrap_or_else(|| {
        let (p1, p2) = (baseline, baseline + effect);
        ((p1 * (1.0 - p1) + p2 * (1.0 - p2)) / 2.0).sqrt()
    });
    Plan {
        sd,
        per_group: sample_size(sd, effect, confidence, power),
    }
}

/// The smallest difference a fixed-horizon test with standard error `se` detects with
/// `power`: `(z₁₋α/₂ + z_power) se`.
pub fn detectable(se: f64, confidence: f64, power: f64) -> f64 {
    (z_of(confidence) + normal().inverse_cdf(power)) * se
}

/// What a comparison still lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shortfall {
    /// `observations`, `successes` or `failures`.
    pub kind: &'static str,
    /// `smaller group`, `control` or `variant`.
    pub group: &'static str,
    /// What it has.
    pub have: u64,
    /// How many more it needs.
    pub more: u64,
}

impl std::fmt::Display for Shortfall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (needs, test) = if self.kind == "observations" {
            (MIN_OBSERVATIONS, "a comparison")
        } else {
            (MIN_EVENTS, "a proportion test")
        };
        write!(
            f,
            "too few {} in the {}: {}, {test} needs {needs} ({} more)",
            self.kind, self.group, self.have, self.more
        )
    }
}

/// Why a comparison cannot be made yet: what the smaller group (or, for a 0/1 metric, a
/// group's successes or failures) lacks. `None`: enough.
pub fn too_few(control: &Moments, variant: &Moments, binary: bool) -> Option<Shortfall> {
    let n = control.n.min(variant.n);
    if n < MIN_OBSERVATIONS {
        return Some(Shortfall {
            kind: "observations",
            group: "smaller group",
            have: n,
            more: MIN_OBSERVATIONS - n,
        });
    }
    if binary {
        for (group, g) in [("control", control), ("variant", variant)] {
            let s = g.successes();
            let (kind, have) = if s < g.n - s {
                ("successes", s)
            } else {
                ("failures", g.n - s)
            };
            if have < MIN_EVENTS {
                return Some(Shortfall {
                    kind,
                    group,
                    have,
                    more: MIN_EVENTS - have,
                });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moments(ys: &[f64], xs: &[f64]) -> Moments {
        let mut m = Moments::default();
        for (y, x) in ys.iter().zip(xs) {
            m.add(*y, *x);
        }
        m
    }

    #[test]
    fn merged_moments_equal_moments_of_all_rows() {
        let ys: Vec<f64> = (0..100)
            .map(|i| (i as f64 * 0.37).sin() * 5.0 + 1e6)
            .collect();
        let xs: Vec<f64> = (0..100).map(|i| (i as f64 * 0.11).cos()).collect();
        let all = moments(&ys, &xs);
        let mut parts = moments(&ys[..37], &xs[..37]);
        parts.merge(&moments(&ys[37..], &xs[37..]));
        for (a, b) in [
            (all.mean_y, parts.mean_y),
            (all.var_y(), parts.var_y()),
            (all.var_x(), parts.var_x()),
            (all.cov(), parts.cov()),
        ] {
            assert!((a - b).abs() <= 1e-9 * a.abs().max(1.0), "{a} against {b}");
        }
        // Two-pass variance around a large mean: no cancellation.
        let mean = ys.iter().sum::<f64>() / 100.0;
        let var = ys.iter().map(|y| (y - mean).powi(2)).sum::<f64>() / 99.0;
        assert!((all.var_y() - var).abs() < 1e-9 * var);
    }

    #[test]
    fn the_srm_check_flags_a_broken_split() {
        let fine = srm(&[5010, 4990], &[1.0, 1.0]).unwrap();
        assert!(!fine.mismatch && fine.p_value > 0.8, "{fine:?}");
        let broken = srm(&[5300, 4700], &[1.0, 1.0]).unwrap();
        assert!(broken.mismatch, "{broken:?}");
        assert!(srm(&[10], &[1.0]).is_none());
    }
}
