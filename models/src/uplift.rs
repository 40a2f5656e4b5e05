//! Uplift metrics: how well a ranking by predicted uplift (the treatment's effect on one
//! customer) finds the customers a campaign changes. The definitions are scikit-uplift's
//! (`sklift.metrics`), reproduced step for step so that the figures agree with it to
//! rounding (checked against vectors it computed: `models/tests/uplift.rs`):
//!
//! - rows are ranked by uplift, highest first; ties keep the reverse of their input order
//!   (NumPy's stable ascending sort, reversed), and each curve has one point per distinct
//!   uplift value (the last row of a run of ties), starting at (0, 0);
//! - **uplift curve** at the first `n` rows: `(R_t/N_t − R_c/N_c) · n`, with `R` the
//!   responders and `N` the rows of the treated (`t`) and control (`c`) rows among them
//!   (a ratio over zero rows is 0);
//! - **Qini curve** at the first `n` rows: `R_t − R_c · N_t/N_c`;
//! - **AUUC** (`uplift_auc_score`) and the **Qini coefficient** (`qini_auc_score`): the
//!   area under the curve (trapezoids) less the area under the straight line from (0, 0)
//!   to the curve's end (a random ranking), divided by the same for the perfect ranking.
//!   The perfect uplift ranking puts treated responders and untreated non-responders first
//!   (`2·[y = t] + y` when control responders outnumber treated non-responders, else
//!   `2·[y = t] + t`); the perfect Qini ranking, allowing negative effects, ranks by
//!   `y·t − y·(1 − t)`;
//! - **uplift at k** (`uplift_at_k`, strategy `overall`): among the top `⌊k·n⌋` rows (or `k`
//!   rows), the treated rows' response rate less the control rows'; strategy `by_group`
//!   takes the top `⌊k·N_t⌋` treated and `⌊k·N_c⌋` control rows separately.
//!
//! 1 is a perfect ranking, 0 a random one, a negative value worse than random.

use crate::error::{ModelError, Result};

/// Row order by uplift, highest first, ties in reverse input order (NumPy's
/// `argsort(kind="mergesort")[::-1]`).
fn ranked(uplift: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..uplift.len()).collect();
    order.sort_by(|&a, &b| uplift[a].total_cmp(&uplift[b]));
    order.reverse();
    order
}

fn check(y: &[f64], uplift: &[f64], treatment: &[f64]) -> Result<()> {
    if y.len() != uplift.len() || y.len() != treatment.len() {
        return Err(ModelError::Unsupported(format!(
            "uplift metrics: {} outcomes, {} uplifts and {} treatment flags; they must be as many",
            y.len(),
            uplift.len(),
            treatment.len()
        )));
    }
    for (what, v) in [("outcome", y), ("treatment", treatment)] {
        if let Some(bad) = v.iter().find(|x| **x != 0.0 && **x != 1.0) {
            return Err(ModelError::Unsupported(format!(
                "uplift metrics: a {what} of {bad}; outcomes and treatment flags must be 0 or 1"
            )));
        }
    }
    if !treatment.contains(&1.0) || !treatment.contains(&0.0) {
        return Err(ModelError::Unsupported(
            "uplift metrics need treated and control rows".into(),
        ));
    }
    Ok(())
}

/// Cumulative sums at each distinct-uplift threshold of the ranked rows: `(n, N_t, R_t,
/// R_c)` per point.
fn cumulative(y: &[f64], uplift: &[f64], treatment: &[f64]) -> Vec<(f64, f64, f64, f64)> {
    let order = ranked(uplift);
    let mut out = Vec::new();
    let (mut nt, mut rt, mut rc) = (0.0, 0.0, 0.0);
    for (i, &r) in order.iter().enumerate() {
        nt += treatment[r];
        if treatment[r] == 1.0 {
            rt += y[r];
        } else {
            rc += y[r];
        }
        let last_of_run = order
            .get(i + 1)
            .is_none_or(|&next| uplift[next] != uplift[r]);
        if last_of_run {
            out.push(((i + 1) as f64, nt, rt, rc));
        }
    }
    out
}

fn ratio(a: f64, b: f64) -> f64 {
    if b != 0.0 { a / b } else { 0.0 }
}

/// Points `(n, value)` starting at (0, 0).
type Curve = Vec<(f64, f64)>;

fn from_origin(points: Curve) -> Curve {
    match points.first() {
        Some(&(x, v)) if x == 0.0 && v == 0.0 => points,
        _ => std::iter::once((0.0, 0.0)).chain(points).collect(),
    }
}

/// The uplift curve (`sklift.metrics.uplift_curve`).
pub fn uplift_curve(y: &[f64], uplift: &[f64], treatment: &[f64]) -> Result<Curve> {
    check(y, uplift, treatment)?;
    Ok(from_origin(
        cumulative(y, uplift, treatment)
            .into_iter()
            .map(|(n, nt, rt, rc)| (n, (ratio(rt, nt) - ratio(rc, n - nt)) * n))
            .collect(),
    ))
}

/// The Qini curve (`sklift.metrics.qini_curve`).
pub fn qini_curve(y: &[f64], uplift: &[f64], treatment: &[f64]) -> Result<Curve> {
    check(y, uplift, treatment)?;
    Ok(from_origin(
        cumulative(y, uplift, treatment)
            .into_iter()
            .map(|(n, nt, rt, rc)| (n, rt - rc * ratio(nt, n - nt)))
            .collect(),
    ))
}

