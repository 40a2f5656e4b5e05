//! The uplift metrics against scikit-uplift's own figures on fixed vectors
//! (`fixtures/uplift_vectors.json`, written by `fixtures/uplift_vectors.py`): the Qini
//! coefficient, AUUC and uplift at 10 % and 30 % (both strategies) agree to 1e-9; the
//! bootstrap interval holds the point estimate.

use halyard_models::uplift::{TopK, bootstrap, qini_auc, uplift_at_k, uplift_auc};
use serde_json::Value;

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn close(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= 1e-9,
        "{what}: halyard {got}, scikit-uplift {want}"
    );
}

#[test]
fn the_metrics_agree_with_scikit_uplift_on_fixed_vectors() {
    let text = include_str!("fixtures/uplift_vectors.json");
    let doc: Value = serde_json::from_str(text).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 4);
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let (y, t, u) = (
            floats(&c["y"]),
            floats(&c["treatment"]),
            floats(&c["uplift"]),
        );
        close(
            qini_auc(&y, &u, &t).unwrap(),
            c["qini_auc"].as_f64().unwrap(),
            &format!("{name} qini"),
        );
        close(
            uplift_auc(&y, &u, &t).unwrap(),
            c["uplift_auc"].as_f64().unwrap(),
            &format!("{name} auuc"),
        );
        for k in [0.1, 0.3] {
            for (strategy, by_group) in [("overall", false), ("by_group", true)] {
                let key = format!("uplift_at_{k}_{strategy}");
                let got = uplift_at_k(&y, &u, &t, TopK::Fraction(k), by_group).unwrap();
                match c[&key].as_f64() {
                    Some(want) => close(got.unwrap(), want, &format!("{name} {key}")),
                    None => assert_eq!(got, None, "{name} {key}: scikit-uplift has no value"),
                }
            }
        }
    }
}

#[test]
fn the_bootstrap_interval_holds_the_estimate_and_bad_input_is_refused() {
    let text = include_str!("fixtures/uplift_vectors.json");
    let doc: Value = serde_json::from_str(text).unwrap();
    let c = &doc["cases"][0];
    let (y, t, u) = (
        floats(&c["y"]),
        floats(&c["treatment"]),
        floats(&c["uplift"]),
    );
    let point = qini_auc(&y, &u, &t).unwrap();
    let (lo, hi) = bootstrap(&y, &u, &t, 200, 0.95, 7, |y, u, t| {
        Ok(Some(qini_auc(y, u, t)?))
    })
    .unwrap();
    assert!(lo < point && point < hi, "{lo} < {point} < {hi}");
    assert!(
        hi - lo < 0.5,
        "an interval this wide says nothing: {lo}..{hi}"
    );
    let err = qini_auc(&[1.0, 0.0], &[0.1, 0.2], &[1.0, 2.0])
        .unwrap_err()
        .to_string();
    assert!(err.contains("must be 0 or 1"), "{err}");
    let err = qini_auc(&[1.0], &[0.1, 0.2], &[1.0])
        .unwrap_err()
        .to_string();
    assert!(err.contains("as many"), "{err}");
    let err = qini_auc(&[1.0, 0.0], &[0.1, 0.2], &[1.0, 1.0])
        .unwrap_err()
        .to_string();
    assert!(err.contains("treated and control"), "{err}");
}
