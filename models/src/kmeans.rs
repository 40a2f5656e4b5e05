//! Customer segmentation: k-means on the preprocessed rows (standardised numerics, one-hot
//! categoricals), initialised by k-means|| (Bahmani et al. 2012, Spark MLlib's default:
//! `rounds` rounds that each sample about `2k` candidates in proportion to their squared
//! distance from the centres so far, the candidates weighted by the rows closest to them,
//! then k-means++ on the weighted candidates), then Lloyd's iterations until no centre moves
//! more than `tol` (relative to the data's scale) or `max_iter`. k is chosen from a list by
//! the silhouette on a sample. Single-process: the data-parallel version (partial sums
//! through the collective) is not built.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{ModelError, Result};

/// k-means settings.
#[derive(Debug, Clone, PartialEq)]
pub struct KMeansConfig {
    /// Clusters.
    pub k: usize,
    /// k-means|| rounds (Spark's default: 2).
    pub init_rounds: usize,
    /// Most Lloyd iterations.
    pub max_iter: usize,
    /// Stop when no centre moves more than this (squared distance, relative to the mean
    /// squared norm of the rows).
    pub tol: f64,
    /// Seed of the sampling.
    pub seed: u64,
    /// Independent runs (seeds `seed, seed + 1, …`); the lowest inertia is kept (as
    /// scikit-learn's `n_init`).
    pub runs: usize,
}

impl KMeansConfig {
    /// Spark's defaults for `k` clusters.
    pub fn new(k: usize, seed: u64) -> Self {
        KMeansConfig {
            k,
            init_rounds: 2,
            max_iter: 100,
            tol: 1e-6,
            seed,
            runs: 10,
        }
    }
}

/// A fitted k-means.
#[derive(Debug, Clone, PartialEq)]
pub struct KMeansFit {
    /// Centres, row-major `k × dim`.
    pub centers: Vec<f32>,
    /// Clusters.
    pub k: usize,
    /// Features per row.
    pub dim: usize,
    /// Sum of squared distances of the rows to their centre.
    pub inertia: f64,
    /// Lloyd iterations run.
    pub iterations: usize,
    /// Share of the fit spent initialising (k-means||), 0 … 1.
    pub init_share: f64,
}

fn dist2(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = f64::from(*x) - f64::from(*y);
            d * d
        })
        .sum()
}

/// The nearest of `centers` (row-major, `dim` wide) to `row`, and its squared distance.
pub fn nearest(row: &[f32], centers: &[f32], dim: usize) -> (usize, f64) {
    centers
        .chunks(dim)
        .enumerate()
        .map(|(c, center)| (c, dist2(row, center)))
        .fold(
            (0, f64::INFINITY),
            |best, cur| if cur.1 < best.1 { cur } else { best },
        )
}

/// k-means++ on weighted points: `k` of them, each next one drawn in proportion to its
/// weight times its squared distance from the ones chosen.
fn plus_plus(points: &[f32], weights: &[f64], dim: usize, k: usize, rng: &mut StdRng) -> Vec<f32> {
    let n = weights.len();
    let total: f64 = weights.iter().sum();
    let mut pick = rng.random::<f64>() * total;
    let mut first = n - 1;
    for (i, w) in weights.iter().enumerate() {
        if pick < *w {
            first = i;
            break;
        }
        pick -= w;
    }
    let mut centers = points[first * dim..(first + 1) * dim].to_vec();
    let mut d2: Vec<f64> = (0..n)
        .map(|i| dist2(&points[i * dim..(i + 1) * dim], &centers))
        .collect();
    // Greedy k-means++ (as scikit-learn's): each step draws 2 + ln k candidates in
    // proportion to weight × squared distance and keeps the one that lowers the weighted
    // potential most.
    let trials = 2 + (k as f64).ln() as usize;
    while centers.len() < k * dim {
        let mass: f64 = d2.iter().zip(weights).map(|(d, w)| d * w).sum();
        let mut best: Option<(f64, usize, Vec<f64>)> = None;
        for _ in 0..trials {
            let next = if mass <= 0.0 {
                rng.random_range(0..n)
            } else {
                let mut pick = rng.random::<f64>() * mass;
                let mut chosen = n - 1;
                for i in 0..n {
                    let m = d2[i] * weights[i];
                    if pick < m {
                        chosen = i;
                        break;
                    }
                    pick -= m;
                }
                chosen
            };
            let c = &points[next * dim..(next + 1) * dim];
            let after: Vec<f64> = (0..n)
                .map(|i| d2[i].min(dist2(&points[i * dim..(i + 1) * dim], c)))
                .collect();
            let potential: f64 = after.iter().zip(weights).map(|(d, w)| d * w).sum();
            if best.as_ref().is_none_or(|b| potential < b.0) {
                best = Some((potential, next, after));
            }
        }
        let (_, next, after) = best.expect("at least one trial");
        centers.extend_from_slice(&points[next * dim..(next + 1) * dim]);
        d2 = after;
    }
    centers
}

