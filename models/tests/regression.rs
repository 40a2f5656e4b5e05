//! Boosted trees fitting numbers (objectives `l2`, `l1`, `poisson`) against LightGBM 4, and
//! the regression metrics against scikit-learn, on a committed fixture
//! (`fixtures/regression_reference.py` writes `fixtures/regression_rows.csv` and
//! `fixtures/regression_reference.json`: 3,000 generated rows, LightGBM's predictions on the
//! test rows with the same trees, and scikit-learn's metrics of those predictions).

mod common;

use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use common::floats;
use halyard_models::ModelError;
use halyard_models::artifact::{Architecture, FORMAT_NUMERIC, Manifest};
use halyard_models::evaluation::Evaluation;
use halyard_models::gbdt::{GbdtConfig, Objective};
use halyard_models::logistic::TrainConfig;
use halyard_models::metrics::regression;
use halyard_models::pipeline::{ResponseConfig, ResponseKind, TrainedModel, train_response_model};
use halyard_models::preprocess::FeatureConfig;
use halyard_models::runtime::LoadedModel;
use serde_json::Value;

const LABELS: [&str; 3] = ["y_num", "y_heavy", "y_count"];

fn reference() -> Value {
    serde_json::from_str(include_str!("fixtures/regression_reference.json")).unwrap()
}

/// The fixture's rows (x3 blank where missing).
fn rows() -> RecordBatch {
    let text = include_str!("fixtures/regression_rows.csv");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(
        header,
        ["x1", "x2", "x3", "c", "y_num", "y_heavy", "y_count"]
    );
    let mut numbers: Vec<Vec<Option<f64>>> = vec![Vec::new(); 6];
    let mut c = Vec::new();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        for (k, column) in [0, 1, 2, 4, 5, 6].into_iter().enumerate() {
            numbers[k].push(f[column].parse().ok());
        }
        c.push(f[3].to_string());
    }
    let number = |k: usize| Arc::new(Float64Array::from(numbers[k].clone())) as ArrayRef;
    RecordBatch::try_from_iter([
        ("x1", number(0)),
        ("x2", number(1)),
        ("x3", number(2)),
        ("c", Arc::new(StringArray::from(c)) as ArrayRef),
        ("y_num", number(3)),
        ("y_heavy", number(4)),
        ("y_count", number(5)),
    ])
    .unwrap()
}

/// `label` as the label, the other labels left out; every fifth row a test row.
fn features(label: &str) -> FeatureConfig {
    FeatureConfig {
        exclude: LABELS
            .iter()
            .filter(|l| **l != label)
            .map(|l| l.to_string())
            .collect(),
        ..common::features(label)
    }
}

/// The fixture's LightGBM settings: 100 trees of 15 leaves at 0.1, no early stopping.
fn trees(objective: Objective) -> ResponseConfig {
    ResponseConfig {
        kind: ResponseKind::Gbdt(GbdtConfig {
            objective,
            num_leaves: 15,
            early_stopping: 0,
            ..GbdtConfig::new(100, 0.1)
        }),
        train: TrainConfig {
            seed: 7,
            ..TrainConfig::default()
        },
        ensemble: 1,
        balance_classes: false,
    }
}

fn train(
    label: &str,
    objective: Objective,
    batch: &RecordBatch,
) -> halyard_models::Result<TrainedModel> {
    train_response_model(
        std::slice::from_ref(batch),
        &features(label),
        &trees(objective),
        |_| ControlFlow::Continue(()),
    )
}

