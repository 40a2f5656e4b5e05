//! Classification metrics on predicted probabilities.

use std::collections::BTreeMap;

/// Area under the ROC curve, by ranks with ties averaged. `None` with one class only.
pub fn auc(scores: &[f32], labels: &[f32]) -> Option<f64> {
    let n = scores.len();
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum_pos = 0.0f64;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        // Ranks i+1 ..= j+1 share their mean.
        let mean_rank = (i + j + 2) as f64 / 2.0;
        for &k in &idx[i..=j] {
            if labels[k] > 0.5 {
                rank_sum_pos += mean_rank;
            }
        }
        i = j + 1;
    }
    let pos = labels.iter().filter(|&&y| y > 0.5).count() as f64;
    let neg = n as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return None;
    }
    Some((rank_sum_pos - pos * (pos + 1.0) / 2.0) / (pos * neg))
}

/// Mean binary cross-entropy, probabilities clipped to [1e-15, 1 - 1e-15].
pub fn log_loss(probs: &[f32], labels: &[f32]) -> f64 {
    let total: f64 = probs
        .iter()
        .zip(labels)
        .map(|(&p, &y)| row_log_loss(f64::from(p), y))
        .sum();
    total / probs.len().max(1) as f64
}

/// One row's log loss, the probability clipped to `[1e-15, 1 - 1e-15]`.
pub fn row_log_loss(p: f64, y: f32) -> f64 {
    let p = p.clamp(1e-15, 1.0 - 1e-15);
    if y > 0.5 { -p.ln() } else { -(1.0 - p).ln() }
}

/// Share of rows classified right at threshold 0.5.
pub fn accuracy(probs: &[f32], labels: &[f32]) -> f64 {
    let right = probs
        .iter()
        .zip(labels)
        .filter(|&(&p, &y)| (p >= 0.5) == (y > 0.5))
        .count();
    right as f64 / probs.len().max(1) as f64
}

/// Expected calibration error: over ten equal-width probability bins, the row-weighted mean
/// of |mean predicted − observed rate|.
pub fn expected_calibration_error(probs: &[f32], labels: &[f32]) -> f64 {
    let n = probs.len().max(1) as f64;
    crate::evaluation::calibration(probs, labels)
        .iter()
        .map(|b| b.rows as f64 * (b.predicted - b.observed).abs() / n)
        .sum()
}

/// Response rate among the top-scored tenth of rows, and its lift over the overall rate.
pub fn top_decile(probs: &[f32], labels: &[f32]) -> (f64, f64) {
    let n = probs.len();
    if n == 0 {
        return (0.0, 0.0);
    }
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    let k = n.div_ceil(10);
    let top = idx[..k].iter().filter(|&&i| labels[i] > 0.5).count() as f64 / k as f64;
    let base = labels.iter().filter(|&&y| y > 0.5).count() as f64 / n as f64;
    (top, if base > 0.0 { top / base } else { 0.0 })
}

/// The standard set, under `prefix` (`test_`, `train_`): auc (when defined), log_loss,
/// accuracy, ece, top_decile_rate, top_decile_lift, positive_rate, rows.
pub fn classification(prefix: &str, probs: &[f32], labels: &[f32]) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    if let Some(a) = auc(probs, labels) {
        m.insert(format!("{prefix}auc"), a);
    }
    m.insert(format!("{prefix}log_loss"), log_loss(probs, labels));
    m.insert(format!("{prefix}accuracy"), accuracy(probs, labels));
    m.insert(
        format!("{prefix}ece"),
        expected_calibration_error(probs, labels),
    );
    let (rate, lift) = top_decile(probs, labels);
    m.insert(format!("{prefix}top_decile_rate"), rate);
    m.insert(format!("{prefix}top_decile_lift"), lift);
    let pos = labels.iter().filter(|&&y| y > 0.5).count() as f64;
    m.insert(
        format!("{prefix}positive_rate"),
        pos / labels.len().max(1) as f64,
    );
    m.insert(format!("{prefix}rows"), labels.len() as f64);
    m
}