/// k-means|| initial centres of `x` (`rows × dim`).
fn init_parallel(
    x: &[f32],
    rows: usize,
    dim: usize,
    cfg: &KMeansConfig,
    rng: &mut StdRng,
) -> Vec<f32> {
    let first = rng.random_range(0..rows);
    let mut candidates = x[first * dim..(first + 1) * dim].to_vec();
    let mut d2: Vec<f64> = (0..rows)
        .map(|i| dist2(&x[i * dim..(i + 1) * dim], &candidates))
        .collect();
    let l = 2.0 * cfg.k as f64;
    for _ in 0..cfg.init_rounds {
        let phi: f64 = d2.iter().sum();
        if phi <= 0.0 {
            break;
        }
        let before = candidates.len();
        for (i, d) in d2.iter().enumerate() {
            if rng.random::<f64>() < (l * d / phi).min(1.0) {
                candidates.extend_from_slice(&x[i * dim..(i + 1) * dim]);
            }
        }
        let added = &candidates[before..].to_vec();
        for (i, d) in d2.iter_mut().enumerate() {
            let row = &x[i * dim..(i + 1) * dim];
            *d = d.min(nearest(row, added, dim).1);
        }
    }
    // Weigh each candidate by the rows nearest to it; k-means++ on them.
    let mut weights = vec![0.0; candidates.len() / dim];
    for i in 0..rows {
        weights[nearest(&x[i * dim..(i + 1) * dim], &candidates, dim).0] += 1.0;
    }
    if weights.len() <= cfg.k {
        // Fewer candidates than clusters (tiny or duplicate-heavy data): pad by sampling.
        let mut centers = candidates;
        while centers.len() < cfg.k * dim {
            let r = rng.random_range(0..rows);
            centers.extend_from_slice(&x[r * dim..(r + 1) * dim]);
        }
        return centers;
    }
    plus_plus(&candidates, &weights, dim, cfg.k, rng)
}

/// Fit k-means to `x` (`rows × dim`, row-major): the best of `cfg.runs` runs.
pub fn fit(x: &[f32], rows: usize, dim: usize, cfg: &KMeansConfig) -> Result<KMeansFit> {
    let mut best: Option<KMeansFit> = None;
    for run in 0..cfg.runs.max(1) {
        let one = KMeansConfig {
            seed: cfg.seed.wrapping_add(run as u64),
            ..cfg.clone()
        };
        let f = fit_once(x, rows, dim, &one)?;
        if best.as_ref().is_none_or(|b| f.inertia < b.inertia) {
            best = Some(f);
        }
    }
    Ok(best.expect("at least one run"))
}

