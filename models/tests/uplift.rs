//! The uplift metrics against scikit-uplift's own figures on fixed vectors
//! (`fixtures/uplift_vectors.json`, written by `fixtures/uplift_vectors.py`): the Qini
//! coefficient, AUUC and uplift at 10 % and 30 % (both strategies) agree to 1e-9; the
//! bootstrap interval holds the point estimate. And uplift models with boosted-tree arms
//! (T- and X-learner) on a generated campaign whose effect is known.

mod common;

use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use common::floats;
use halyard_models::artifact::{Architecture, FORMAT, FORMAT_NUMERIC};
use halyard_models::gbdt::{GbdtConfig, Objective};
use halyard_models::logistic::TrainConfig;
use halyard_models::pipeline::{ResponseConfig, ResponseKind, train_uplift_model};
use halyard_models::runtime::Runtime;
use halyard_models::uplift::{TopK, bootstrap, qini_auc, uplift_at_k, uplift_auc};
use rand::{Rng, SeedableRng};
use serde_json::Value;

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

/// A randomised campaign: the treatment adds 25 points in region `a`, nothing in `b`, −5 in
/// `c`; age and region `c` drive the response itself; one age in 20 is missing. Also each
/// row's true effect.
fn campaign(rows: usize) -> (RecordBatch, Vec<f64>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let (mut ages, mut regions, mut treated, mut responded, mut effects) =
        (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..rows {
        let age = 20.0 + (rng.random::<f64>() * 50.0).floor();
        let region = ["a", "b", "c"][rng.random_range(0..3)];
        let t = f64::from(u8::from(rng.random_bool(0.5)));
        let base = 0.05 + 0.004 * (age - 20.0) + if region == "c" { 0.3 } else { 0.0 };
        let effect = match region {
            "a" => 0.25,
            "b" => 0.0,
            _ => -0.05,
        };
        responded.push(f64::from(u8::from(rng.random_bool(base + t * effect))));
        ages.push((!rng.random_bool(0.05)).then_some(age));
        regions.push(region);
        treated.push(t);
        effects.push(effect);
    }
    let batch = RecordBatch::try_from_iter([
        ("age", Arc::new(Float64Array::from(ages)) as ArrayRef),
        ("region", Arc::new(StringArray::from(regions))),
        ("treated", Arc::new(Float64Array::from(treated))),
        ("responded", Arc::new(Float64Array::from(responded))),
    ])
    .unwrap();
    (batch, effects)
}

#[test]
fn tree_arms_find_whom_the_campaign_changes() {
    let (batch, effects) = campaign(8000);
    let features = common::features("responded");
    let rc = ResponseConfig {
        kind: ResponseKind::Gbdt(GbdtConfig {
            num_leaves: 7,
            min_data_in_leaf: 50,
            early_stopping: 20,
            ..GbdtConfig::new(200, 0.05)
        }),
        train: TrainConfig {
            seed: 3,
            ..TrainConfig::default()
        },
        ensemble: 1,
        balance_classes: false,
    };
    // The true effects' Qini on the test rows (every fifth) bounds what a model reaches.
    let test: Vec<usize> = (0..batch.num_rows()).filter(|i| i % 5 == 4).collect();
    let column = |name: &str| -> Vec<f64> {
        let a = batch.column_by_name(name).unwrap();
        let a = a.as_any().downcast_ref::<Float64Array>().unwrap();
        test.iter().map(|&i| a.value(i)).collect()
    };
    let (y, t) = (column("responded"), column("treated"));
    let truth: Vec<f64> = test
        .iter()
        .map(|&i| effects[i] + i as f64 * 1e-12)
        .collect();
    let oracle = qini_auc(&y, &truth, &t).unwrap();
    for x_learner in [false, true] {
        let model = train_uplift_model(
            std::slice::from_ref(&batch),
            &features,
            "treated",
            x_learner,
            &rc,
            |_| ControlFlow::Continue(()),
        )
        .unwrap();
        let m = &model.metrics;
        let qini = m["test_qini"];
        assert!(
            qini > 0.6 * oracle,
            "x_learner {x_learner}: qini {qini}, true effects' {oracle}: {m:?}"
        );
        assert!(
            qini > m["test_response_ranking_qini"] + 0.3 * oracle,
            "{m:?}"
        );
        // (Missing ages stay missing for the trees and are imputed for the check's model.)
        assert!(m["treatment_auc"] < 0.6, "{m:?}");
        let Architecture::Uplift {
            treated,
            x_learner: x,
            ..
        } = &model.architecture
        else {
            panic!("not an uplift model");
        };
        let Architecture::Gbdt { trees, .. } = treated.as_ref() else {
            panic!("the treated arm is not trees: {}", treated.kind());
        };
        assert!(trees[0] > 0);
        let served = Runtime::new(model.architecture.clone(), &model.weights).unwrap();
        let pre = served.architecture.preprocessor().unwrap().clone();
        let encoded = pre
            .transform(std::slice::from_ref(&batch), |_| true)
            .unwrap();
        let uplift = served.score_encoded(&encoded).unwrap();
        let (arm_t, arm_c) = served.arms_encoded(&encoded).unwrap();
        match x {
            None => {
                assert_eq!(model.architecture.format(), FORMAT);
                for ((u, a), b) in uplift.iter().zip(&arm_t).zip(&arm_c) {
                    assert_eq!(*u, a - b);
                }
            }
            Some(x) => {
                // The effect trees fit numbers: squared error on the imputed effects.
                assert_eq!(x.treated.objective(), Some(Objective::L2));
                assert_eq!(model.architecture.format(), FORMAT_NUMERIC);
            }
        }
    }
}