/// Area under a curve by trapezoids (`sklearn.metrics.auc`).
fn area(c: &[(f64, f64)]) -> f64 {
    c.windows(2)
        .map(|w| (w[1].0 - w[0].0) * (w[0].1 + w[1].1) / 2.0)
        .sum()
}

/// `(area(actual) − baseline) / (area(perfect) − baseline)`, the baseline the line from
/// (0, 0) to the perfect curve's end.
fn normalised(actual: &[(f64, f64)], perfect: &[(f64, f64)]) -> f64 {
    let end = perfect.last().copied().unwrap_or((0.0, 0.0));
    let baseline = area(&[(0.0, 0.0), end]);
    (area(actual) - baseline) / (area(perfect) - baseline)
}

/// Area under the uplift curve, normalised (`sklift.metrics.uplift_auc_score`).
pub fn uplift_auc(y: &[f64], uplift: &[f64], treatment: &[f64]) -> Result<f64> {
    let actual = uplift_curve(y, uplift, treatment)?;
    let control_responders = y
        .iter()
        .zip(treatment)
        .filter(|(y, t)| **y == 1.0 && **t == 0.0)
        .count();
    let treated_non_responders = y
        .iter()
        .zip(treatment)
        .filter(|(y, t)| **y == 0.0 && **t == 1.0)
        .count();
    let perfect_rank: Vec<f64> = y
        .iter()
        .zip(treatment)
        .map(|(&y, &t)| {
            let summand = if control_responders > treated_non_responders {
                y
            } else {
                t
            };
            2.0 * f64::from(u8::from(y == t)) + summand
        })
        .collect();
    let perfect = uplift_curve(y, &perfect_rank, treatment)?;
    Ok(normalised(&actual, &perfect))
}

/// The Qini coefficient, allowing negative effects in the perfect ranking
/// (`sklift.metrics.qini_auc_score(..., negative_effect=True)`).
pub fn qini_auc(y: &[f64], uplift: &[f64], treatment: &[f64]) -> Result<f64> {
    let actual = qini_curve(y, uplift, treatment)?;
    let perfect_rank: Vec<f64> = y
        .iter()
        .zip(treatment)
        .map(|(&y, &t)| y * t - y * (1.0 - t))
        .collect();
    let perfect = qini_curve(y, &perfect_rank, treatment)?;
    Ok(normalised(&actual, &perfect))
}

/// How many rows uplift at k looks at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TopK {
    /// A fraction in (0, 1) of the rows.
    Fraction(f64),
    /// A count of rows.
    Count(usize),
}

impl TopK {
    fn of(self, n: usize) -> usize {
        match self {
            TopK::Fraction(f) => (n as f64 * f) as usize,
            TopK::Count(k) => k,
        }
    }
}

/// Uplift at k (`sklift.metrics.uplift_at_k`): `by_group = false` is strategy `overall`
/// (the top k of all rows), `true` is `by_group` (the top k of each group). `None` when
/// the top rows hold no treated or no control row.
pub fn uplift_at_k(
    y: &[f64],
    uplift: &[f64],
    treatment: &[f64],
    k: TopK,
    by_group: bool,
) -> Result<Option<f64>> {
    check(y, uplift, treatment)?;
    let order = ranked(uplift);
    let mean = |rows: &mut dyn Iterator<Item = usize>| {
        let (mut s, mut n) = (0.0, 0usize);
        for r in rows {
            s += y[r];
            n += 1;
        }
        (n > 0).then(|| s / n as f64)
    };
    let (trmnt, ctrl) = if by_group {
        let count = |t: f64| treatment.iter().filter(|x| **x == t).count();
        let (kt, kc) = (k.of(count(1.0)), k.of(count(0.0)));
        (
            mean(
                &mut order
                    .iter()
                    .copied()
                    .filter(|&r| treatment[r] == 1.0)
                    .take(kt),
            ),
            mean(
                &mut order
                    .iter()
                    .copied()
                    .filter(|&r| treatment[r] == 0.0)
                    .take(kc),
            ),
        )
    } else {
        let top = &order[..k.of(y.len()).min(y.len())];
        (
            mean(&mut top.iter().copied().filter(|&r| treatment[r] == 1.0)),
            mean(&mut top.iter().copied().filter(|&r| treatment[r] == 0.0)),
        )
    };
    Ok(trmnt.zip(ctrl).map(|(t, c)| t - c))
}

/// A percentile bootstrap interval of `metric` over `rounds` resamples of the rows (with
/// replacement, seeded): `(low, high)` at `confidence` (0.95 for a 95 % interval).
/// Resamples where the metric is undefined (one group missing) are skipped.
pub fn bootstrap(
    y: &[f64],
    uplift: &[f64],
    treatment: &[f64],
    rounds: usize,
    confidence: f64,
    seed: u64,
    metric: impl Fn(&[f64], &[f64], &[f64]) -> Result<Option<f64>>,
) -> Option<(f64, f64)> {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    let n = y.len();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut values = Vec::with_capacity(rounds);
    let (mut ys, mut us, mut ts) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    for _ in 0..rounds {
        for i in 0..n {
            let r = rng.random_range(0..n);
            (ys[i], us[i], ts[i]) = (y[r], uplift[r], treatment[r]);
        }
        if let Ok(Some(v)) = metric(&ys, &us, &ts)
            && v.is_finite()
        {
            values.push(v);
        }
    }
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    let tail = (1.0 - confidence) / 2.0;
    Some((at(tail), at(1.0 - tail)))
}
