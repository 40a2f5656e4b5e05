//! Customer segmentation: k-means on the preprocessed rows (standardised numerics, one-hot
//! categoricals), initialised by k-means|| (Bahmani et al. 2012, Spark MLlib's default:
//! `rounds` rounds that each sample about `2k` candidates in proportion to their squared
//! distance from the centres so far, the candidates weighted by the rows closest to them,
//! then k-means++ on the weighted candidates), then Lloyd's iterations until no centre moves
//! more than `tol` (relative to the data's scale) or `max_iter`. k is chosen from a list by
//! the silhouette on a sample.
//!
//! Data-parallel: [`fit_group`] runs on every rank of a [`Collective`] group, each holding
//! its own rows. Every sum over rows (the sampling mass, the candidates' weights, Lloyd's
//! per-centre sums and counts, the inertia) is a local partial sum reduced by the group's
//! all-reduce, and every choice (the first centre, k-means++ on the candidates, empty
//! clusters) is made from reduced values by the same code with the same seed on every
//! rank, so the ranks hold the same centres at every step without sending them. The
//! all-reduce carries `f32`: sums over the group keep about seven significant digits (a
//! group of one, [`fit`], sums in `f64`). Rows never move; what crosses the network per
//! Lloyd iteration is `k × (dim + 1) + 1` floats.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::distributed::{Collective, Solo};
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

/// Squared distance in `f32`: the hot loop's (every row against every centre).
fn dist2_fast(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = x - y;
            d * d
        })
        .sum()
}

