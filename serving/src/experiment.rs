//! A/B analysis of the outcomes fed back per version: each variant's conversion rate, its
//! difference with the control's, a Wald confidence interval of that difference and the
//! two-sided p-value of the pooled two-proportion z-test.

use halyard_core::proto::{ExperimentResponse, VariantStats};
use halyard_core::registry::{Deployment, Outcomes, PRODUCTION};

/// Confidence level of the intervals.
pub const CONFIDENCE: f64 = 0.95;
/// The normal quantile of [`CONFIDENCE`] (two-sided).
const Z: f64 = 1.959_963_984_540_054;

/// `erfc(x)` (Numerical Recipes' Chebyshev fit, relative error below 1.2e-7).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// Two-sided p-value of a standard normal statistic.
pub fn p_value(z: f64) -> f64 {
    erfc(z.abs() / std::f64::consts::SQRT_2)
}

fn rate(o: &Outcomes) -> f64 {
    if o.trials == 0 {
        0.0
    } else {
        o.conversions as f64 / o.trials as f64
    }
}

/// Compare every variant (and every version with outcomes) with the control: the
/// production version, or the first variant when there is none.
pub fn analyse(
    name: &str,
    deployment: Option<&Deployment>,
    outcomes: &[(u64, Outcomes)],
) -> ExperimentResponse {
    let state = deployment.map(|d| d.current.clone()).unwrap_or_default();
    let mut versions: Vec<(u64, u32)> = state
        .variants
        .iter()
        .map(|v| (v.version, v.weight))
        .collect();
    for (v, _) in outcomes {
        if !versions.iter().any(|(x, _)| x == v) {
            versions.push((*v, 0));
        }
    }
    let control = state
        .aliases
        .get(PRODUCTION)
        .copied()
        .or_else(|| versions.first().map(|v| v.0))
        .unwrap_or(0);
    let counts = |v: u64| {
        outcomes
            .iter()
            .find(|(x, _)| *x == v)
            .map(|(_, o)| *o)
            .unwrap_or_default()
    };
    let c = counts(control);
    let pc = rate(&c);
    let variants = versions
        .into_iter()
        .map(|(version, weight)| {
            let o = counts(version);
            let p = rate(&o);
            let mut s = VariantStats {
                version,
                weight,
                trials: o.trials,
                conversions: o.conversions,
                rate: p,
                difference: p - pc,
                ci_low: f64::NAN,
                ci_high: f64::NAN,
                p_value: f64::NAN,
                significant: false,
            };
            if version != control && o.trials > 0 && c.trials > 0 {
                let (n1, n2) = (o.trials as f64, c.trials as f64);
                let se = (p * (1.0 - p) / n1 + pc * (1.0 - pc) / n2).sqrt();
                s.ci_low = s.difference - Z * se;
                s.ci_high = s.difference + Z * se;
                let pooled = (o.conversions + c.conversions) as f64 / (n1 + n2);
                let se0 = (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)).sqrt();
                s.p_value = if se0 > 0.0 {
                    p_value(s.difference / se0)
                } else {
                    1.0
                };
                s.significant = s.p_value < 1.0 - CONFIDENCE;
            }
            s
        })
        .collect();
    ExperimentResponse {
        name: name.to_string(),
        control,
        variants,
        confidence: CONFIDENCE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use halyard_core::registry::{DeploymentState, Variant};

    #[test]
    fn normal_tail_matches_known_values() {
        assert!((p_value(1.959_964) - 0.05).abs() < 1e-6);
        assert!((p_value(0.0) - 1.0).abs() < 1e-6);
        assert!((p_value(-2.575_829) - 0.01).abs() < 1e-6);
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
            },
            ..Deployment::default()
        };
        let o = |trials, conversions| Outcomes {
            trials,
            conversions,
        };
        let r = analyse("m", Some(&d), &[(1, o(1000, 100)), (2, o(1000, 150))]);
        assert_eq!(r.control, 1);
        let v2 = &r.variants[1];
        assert!((v2.difference - 0.05).abs() < 1e-12);
        // Pooled z = 0.05 / sqrt(0.125 * 0.875 * 0.002) = 3.381: p = 0.00072.
        assert!((v2.p_value - 0.000_722).abs() < 2e-5, "{}", v2.p_value);
        assert!(v2.significant && v2.ci_low > 0.0);
        let r = analyse("m", Some(&d), &[(1, o(1000, 100)), (2, o(1000, 104))]);
        assert!(!r.variants[1].significant && r.variants[1].ci_low < 0.0);
        assert!(
            r.variants[0].p_value.is_nan(),
            "the control is not compared with itself"
        );
    }
}
