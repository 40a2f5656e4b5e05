//! The drift distances against scipy on committed fixtures
//! (`fixtures/drift_reference.py` writes `fixtures/drift_reference.json`).

mod common;

use common::floats;
use halyard_models::drift::{jensen_shannon, psi, wasserstein};
use serde_json::Value;

#[test]
fn wasserstein_jensen_shannon_and_psi_match_scipy() {
    let text = include_str!("fixtures/drift_reference.json");
    let fixture: Value = serde_json::from_str(text).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 4);
    for (i, case) in cases.iter().enumerate() {
        let points = floats(&case["points"]);
        let reference = floats(&case["reference"]);
        let current = floats(&case["current"]);
        let total: f64 = current.iter().sum();
        let shares: Vec<f64> = current.iter().map(|c| c / total).collect();
        let close = |got: f64, key: &str| {
            let want = case[key].as_f64().unwrap();
            assert!(
                (got - want).abs() <= 1e-9 * want.abs().max(1.0),
                "case {i} {key}: {got} against scipy's {want}"
            );
        };
        close(wasserstein(&points, &reference, &current), "wasserstein");
        close(jensen_shannon(&reference, &current), "jensen_shannon");
        close(psi(&reference, &shares), "psi");
    }
}
