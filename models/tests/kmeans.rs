//! k-means against scikit-learn: on committed points (10 overlapping blobs of unequal
//! spread, `fixtures/kmeans_points.csv`) the final inertia for k = 4, 8, 10 and 16 is
//! within 1 % of scikit-learn's `KMeans` (k-means++, `n_init = 10`), whose figures
//! `fixtures/kmeans_reference.py` computed (`fixtures/kmeans_reference.json`).

use halyard_models::kmeans::{KMeansConfig, fit};

#[test]
fn the_inertia_is_within_one_percent_of_scikit_learns() {
    let text = include_str!("fixtures/kmeans_points.csv");
    let x: Vec<f32> = text
        .lines()
        .flat_map(|l| l.split(',').map(|v| v.parse::<f32>().unwrap()))
        .collect();
    let rows = text.lines().count();
    let reference: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/kmeans_reference.json")).unwrap();
    for k in [4usize, 8, 10, 16] {
        let want = reference["inertia"][k.to_string()].as_f64().unwrap();
        let got = fit(&x, rows, 6, &KMeansConfig::new(k, 1)).unwrap();
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
