//! k-means against scikit-learn: on committed points (10 overlapping blobs of unequal
//! spread, `fixtures/kmeans_points.csv`) the final inertia for k = 4, 8, 10 and 16 is
//! within 1 % of scikit-learn's `KMeans` (k-means++, `n_init = 10`), whose figures
//! `fixtures/kmeans_reference.py` computed (`fixtures/kmeans_reference.json`).

//!
//! The data-parallel fit (a group of three threads, each holding every third point) meets
//! the same bound, and every rank ends with the same centres.

mod common;

use halyard_models::kmeans::{KMeansConfig, KMeansFit, fit, fit_group};

const DIM: usize = 6;

fn points() -> Vec<f32> {
    include_str!("fixtures/kmeans_points.csv")
        .lines()
        .flat_map(|l| l.split(',').map(|v| v.parse::<f32>().unwrap()))
        .collect()
}

fn reference(k: usize) -> f64 {
    let reference: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/kmeans_reference.json")).unwrap();
    reference["inertia"][k.to_string()].as_f64().unwrap()
}

/// Fit on `ranks` threads, rank `r` holding rows `r, r + ranks, …`; every rank's fit.
fn fit_in_group(x: &[f32], ranks: usize, k: usize) -> Vec<KMeansFit> {
    let handles: Vec<_> = common::group(ranks)
        .into_iter()
        .map(|mut g| {
            let mine: Vec<f32> = x
                .chunks(DIM)
                .skip(g.rank)
                .step_by(ranks)
                .flatten()
                .copied()
                .collect();
            std::thread::spawn(move || {
                fit_group(
                    &mine,
                    mine.len() / DIM,
                    DIM,
                    &KMeansConfig::new(k, 1),
                    &mut g,
                )
                .unwrap()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn the_data_parallel_fit_is_as_good_and_the_same_on_every_rank() {
    let x = points();
    for k in [4usize, 10] {
        let fits = fit_in_group(&x, 3, k);
        for f in &fits[1..] {
            assert_eq!(f.centers, fits[0].centers, "k = {k}: the ranks disagree");
            assert_eq!(f.inertia, fits[0].inertia);
        }
        let ratio = fits[0].inertia / reference(k);
        eprintln!(
            "k = {k}: three ranks {:.1} ({ratio:.4}× scikit-learn)",
            fits[0].inertia
        );
        assert!(
            ratio < 1.01,
            "k = {k}: inertia {} against scikit-learn's",
            fits[0].inertia
        );
    }
}

#[test]
fn the_inertia_is_within_one_percent_of_scikit_learns() {
    let x = points();
    let rows = x.len() / DIM;
    for k in [4usize, 8, 10, 16] {
        let want = reference(k);
        let got = fit(&x, rows, DIM, &KMeansConfig::new(k, 1)).unwrap();
        let ratio = got.inertia / want;
        eprintln!(
            "k = {k}: halyard {:.1}, scikit-learn {want:.1} ({ratio:.4}×), {} iterations",
            got.inertia, got.iterations
        );
        assert!(
            ratio < 1.01,
            "k = {k}: inertia {} against scikit-learn's {want}",
            got.inertia
        );
    }
}
