//! `halyard bench kmeans`: k-means on generated points (`rows × dim` around `k` blob
//! centres), fitted data-parallel by `ranks` in-process ranks that sum their partial sums
//! through the real ring on loopback gRPC (the path a k-means job's workers take), against
//! the same fit in one process, alternating, in the same invocation.
//!
//! Reported for each: the median total time and time per Lloyd iteration, the share spent
//! initialising (k-means||), Lloyd's iterations and the inertia; and the group's speed-up
//! per iteration (the two draw differently, so their iteration counts differ).

use std::sync::Arc;
use std::time::{Duration, Instant};

use halyard_collective::BlockingRing;
use halyard_models::kmeans::{KMeansConfig, KMeansFit, blobs, fit, fit_group};

use crate::allreduce_bench::loopback_ring;
use crate::bench::median_of;
use crate::{CliError, Result};

/// One fit's figures.
#[derive(Debug, Clone)]
struct Timed {
    took: Duration,
    fit: KMeansFit,
}

/// What the benchmark measures.
#[derive(Debug, Clone, Copy)]
pub struct KMeansBench {
    /// Points.
    pub rows: usize,
    /// Coordinates per point.
    pub dim: usize,
    /// Clusters (and the generated blobs).
    pub k: usize,
    /// Half-width of the uniform noise around each blob's centre (centres lie in
    /// `[-10, 10]` on each axis).
    pub spread: f32,
    /// Ranks of the data-parallel group.
    pub ranks: usize,
    /// Fits of each (medians are reported).
    pub runs: usize,
}

fn failed(e: impl std::fmt::Display) -> CliError {
    CliError::Failed(format!("k-means bench: {e}"))
}

/// One k-means run per fit (the job's default is the best of 10, as scikit-learn's
/// `n_init`; a benchmark of the algorithm's speed times one).
fn config(k: usize) -> KMeansConfig {
    KMeansConfig {
        runs: 1,
        ..KMeansConfig::new(k, 7)
    }
}

/// Fit on `ranks` ranks of a loopback ring, rank `r` holding the `r`-th contiguous part of
/// the rows; rank 0's fit and the wall time.
async fn in_group(x: &Arc<Vec<f32>>, b: &KMeansBench) -> Result<Timed> {
    let (rings, stop) = loopback_ring(b.ranks, "bench-kmeans/1", None).await?;
    let rows_per = b.rows.div_ceil(b.ranks);
    let started = Instant::now();
    let handles: Vec<_> = rings
        .into_iter()
        .map(|ring| {
            let (x, b) = (x.clone(), *b);
            let runtime = tokio::runtime::Handle::current();
            std::thread::spawn(move || {
                let r = ring.rank();
                let (lo, hi) = ((r * rows_per).min(b.rows), ((r + 1) * rows_per).min(b.rows));
                let mut group = BlockingRing::new(ring, runtime);
                fit_group(
                    &x[lo * b.dim..hi * b.dim],
                    hi - lo,
                    b.dim,
                    &config(b.k),
                    &mut group,
                )
            })
        })
        .collect();
    let mut fits = Vec::new();
    for h in handles {
        let joined = tokio::task::spawn_blocking(move || h.join())
            .await
            .map_err(failed)?
            .map_err(|_| failed("a rank panicked"))?;
        fits.push(joined.map_err(failed)?);
    }
    let took = started.elapsed();
    let _ = stop.send(true);
    if fits.iter().any(|f| f.centers != fits[0].centers) {
        return Err(failed("the ranks ended with different centres"));
    }
    Ok(Timed {
        took,
        fit: fits.swap_remove(0),
    })
}

/// Fit in this process alone.
async fn alone(x: &Arc<Vec<f32>>, b: &KMeansBench) -> Result<Timed> {
    let (x, b) = (x.clone(), *b);
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let fit = fit(&x, b.rows, b.dim, &config(b.k)).map_err(failed)?;
        Ok(Timed {
            took: started.elapsed(),
            fit,
        })
    })
    .await
    .map_err(failed)?
}

/// Run the benchmark; the report to print.
pub async fn run(b: KMeansBench) -> Result<String> {
    let generated = Instant::now();
    let (x, _) = tokio::task::spawn_blocking(move || blobs(b.rows, b.dim, b.k, b.spread, 11))
        .await
        .map_err(failed)?;
    let x = Arc::new(x);
    let generated = generated.elapsed();
    let (mut group, mut single) = (Vec::new(), Vec::new());
    for _ in 0..b.runs.max(1) {
        group.push(in_group(&x, &b).await?);
        single.push(alone(&x, &b).await?);
    }
    // The group's and the single process's random draws differ (each rank samples its
    // own rows), so their iteration counts do too: the time per Lloyd iteration compares
    // them like for like.
    let per_iteration = |runs: &[Timed]| {
        median_of(
            runs.iter()
                .map(|t| {
                    t.took
                        .mul_f64((1.0 - t.fit.init_share) / t.fit.iterations as f64)
                })
                .collect(),
        )
    };
    let line = |what: &str, runs: &[Timed]| {
        let median = median_of(runs.iter().map(|t| t.took).collect());
        let f = &runs[0].fit;
        format!(
            "  {what}: median {:.2} s, {:.3} s per Lloyd iteration; first fit: {} Lloyd iterations, {:.1} % initialising (k-means||), inertia {:.6e}",
            median.as_secs_f64(),
            per_iteration(runs).as_secs_f64(),
            f.iterations,
            100.0 * f.init_share,
            f.inertia
        )
    };
    let ratio = per_iteration(&single).as_secs_f64() / per_iteration(&group).as_secs_f64();
    Ok(format!(
        "k-means on {} points x {} around {} blobs (noise ±{} per axis; generated in {:.1} s), k = {}, one run per fit, {} fit(s) of each alternating\n{}\n{}\n  per Lloyd iteration the group is {ratio:.2}x as fast as one process",
        b.rows,
        b.dim,
        b.k,
        b.spread,
        generated.as_secs_f64(),
        b.k,
        b.runs.max(1),
        line(
            &format!("{} ranks, partial sums over the loopback ring", b.ranks),
            &group
        ),
        line("one process", &single),
    ))
}