#[test]
fn regression_metrics_match_scikit_learn() {
    let reference = reference();
    for (name, case) in reference["cases"].as_object().unwrap() {
        let p: Vec<f32> = floats(&case["predictions"])
            .iter()
            .map(|&v| v as f32)
            .collect();
        let y: Vec<f32> = floats(&case["labels"]).iter().map(|&v| v as f32).collect();
        let got = regression("test_", &p, &y, name == "poisson");
        let want = case["metrics"].as_object().unwrap();
        assert_eq!(got["test_rows"], y.len() as f64);
        for (metric, w) in want {
            let w = w.as_f64().unwrap();
            let g = got[&format!("test_{metric}")];
            // (The labels travel as f32 here, as in training: 4-digit decimals lose ~1e-7.)
            assert!(
                (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                "{name} {metric}: {g}, scikit-learn {w}"
            );
        }
    }
}

#[test]
fn trees_fit_numbers_and_counts_as_well_as_lightgbm() {
    let reference = reference();
    let batch = rows();
    for (objective, name, metric) in [
        (Objective::L2, "l2", "rmse"),
        (Objective::L1, "l1", "mae"),
        (Objective::Poisson, "poisson", "poisson_deviance"),
    ] {
        let case = &reference["cases"][name];
        let label = case["label"].as_str().unwrap();
        let model = train(label, objective, &batch).unwrap();
        let ours = model.metrics[&format!("test_{metric}")];
        let lightgbm = case["metrics"][metric].as_f64().unwrap();
        eprintln!("{name}: test {metric} {ours:.5}, LightGBM {lightgbm:.5}");
        // Same trees, leaves and rate; the bins and the L1 leaves' median differ in detail.
        assert!(
            ours <= lightgbm * 1.05,
            "{name}: test {metric} {ours}, LightGBM {} {lightgbm}",
            reference["lightgbm"]
        );
        assert!(!model.metrics.contains_key("test_auc"), "{name}");
        // The report's curves: predictions against the truth, ten deciles rising with them.
        let Some(Evaluation::Regression(curves)) = &model.evaluation else {
            panic!("{name}: no regression curves");
        };
        assert_eq!(curves.rows, model.test_rows);
        assert_eq!(curves.deciles.len(), 10);
        assert!(curves.deciles.windows(2).all(|w| w[0].0 <= w[1].0));
        assert!(
            curves.deciles[9].1 > curves.deciles[0].1,
            "{:?}",
            curves.deciles
        );
        let Architecture::Gbdt { objective: o, .. } = &model.architecture else {
            panic!("not trees");
        };
        assert_eq!(*o, objective);
        assert_eq!(model.architecture.format(), FORMAT_NUMERIC);
        // Served as trained: the artifact's scores are the metrics' scores.
        let loaded = common::loaded(&model, batch.num_rows());
        let scores = loaded.score(std::slice::from_ref(&batch)).unwrap();
        let test: Vec<f32> = scores.iter().skip(4).step_by(5).copied().collect();
        let labels: Vec<f32> = floats(&case["labels"]).iter().map(|&v| v as f32).collect();
        let served = regression("test_", &test, &labels, objective == Objective::Poisson);
        assert_eq!(served[&format!("test_{metric}")], ours, "{name}");
        if objective == Objective::Poisson {
            assert!(
                scores.iter().all(|&s| s > 0.0),
                "a count's mean is positive"
            );
        }
        // An older reader's format is refused with the reason.
        let json = common::manifest_json(&model, batch.num_rows());
        let mut old: Manifest = serde_json::from_slice(&json).unwrap();
        old.format = halyard_models::artifact::FORMAT.into();
        let err = LoadedModel::from_bytes(&model.weights, &serde_json::to_vec(&old).unwrap())
            .err()
            .unwrap();
        assert!(err.to_string().contains(FORMAT_NUMERIC), "{err}");
    }
}

#[test]
fn absolute_error_resists_outliers_that_squared_error_chases() {
    // y_heavy's noise has heavy tails: the L1 trees' medians beat the L2 trees' means on
    // absolute error, and L2 beats L1 on squared error where the noise is normal.
    let batch = rows();
    let l1 = train("y_heavy", Objective::L1, &batch).unwrap();
    let l2 = train("y_heavy", Objective::L2, &batch).unwrap();
    assert!(
        l1.metrics["test_mae"] < l2.metrics["test_mae"] * 0.95,
        "l1 {} l2 {}",
        l1.metrics["test_mae"],
        l2.metrics["test_mae"]
    );
    let l1 = train("y_num", Objective::L1, &batch).unwrap();
    let l2 = train("y_num", Objective::L2, &batch).unwrap();
    assert!(
        l2.metrics["test_rmse"] < l1.metrics["test_rmse"],
        "l2 {} l1 {}",
        l2.metrics["test_rmse"],
        l1.metrics["test_rmse"]
    );
    // The same seed, the same trees.
    let again = train("y_num", Objective::L1, &batch).unwrap();
    assert_eq!(again.weights, l1.weights);
}

#[test]
fn labels_a_numeric_objective_cannot_fit_are_refused_with_the_row() {
    let batch = rows();
    // A count cannot be negative.
    let err = train("y_num", Objective::Poisson, &batch).unwrap_err();
    assert!(err.to_string().contains("negative label"), "{err}");
    // A missing label names its row.
    let mut y: Vec<Option<f64>> = (0..batch.num_rows()).map(|i| Some(i as f64)).collect();
    y[41] = None;
    let holed = with_label(&batch, Arc::new(Float64Array::from(y)));
    let err = train("y_num", Objective::L2, &holed).unwrap_err();
    assert!(
        matches!(&err, ModelError::BadNumericLabel { row: 42, .. }),
        "{err}"
    );
    // A word is not a number.
    let mut words: Vec<String> = (0..batch.num_rows()).map(|i| i.to_string()).collect();
    words[7] = "lots".into();
    let worded = with_label(&batch, Arc::new(StringArray::from(words)));
    let err = train("y_num", Objective::L1, &worded).unwrap_err();
    assert!(err.to_string().contains("\"lots\""), "{err}");
    // Numbers given as text are read.
    let texts: Vec<String> = (0..batch.num_rows()).map(|i| (i % 7).to_string()).collect();
    let texted = with_label(&batch, Arc::new(StringArray::from(texts)));
    train("y_num", Objective::Poisson, &texted).unwrap();
    // A blend averages probabilities: it cannot fit numbers.
    let mut blend = trees(Objective::L2);
    let ResponseKind::Gbdt(cfg) = blend.kind.clone() else {
        unreachable!()
    };
    blend.kind = ResponseKind::Blend {
        hidden: vec![8],
        max_embedding: 4,
        trees: cfg,
    };
    let err = train_response_model(
        std::slice::from_ref(&batch),
        &features("y_num"),
        &blend,
        |_| ControlFlow::Continue(()),
    )
    .unwrap_err();
    assert!(err.to_string().contains("blend"), "{err}");
}

/// `batch` with `y_num` replaced by `label`.
fn with_label(batch: &RecordBatch, label: ArrayRef) -> RecordBatch {
    let mut columns = batch.columns().to_vec();
    let at = batch.schema().index_of("y_num").unwrap();
    columns[at] = label;
    let fields: Vec<_> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| {
            if f.name() == "y_num" {
                Arc::new(arrow::datatypes::Field::new(
                    "y_num",
                    columns[at].data_type().clone(),
                    true,
                ))
            } else {
                f.clone()
            }
        })
        .collect();
    RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), columns).unwrap()
}