/// Errors of predicted numbers `pred` against labels `y`, keyed with `prefix`: `rmse`,
/// `mae`, `r2` (one less the squared error over the labels' squared deviation from their
/// mean), `mean_label`, `mean_prediction` and `rows`; with `poisson`, also
/// `poisson_deviance`, the mean of `2·(y·ln(y/p) − y + p)` (scikit-learn's
/// `mean_poisson_deviance`; `y·ln(y/p)` is 0 where `y` is 0).
pub fn regression(prefix: &str, pred: &[f32], y: &[f32], poisson: bool) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    m.insert(format!("{prefix}rows"), y.len() as f64);
    if y.is_empty() {
        return m;
    }
    let n = y.len() as f64;
    let pairs = || {
        pred.iter()
            .zip(y)
            .map(|(&p, &y)| (f64::from(p), f64::from(y)))
    };
    let mean_y = y.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let sse: f64 = pairs().map(|(p, y)| (p - y) * (p - y)).sum();
    let sst: f64 = y.iter().map(|&v| (f64::from(v) - mean_y).powi(2)).sum();
    m.insert(format!("{prefix}rmse"), (sse / n).sqrt());
    m.insert(
        format!("{prefix}mae"),
        pairs().map(|(p, y)| (p - y).abs()).sum::<f64>() / n,
    );
    m.insert(format!("{prefix}r2"), 1.0 - sse / sst);
    m.insert(format!("{prefix}mean_label"), mean_y);
    m.insert(
        format!("{prefix}mean_prediction"),
        pairs().map(|(p, _)| p).sum::<f64>() / n,
    );
    if poisson {
        let deviance: f64 = pairs()
            .map(|(p, y)| {
                let ylog = if y > 0.0 { y * (y / p).ln() } else { 0.0 };
                2.0 * (ylog - y + p)
            })
            .sum();
        m.insert(format!("{prefix}poisson_deviance"), deviance / n);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_of_perfect_reversed_and_tied_rankings() {
        let y = [0.0, 0.0, 1.0, 1.0];
        assert_eq!(auc(&[0.1, 0.2, 0.8, 0.9], &y), Some(1.0));
        assert_eq!(auc(&[0.9, 0.8, 0.2, 0.1], &y), Some(0.0));
        assert_eq!(auc(&[0.5, 0.5, 0.5, 0.5], &y), Some(0.5));
        // The positive 0.3 beats one negative (0.2) but not the other (0.4): 3 of 4 pairs.
        assert_eq!(auc(&[0.2, 0.4, 0.3, 0.9], &y), Some(0.75));
        assert_eq!(auc(&[0.1, 0.2], &[1.0, 1.0]), None);
    }

    #[test]
    fn log_loss_matches_hand_computation() {
        let ll = log_loss(&[0.9, 0.2], &[1.0, 0.0]);
        let expected = (-(0.9f64.ln()) - (0.8f64.ln())) / 2.0;
        assert!((ll - expected).abs() < 1e-6, "{ll} vs {expected}");
        assert!(log_loss(&[0.0], &[1.0]).is_finite());
    }

    #[test]
    fn calibration_and_lift_by_hand() {
        // Bin 0.2: predicted 0.2 twice, observed 1 of 2 → |0.4 - 1| / 4; bin 0.9: |1.8 - 2| / 4.
        let e = expected_calibration_error(&[0.2, 0.2, 0.9, 0.9], &[1.0, 0.0, 1.0, 1.0]);
        assert!((e - (0.6 + 0.2) / 4.0).abs() < 1e-6, "{e}");
        // 20 rows, 2 positive, both scored highest: top tenth is 2 rows, rate 1, lift 10.
        let mut p = vec![0.1f32; 20];
        let mut y = vec![0.0f32; 20];
        p[3] = 0.9;
        p[7] = 0.8;
        y[3] = 1.0;
        y[7] = 1.0;
        assert_eq!(top_decile(&p, &y), (1.0, 10.0));
    }
}
