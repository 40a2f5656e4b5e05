//! The curves of a version's report against scikit-learn on a committed fixture
//! (`fixtures/evaluation_reference.py` writes `fixtures/evaluation_reference.json`): ROC
//! (`roc_curve(drop_intermediate=False)`), precision–recall (`precision_recall_curve`) and
//! calibration (`calibration_curve`, ten uniform bins), on scores with and without ties.

use halyard_models::evaluation::{
    Evaluation, MAX_POINTS, calibration, pr_curve, response, roc_curve,
};
use serde_json::Value;

fn pairs(v: &Value) -> Vec<(f64, f64)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_f64().unwrap(), p[1].as_f64().unwrap()))
        .collect()
}

fn assert_close(got: &[(f64, f64)], want: &[(f64, f64)], what: &str) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: {} points, scikit-learn {}",
        got.len(),
        want.len()
    );
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g.0 - w.0).abs() < 1e-12 && (g.1 - w.1).abs() < 1e-12,
            "{what} point {k}: {g:?}, scikit-learn {w:?}"
        );
    }
}

#[test]
fn roc_precision_recall_and_calibration_match_scikit_learn() {
    let fixture: Value =
        serde_json::from_str(include_str!("fixtures/evaluation_reference.json")).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for (i, case) in cases.iter().enumerate() {
        let scores: Vec<f32> = case["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let labels: Vec<f32> = case["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_close(
            &roc_curve(&scores, &labels),
            &pairs(&case["roc"]),
            &format!("case {i} ROC"),
        );
        assert_close(
            &pr_curve(&scores, &labels),
            &pairs(&case["pr"]),
            &format!("case {i} PR"),
        );
        let bins: Vec<(f64, f64)> = calibration(&scores, &labels)
            .iter()
            .map(|b| (b.predicted, b.observed))
            .collect();
        assert_close(
            &bins,
            &pairs(&case["calibration"]),
            &format!("case {i} calibration"),
        );
        // What the registry keeps: the same curve, thinned to its ends and evenly spaced
        // points between, rounded to five decimals.
        let Evaluation::Response(r) = response(&scores, &labels) else {
            panic!("a response model's evaluation");
        };
        let full = roc_curve(&scores, &labels);
        assert!(r.roc.len() <= MAX_POINTS);
        assert_eq!((r.roc.first(), r.roc.last()), (full.first(), full.last()));
        let near = |p: &(f64, f64)| {
            full.iter()
                .any(|q| (p.0 - q.0).abs() <= 5e-6 && (p.1 - q.1).abs() <= 5e-6)
        };
        assert!(
            r.roc.iter().all(near),
            "case {i}: the stored curve keeps points of the curve, rounded"
        );
        assert_eq!(r.deciles.len(), 10);
        assert_eq!(
            r.deciles.iter().map(|d| d.rows).sum::<usize>(),
            labels.len()
        );
        assert_eq!(
            r.deciles.iter().map(|d| d.positives).sum::<usize>(),
            r.positives
        );
        assert!((r.deciles[9].gain - 1.0).abs() < 1e-12);
    }
}