/// The nearest of `centers` (row-major, `dim` wide) to `row`, and its squared distance.
pub fn nearest(row: &[f32], centers: &[f32], dim: usize) -> (usize, f64) {
    let mut best = (0, f32::INFINITY);
    for (c, center) in centers.chunks_exact(dim).enumerate() {
        let d = dist2_fast(row, center);
        if d < best.1 {
            best = (c, d);
        }
    }
    (best.0, f64::from(best.1))
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

/// This rank's rows and the group around them.
struct Part<'a, 'g> {
    x: &'a [f32],
    rows: usize,
    dim: usize,
    group: &'g mut dyn Collective,
    /// First global row of each rank (rank order), and the total after the last.
    offsets: Vec<u64>,
    /// Mean squared norm of the group's rows: the scale of the convergence tolerance.
    scale: f64,
}

impl Part<'_, '_> {
    fn row(&self, i: usize) -> &[f32] {
        &self.x[i * self.dim..(i + 1) * self.dim]
    }

    fn total(&self) -> u64 {
        *self.offsets.last().expect("offsets end with the total")
    }

    /// `values` summed over the group (exact in a group of one; `f32` on the wire).
    fn sum(&mut self, values: &[f64]) -> Result<Vec<f64>> {
        if self.group.size() == 1 {
            return Ok(values.to_vec());
        }
        let mut wire: Vec<f32> = values.iter().map(|v| *v as f32).collect();
        self.group.all_reduce(&mut wire)?;
        Ok(wire.into_iter().map(f64::from).collect())
    }

    /// Every rank's `slots` floats, in rank order, on every rank (`slots` may differ by
    /// rank: the caller passes each rank's count). Exact: each slot of the reduced vector
    /// has one contributor, the others add zeros.
    fn gather(&mut self, mine: &[f32], counts: &[usize]) -> Result<Vec<f32>> {
        if self.group.size() == 1 {
            return Ok(mine.to_vec());
        }
        let start: usize = counts[..self.group.rank()].iter().sum();
        let mut wire = vec![0f32; counts.iter().sum()];
        wire[start..start + mine.len()].copy_from_slice(mine);
        self.group.all_reduce(&mut wire)?;
        Ok(wire)
    }

    /// The rows at global indices `picks`, on every rank.
    fn pick(&mut self, picks: &[u64]) -> Result<Vec<f32>> {
        let (rank, dim) = (self.group.rank(), self.dim);
        let (lo, hi) = (self.offsets[rank], self.offsets[rank + 1]);
        let mut out = vec![0f32; picks.len() * dim];
        for (slot, &g) in picks.iter().enumerate() {
            if (lo..hi).contains(&g) {
                out[slot * dim..(slot + 1) * dim].copy_from_slice(self.row((g - lo) as usize));
            }
        }
        if self.group.size() > 1 {
            self.group.all_reduce(&mut out)?;
        }
        Ok(out)
    }
}

/// Each rank's row count (exact up to 2^40 rows: sent as two 16-bit-split `f32` digits),
/// as the first global row of each rank and the total.
fn row_offsets(group: &mut dyn Collective, rows: usize) -> Result<Vec<u64>> {
    let (rank, size) = (group.rank(), group.size());
    let mut wire = vec![0f32; 2 * size];
    wire[2 * rank] = (rows >> 16) as f32;
    wire[2 * rank + 1] = (rows & 0xffff) as f32;
    if size > 1 {
        group.all_reduce(&mut wire)?;
    }
    let mut offsets = vec![0u64];
    for r in 0..size {
        let n = ((wire[2 * r] as u64) << 16) + wire[2 * r + 1] as u64;
        offsets.push(offsets[r] + n);
    }
    Ok(offsets)
}

/// k-means|| initial centres. `shared` draws the group's common choices (the same on every
/// rank), `local` this rank's sampling.
fn init_parallel(
    p: &mut Part<'_, '_>,
    cfg: &KMeansConfig,
    shared: &mut StdRng,
    local: &mut StdRng,
) -> Result<Vec<f32>> {
    let (rows, dim, size) = (p.rows, p.dim, p.group.size());
    let first = shared.random_range(0..p.total());
    let mut candidates = p.pick(&[first])?;
    // Each row's squared distance to the nearest candidate so far, and that candidate.
    let mut d2: Vec<f32> = (0..rows)
        .map(|i| dist2_fast(p.row(i), &candidates))
        .collect();
    let mut near = vec![0u32; rows];
    let l = 2.0 * cfg.k as f64;
    for _ in 0..cfg.init_rounds {
        let phi = p.sum(&[d2.iter().map(|d| f64::from(*d)).sum()])?[0];
        if phi <= 0.0 {
            break;
        }
        let mut mine = Vec::new();
        for (i, d) in d2.iter().enumerate() {
            if local.random::<f64>() < (l * f64::from(*d) / phi).min(1.0) {
                mine.extend_from_slice(p.row(i));
            }
        }
        let mut counts = vec![0.0; size];
        counts[p.group.rank()] = (mine.len() / dim) as f64;
        let counts: Vec<usize> = p
            .sum(&counts)?
            .into_iter()
            .map(|c| c as usize * dim)
            .collect();
        let added = p.gather(&mine, &counts)?;
        let before = (candidates.len() / dim) as u32;
        for i in 0..rows {
            let (c, d) = nearest(p.row(i), &added, dim);
            if (d as f32) < d2[i] {
                d2[i] = d as f32;
                near[i] = before + c as u32;
            }
        }
        candidates.extend_from_slice(&added);
    }
    // Weigh each candidate by the rows nearest to it; k-means++ on them.
    let mut weights = vec![0.0; candidates.len() / dim];
    for n in &near {
        weights[*n as usize] += 1.0;
    }
    let weights = p.sum(&weights)?;
    if weights.len() <= cfg.k {
        // Fewer candidates than clusters (tiny or duplicate-heavy data): pad by sampling.
        let picks: Vec<u64> = (weights.len()..cfg.k)
            .map(|_| shared.random_range(0..p.total()))
            .collect();
        candidates.extend(p.pick(&picks)?);
        return Ok(candidates);
    }
    Ok(plus_plus(&candidates, &weights, dim, cfg.k, shared))
}

/// Fit k-means to `x` (`rows × dim`, row-major): the best of `cfg.runs` runs.
pub fn fit(x: &[f32], rows: usize, dim: usize, cfg: &KMeansConfig) -> Result<KMeansFit> {
    fit_group(x, rows, dim, cfg, &mut Solo)
}

/// Fit k-means as one rank of `group`, over the rows of every rank (`x`, `rows × dim`, is
/// this rank's): the best of `cfg.runs` runs. Every rank returns the same fit.
pub fn fit_group(
    x: &[f32],
    rows: usize,
    dim: usize,
    cfg: &KMeansConfig,
    group: &mut dyn Collective,
) -> Result<KMeansFit> {
    let offsets = row_offsets(group, rows)?;
    let mut part = Part {
        x,
        rows,
        dim,
        group,
        offsets,
        scale: 0.0,
    };
    let total = part.total();
    if cfg.k < 2 || total < cfg.k as u64 {
        return Err(ModelError::Unsupported(format!(
            "k-means with k = {} needs k ≥ 2 and at least k rows; the data has {total}",
            cfg.k
        )));
    }
    let norms: f64 = x.iter().map(|v| f64::from(*v).powi(2)).sum();
    part.scale = part.sum(&[norms])?[0] / total as f64;
    let mut best: Option<KMeansFit> = None;
    for run in 0..cfg.runs.max(1) {
        let one = KMeansConfig {
            seed: cfg.seed.wrapping_add(run as u64),
            ..cfg.clone()
        };
        let f = fit_once(&mut part, &one)?;
        if best.as_ref().is_none_or(|b| f.inertia < b.inertia) {
            best = Some(f);
        }
    }
    Ok(best.expect("at least one run"))
}

fn fit_once(p: &mut Part<'_, '_>, cfg: &KMeansConfig) -> Result<KMeansFit> {
    let (rows, dim, k) = (p.rows, p.dim, cfg.k);
    let started = std::time::Instant::now();
    let mut shared = StdRng::seed_from_u64(cfg.seed);
    let mut local = StdRng::seed_from_u64(cfg.seed ^ (p.group.rank() as u64).rotate_left(32));
    let mut centers = init_parallel(p, cfg, &mut shared, &mut local)?;
    let init_secs = started.elapsed().as_secs_f64();
    // Each row's squared distance to its centre in the last pass.
    let mut d_own = vec![0f32; rows];
    let mut iterations = 0;
    for _ in 0..cfg.max_iter {
        iterations += 1;
        // Per centre: `dim` sums, then the count.
        let mut partial = vec![0f64; k * (dim + 1)];
        for (i, own) in d_own.iter_mut().enumerate() {
            let row = p.row(i);
            let (c, d) = nearest(row, &centers, dim);
            *own = d as f32;
            let slot = &mut partial[c * (dim + 1)..(c + 1) * (dim + 1)];
            for (s, v) in slot.iter_mut().zip(row) {
                *s += f64::from(*v);
            }
            slot[dim] += 1.0;
        }
        let reduced = p.sum(&partial)?;
        let mut moved: f64 = 0.0;
        for c in 0..k {
            let slot = &reduced[c * (dim + 1)..(c + 1) * (dim + 1)];
            if slot[dim] == 0.0 {
                // An empty cluster takes the row farthest from its centre, group-wide.
                let row = farthest(p, &mut d_own)?;
                moved = f64::INFINITY;
                centers[c * dim..(c + 1) * dim].copy_from_slice(&row);
                continue;
            }
            let new: Vec<f32> = slot[..dim].iter().map(|s| (s / slot[dim]) as f32).collect();
            moved = moved.max(dist2(&new, &centers[c * dim..(c + 1) * dim]));
            centers[c * dim..(c + 1) * dim].copy_from_slice(&new);
        }
        if moved <= cfg.tol * p.scale.max(f64::MIN_POSITIVE) {
            break;
        }
    }
    let local_inertia: f64 = (0..rows).map(|i| nearest(p.row(i), &centers, dim).1).sum();
    let inertia = p.sum(&[local_inertia])?[0];
    let total = started.elapsed().as_secs_f64().max(f64::MIN_POSITIVE);
    Ok(KMeansFit {
        centers,
        k,
        dim,
        inertia,
        iterations,
        init_share: init_secs / total,
    })
}

/// The group's row farthest from its centre (`d_own`: each local row's squared distance);
/// it is marked taken (distance 0) where it lies, so the next empty cluster takes another.
fn farthest(p: &mut Part<'_, '_>, d_own: &mut [f32]) -> Result<Vec<f32>> {
    let (dim, size) = (p.dim, p.group.size());
    let far = (0..p.rows).max_by(|&a, &b| d_own[a].total_cmp(&d_own[b]));
    let mut mine = vec![-1f32; dim + 1];
    if let Some(i) = far {
        mine[0] = d_own[i];
        mine[1..].copy_from_slice(p.row(i));
    }
    let all = p.gather(&mine, &vec![dim + 1; size])?;
    let winner = (0..size)
        .max_by(|&a, &b| {
            all[a * (dim + 1)]
                .total_cmp(&all[b * (dim + 1)])
                .then(b.cmp(&a))
        })
        .expect("a group has a rank");
    if winner == p.group.rank()
        && let Some(i) = far
    {
        d_own[i] = 0.0;
    }
    Ok(all[winner * (dim + 1) + 1..(winner + 1) * (dim + 1)].to_vec())
}

/// `rows × dim` points (row-major) around `centres` centres drawn uniformly in
/// `[-10, 10]^dim`, each point a centre (row `i` takes centre `i % centres`) plus noise
/// uniform in `[-spread, spread)` on each axis; the centres too. For tests and benchmarks.
pub fn blobs(
    rows: usize,
    dim: usize,
    centres: usize,
    spread: f32,
    seed: u64,
) -> (Vec<f32>, Vec<f32>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let truth: Vec<f32> = (0..centres * dim)
        .map(|_| rng.random_range(-10.0..10.0))
        .collect();
    let mut x = Vec::with_capacity(rows * dim);
    for i in 0..rows {
        let c = &truth[(i % centres) * dim..(i % centres + 1) * dim];
        x.extend(c.iter().map(|m| m + rng.random_range(-spread..spread)));
    }
    (x, truth)
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
        let (x, truth) = blobs(2000, 2, 4, 0.5, 3);
        let fit = fit(&x, 2000, 2, &KMeansConfig::new(4, 1)).unwrap();
        for c in truth.chunks(2) {
            let (_, d) = nearest(c, &fit.centers, 2);
            assert!(d < 0.01, "centre {c:?} not found: {:?}", fit.centers);
        }
        let sample: Vec<usize> = (0..400).collect();
        assert!(silhouette(&x, &sample, &fit) > 0.9);
    }
}