fn fit_once(x: &[f32], rows: usize, dim: usize, cfg: &KMeansConfig) -> Result<KMeansFit> {
    if cfg.k < 2 || rows < cfg.k {
        return Err(ModelError::Unsupported(format!(
            "k-means with k = {} needs k ≥ 2 and at least k rows; the data has {rows}",
            cfg.k
        )));
    }
    let started = std::time::Instant::now();
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut centers = init_parallel(x, rows, dim, cfg, &mut rng);
    let init_secs = started.elapsed().as_secs_f64();
    let scale = x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / rows as f64;
    let mut assign = vec![0usize; rows];
    let mut iterations = 0;
    for _ in 0..cfg.max_iter {
        iterations += 1;
        let mut sums = vec![0f64; cfg.k * dim];
        let mut counts = vec![0usize; cfg.k];
        for i in 0..rows {
            let row = &x[i * dim..(i + 1) * dim];
            let (c, _) = nearest(row, &centers, dim);
            assign[i] = c;
            counts[c] += 1;
            for (s, v) in sums[c * dim..(c + 1) * dim].iter_mut().zip(row) {
                *s += f64::from(*v);
            }
        }
        let mut moved: f64 = 0.0;
        for c in 0..cfg.k {
            if counts[c] == 0 {
                // An empty cluster takes the row farthest from its centre.
                let far = (0..rows)
                    .max_by(|&a, &b| {
                        let da = dist2(
                            &x[a * dim..(a + 1) * dim],
                            &centers[assign[a] * dim..(assign[a] + 1) * dim],
                        );
                        let db = dist2(
                            &x[b * dim..(b + 1) * dim],
                            &centers[assign[b] * dim..(assign[b] + 1) * dim],
                        );
                        da.total_cmp(&db)
                    })
                    .unwrap_or(0);
                let row = x[far * dim..(far + 1) * dim].to_vec();
                moved = f64::INFINITY;
                centers[c * dim..(c + 1) * dim].copy_from_slice(&row);
                continue;
            }
            let new: Vec<f32> = sums[c * dim..(c + 1) * dim]
                .iter()
                .map(|s| (s / counts[c] as f64) as f32)
                .collect();
            moved = moved.max(dist2(&new, &centers[c * dim..(c + 1) * dim]));
            centers[c * dim..(c + 1) * dim].copy_from_slice(&new);
        }
        if moved <= cfg.tol * scale.max(f64::MIN_POSITIVE) {
            break;
        }
    }
    let inertia = (0..rows)
        .map(|i| nearest(&x[i * dim..(i + 1) * dim], &centers, dim).1)
        .sum();
    let total = started.elapsed().as_secs_f64().max(f64::MIN_POSITIVE);
    Ok(KMeansFit {
        centers,
        k: cfg.k,
        dim,
        inertia,
        iterations,
        init_share: init_secs / total,
    })
}

/// Mean silhouette of `rows` (indices into `x`) under `fit`: for each row, `(b − a) /
/// max(a, b)` with `a` the mean distance to the other rows of its cluster and `b` the
/// smallest mean distance to another cluster's rows (Euclidean, as scikit-learn).
pub fn silhouette(x: &[f32], rows: &[usize], fit: &KMeansFit) -> f64 {
    let dim = fit.dim;
    let label: Vec<usize> = rows
        .iter()
        .map(|&i| nearest(&x[i * dim..(i + 1) * dim], &fit.centers, dim).0)
        .collect();
    let mut total = 0.0;
    let mut counted = 0usize;
    for (a_i, &i) in rows.iter().enumerate() {
        let mut sum = vec![0f64; fit.k];
        let mut n = vec![0usize; fit.k];
        for (b_i, &j) in rows.iter().enumerate() {
            if a_i == b_i {
                continue;
            }
            sum[label[b_i]] += dist2(&x[i * dim..(i + 1) * dim], &x[j * dim..(j + 1) * dim]).sqrt();
            n[label[b_i]] += 1;
        }
        let own = label[a_i];
        if n[own] == 0 {
            // A cluster of one row scores 0, as scikit-learn's.
            counted += 1;
            continue;
        }
        let a = sum[own] / n[own] as f64;
        let b = (0..fit.k)
            .filter(|&c| c != own && n[c] > 0)
            .map(|c| sum[c] / n[c] as f64)
            .fold(f64::INFINITY, f64::min);
        if b.is_finite() {
            total += (b - a) / a.max(b);
        }
        counted += 1;
    }
    total / counted.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_with_known_centres_are_recovered() {
        let truth = [[0.0f32, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]];
        let mut rng = StdRng::seed_from_u64(3);
        let mut x = Vec::new();
        for i in 0..2000 {
            let c = truth[i % 4];
            x.push(c[0] + rng.random::<f32>() - 0.5);
            x.push(c[1] + rng.random::<f32>() - 0.5);
        }
        let fit = fit(&x, 2000, 2, &KMeansConfig::new(4, 1)).unwrap();
        for c in truth {
            let (_, d) = nearest(&c, &fit.centers, 2);
            assert!(d < 0.01, "centre {c:?} not found: {:?}", fit.centers);
        }
        let sample: Vec<usize> = (0..400).collect();
        assert!(silhouette(&x, &sample, &fit) > 0.9);
    }
}
