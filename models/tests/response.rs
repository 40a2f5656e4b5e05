//! Response-model training on data with known effects, and the artifact round trip.

mod common;

use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use common::loaded;
use halyard_models::ModelError;
use halyard_models::artifact::{Architecture, read_tensors};
use halyard_models::logistic::{Optimizer, TrainConfig};
use halyard_models::pipeline::{ResponseConfig, ResponseKind, TrainedModel, train_response_model};
use halyard_models::preprocess::{Encoding, FeatureConfig, Preprocessor};
use rand::{Rng, SeedableRng};

/// Rows whose response depends on `x` (positively) and `channel` (email > sms).
fn synthetic(rows: usize, seed: u64) -> RecordBatch {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut xs = Vec::new();
    let mut chans = Vec::new();
    let mut ys = Vec::new();
    for _ in 0..rows {
        let x: f64 = rng.random_range(-3.0..3.0) * 10.0 + 50.0;
        let chan = if rng.random_bool(0.5) { "email" } else { "sms" };
        let z = (x - 50.0) / 10.0 * 1.5 + if chan == "email" { 1.0 } else { -1.0 };
        let p = 1.0 / (1.0 + (-z).exp());
        xs.push(x);
        chans.push(chan);
        ys.push(if rng.random_bool(p) { "yes" } else { "no" });
    }
    RecordBatch::try_from_iter([
        ("x", Arc::new(Float64Array::from(xs)) as ArrayRef),
        ("channel", Arc::new(StringArray::from(chans))),
        ("responded", Arc::new(StringArray::from(ys))),
    ])
    .unwrap()
}

fn features(encoding: Encoding) -> FeatureConfig {
    FeatureConfig {
        encoding,
        ..common::features("responded")
    }
}

fn train_cfg() -> ResponseConfig {
    ResponseConfig {
        kind: ResponseKind::LogisticRegression,
        train: TrainConfig {
            epochs: 8,
            batch_size: 128,
            learning_rate: 0.05,
            optimizer: Optimizer::Adam,
            l2: 1e-4,
            seed: 7,
            ..TrainConfig::default()
        },
        ensemble: 1,
        balance_classes: false,
    }
}

/// Train without watching progress.
fn fit(
    batches: &[RecordBatch],
    features: &FeatureConfig,
    cfg: &ResponseConfig,
) -> halyard_models::Result<TrainedModel> {
    train_response_model(batches, features, cfg, |_| ControlFlow::Continue(()))
}

fn preprocessor(m: &TrainedModel) -> &Preprocessor {
    m.architecture.preprocessor().unwrap()
}

/// The logistic regression's weights, `[dim]`, from the artifact's tensors.
fn linear_weights(m: &TrainedModel) -> Vec<f32> {
    let t = read_tensors(&m.weights).unwrap();
    let (shape, bytes) = &t["members.0.linear.weight"];
    assert_eq!(
        shape,
        &vec![1, preprocessor(m).dim],
        "PyTorch layout [out, in]"
    );
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn learns_known_effects_and_reaches_the_bayes_auc() {
    let batch = synthetic(4000, 1);
    let mut epochs = Vec::new();
    let model = train_response_model(&[batch], &features(Encoding::OneHot), &train_cfg(), |r| {
        epochs.push(r.epoch.loss);
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(epochs.len(), 8);
    assert!(epochs[7] < epochs[0], "loss did not fall: {epochs:?}");
    let auc = model.metrics["test_auc"];
    // The generating model's own AUC on such data is about 0.87.
    assert!(auc > 0.82, "test auc {auc}");
    assert_eq!(model.test_rows, 800);
    // x's weight is positive, email's slot above sms's.
    let p = preprocessor(&model);
    let w = &linear_weights(&model);
    assert!(w[p.columns[0].offset] > 0.5, "weights {w:?}");
    let chan = &p.columns[1];
    let vocab = match &chan.encoding {
        halyard_models::preprocess::ColumnEncoding::OneHot { vocabulary } => vocabulary.clone(),
        other => panic!("{other:?}"),
    };
    let email = vocab.iter().position(|v| v == "email").unwrap();
    let sms = vocab.iter().position(|v| v == "sms").unwrap();
    assert!(
        w[chan.offset + email] > w[chan.offset + sms] + 0.5,
        "weights {w:?}"
    );
}

#[test]
fn hashed_encoding_trains_too() {
    let model = fit(
        &[synthetic(2000, 2)],
        &features(Encoding::Hashed),
        &train_cfg(),
    )
    .unwrap();
    assert_eq!(preprocessor(&model).dim, 1 + 16);
    assert!(model.metrics["test_auc"] > 0.8);
}

#[test]
fn artifact_scores_raw_records_like_the_trained_model() {
    let batch = synthetic(1000, 3);
    let model = fit(
        std::slice::from_ref(&batch),
        &features(Encoding::OneHot),
        &train_cfg(),
    )
    .unwrap();
    let loaded = loaded(&model, 1000);
    // Score without the label column, as a service would send it, and by hand from the
    // weights: sigmoid(w . x + b).
    let raw = batch.project(&[0, 1]).unwrap();
    let served = loaded.score(&[raw]).unwrap();
    let encoded = preprocessor(&model).transform(&[batch], |_| true).unwrap();
    let w = linear_weights(&model);
    let t = read_tensors(&model.weights).unwrap();
    let b = f32::from_le_bytes(t["members.0.linear.bias"].1[..4].try_into().unwrap());
    assert_eq!(served.len(), 1000);
    for (i, p) in served.iter().enumerate() {
        let z: f32 = encoded
            .row(i)
            .iter()
            .zip(&w)
            .map(|(a, b)| a * b)
            .sum::<f32>()
            + b;
        let by_hand = 1.0 / (1.0 + (-z).exp());
        assert!((p - by_hand).abs() < 1e-5, "row {i}: {p} vs {by_hand}");
    }
    assert!(matches!(
        loaded.manifest.architecture,
        Architecture::LogisticRegression { .. }
    ));
}

#[test]
fn one_class_label_is_refused() {
    let batch = synthetic(200, 4);
    let schema = batch.schema();
    let only_no = StringArray::from(vec!["no"; 200]);
    let batch = RecordBatch::try_new(
        schema,
        vec![
            batch.column(0).clone(),
            batch.column(1).clone(),
            Arc::new(only_no),
        ],
    )
    .unwrap();
    let err = fit(&[batch], &features(Encoding::OneHot), &train_cfg()).unwrap_err();
    assert!(
        matches!(err, ModelError::SingleClass { class: 0, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("single class"));
}

#[test]
fn missing_label_column_names_the_columns() {
    let mut f = features(Encoding::OneHot);
    f.label = "converted".into();
    let err = fit(&[synthetic(50, 5)], &f, &train_cfg()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("\"converted\"") && text.contains("x, channel, responded"),
        "{text}"
    );
}

#[test]
fn empty_data_is_refused() {
    let batch = synthetic(10, 6).slice(0, 0);
    let err = fit(&[batch], &features(Encoding::OneHot), &train_cfg()).unwrap_err();
    assert!(matches!(err, ModelError::NoRows { .. }), "{err}");
}

#[test]
fn cancellation_stops_training() {
    let err = train_response_model(
        &[synthetic(500, 8)],
        &features(Encoding::OneHot),
        &train_cfg(),
        |r| {
            if r.epoch.epoch == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        },
    )
    .unwrap_err();
    assert!(matches!(err, ModelError::Cancelled));
}

fn mlp_cfg() -> ResponseConfig {
    ResponseConfig {
        kind: ResponseKind::Mlp {
            hidden: vec![32, 16],
            max_embedding: 4,
        },
        train: TrainConfig {
            epochs: 12,
            batch_size: 128,
            learning_rate: 0.01,
            patience: 2,
            seed: 3,
            ..TrainConfig::default()
        },
        ensemble: 2,
        balance_classes: false,
    }
}

#[test]
fn mlp_ensemble_learns_known_effects_and_stops_early() {
    let mut reports = Vec::new();
    let model = train_response_model(
        &[synthetic(4000, 11)],
        &features(Encoding::OneHot),
        &mlp_cfg(),
        |r| {
            reports.push(r);
            ControlFlow::Continue(())
        },
    )
    .unwrap();
    let auc = model.metrics["test_auc"];
    assert!(auc > 0.82, "test auc {auc}");
    // Both members trained, each reporting a validation loss.
    assert!(reports.iter().any(|r| r.member == 1));
    assert!(reports.iter().all(|r| r.epoch.valid_loss.is_some()));
    for key in ["test_ece", "test_top_decile_lift", "test_top_decile_rate"] {
        assert!(
            model.metrics.contains_key(key),
            "{key} missing: {:?}",
            model.metrics
        );
    }
    // Top decile responds well above the base rate on data this separable.
    assert!(model.metrics["test_top_decile_lift"] > 1.5);
    let t = read_tensors(&model.weights).unwrap();
    assert!(
        t.contains_key("members.1.embeddings.0.weight"),
        "{:?}",
        t.keys()
    );
    assert_eq!(
        t["members.0.hidden.0.weight"].0[0], 32,
        "PyTorch layout [out, in]"
    );
}

#[test]
fn balanced_class_weights_raise_predicted_rates() {
    // Rare responders: only the high-x ones of the synthetic rows.
    let batch = synthetic(3000, 12);
    let x = batch
        .column(0)
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap();
    let y = batch
        .column(2)
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    let rare: StringArray = (0..batch.num_rows())
        .map(|i| {
            Some(if y.value(i) == "yes" && x.value(i) > 60.0 {
                "yes"
            } else {
                "no"
            })
        })
        .collect();
    let batch = RecordBatch::try_new(
        batch.schema(),
        vec![
            batch.column(0).clone(),
            batch.column(1).clone(),
            Arc::new(rare),
        ],
    )
    .unwrap();
    let plain = fit(
        std::slice::from_ref(&batch),
        &features(Encoding::OneHot),
        &train_cfg(),
    )
    .unwrap();
    let mut cfg = train_cfg();
    cfg.balance_classes = true;
    let weighted = fit(&[batch], &features(Encoding::OneHot), &cfg).unwrap();
    // Weighting positives up moves the mean prediction towards 0.5 and hurts calibration.
    assert!(
        weighted.metrics["test_ece"] > plain.metrics["test_ece"],
        "{:?} vs {:?}",
        weighted.metrics,
        plain.metrics
    );
}

#[test]
fn scoring_handles_unseen_categories_and_non_finite_numbers() {
    let model = fit(
        &[synthetic(1000, 13)],
        &features(Encoding::OneHot),
        &mlp_cfg(),
    )
    .unwrap();
    let runtime =
        halyard_models::runtime::Runtime::new(model.architecture.clone(), &model.weights).unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("x", DataType::Float64, true),
        Field::new("channel", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Float64Array::from(vec![
                Some(f64::NAN),
                Some(f64::INFINITY),
                None,
                Some(55.0),
            ])),
            Arc::new(StringArray::from(vec![
                Some("email"),
                Some("carrier pigeon"),
                None,
                Some("sms"),
            ])),
        ],
    )
    .unwrap();
    let p = runtime.score(std::slice::from_ref(&batch)).unwrap();
    assert_eq!(p.len(), 4);
    assert!(
        p.iter().all(|v| v.is_finite() && (0.0..=1.0).contains(v)),
        "{p:?}"
    );
    // A missing column is refused with the columns the data has.
    let err = runtime.score(&[batch.project(&[0]).unwrap()]).unwrap_err();
    assert!(err.to_string().contains("\"channel\""), "{err}");
}

#[test]
fn crossed_categoricals_learn_an_interaction_a_linear_model_cannot() {
    // Response depends on a XOR b: no main effect, all interaction.
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    let (mut a, mut b, mut y) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3000 {
        let pa = rng.random_bool(0.5);
        let pb = rng.random_bool(0.5);
        a.push(if pa { "p" } else { "q" });
        b.push(if pb { "u" } else { "v" });
        y.push(if rng.random_bool(if pa ^ pb { 0.8 } else { 0.2 }) {
            "yes"
        } else {
            "no"
        });
    }
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("a", DataType::Utf8, true),
            Field::new("b", DataType::Utf8, true),
            Field::new("responded", DataType::Utf8, true),
        ])),
        vec![
            Arc::new(StringArray::from(a)),
            Arc::new(StringArray::from(b)),
            Arc::new(StringArray::from(y)),
        ],
    )
    .unwrap();
    let plain = fit(
        std::slice::from_ref(&batch),
        &features(Encoding::OneHot),
        &train_cfg(),
    )
    .unwrap();
    let mut f = features(Encoding::OneHot);
    f.crosses = vec![vec!["a".into(), "b".into()]];
    let crossed = fit(std::slice::from_ref(&batch), &f, &train_cfg()).unwrap();
    assert!(plain.metrics["test_auc"] < 0.6, "{:?}", plain.metrics);
    assert!(crossed.metrics["test_auc"] > 0.75, "{:?}", crossed.metrics);
    let cross = preprocessor(&crossed)
        .columns
        .iter()
        .find(|c| !c.sources.is_empty())
        .unwrap();
    assert_eq!(cross.name, "a|b");
    // Scoring raw records rebuilds the cross from its sources.
    let rt = halyard_models::runtime::Runtime::new(crossed.architecture.clone(), &crossed.weights)
        .unwrap();
    let p = rt.score(&[batch.project(&[0, 1]).unwrap()]).unwrap();
    assert_eq!(p.len(), 3000);
    let err = rt.score(&[batch.project(&[0]).unwrap()]).unwrap_err();
    assert!(err.to_string().contains("\"b\""), "{err}");
}

/// Gradient-boosted trees with the defaults of a job spec, at most `trees` rounds.
fn gbdt_cfg(trees: usize) -> ResponseConfig {
    ResponseConfig {
        kind: ResponseKind::Gbdt(halyard_models::gbdt::GbdtConfig {
            num_leaves: 15,
            early_stopping: 20,
            ..halyard_models::gbdt::GbdtConfig::new(trees, 0.1)
        }),
        train: TrainConfig {
            seed: 7,
            ..TrainConfig::default()
        },
        ensemble: 1,
        balance_classes: false,
    }
}

#[test]
fn boosted_trees_learn_the_effects_and_serve_the_training_scores_bit_for_bit() {
    let batch = synthetic(4000, 1);
    let mut rounds = Vec::new();
    let model = train_response_model(
        std::slice::from_ref(&batch),
        &features(Encoding::OneHot),
        &gbdt_cfg(300),
        |r| {
            rounds.push(r.epoch.epoch);
            ControlFlow::Continue(())
        },
    )
    .unwrap();
    // The generating model's AUC on such data is about 0.87 (the logistic regression's test
    // above): the trees come within 0.03 with only thresholds to draw it.
    let trees_auc = model.metrics["test_auc"];
    let logistic = fit(
        std::slice::from_ref(&batch),
        &features(Encoding::OneHot),
        &train_cfg(),
    )
    .unwrap();
    assert!(
        trees_auc > logistic.metrics["test_auc"] - 0.03,
        "trees {trees_auc}, logistic {}",
        logistic.metrics["test_auc"]
    );
    let Architecture::Gbdt {
        trees, importance, ..
    } = &model.architecture
    else {
        panic!("not a tree model: {:?}", model.architecture.kind());
    };
    // Early stopping kept fewer trees than it grew, and progress came every ten trees.
    assert!(
        trees[0] < *rounds.last().unwrap() as usize,
        "{trees:?} {rounds:?}"
    );
    assert_eq!(rounds[0], 10);
    assert!(importance["x"].gain > importance["channel"].gain && importance["channel"].splits > 0);
    // Served through the artifact (manifest JSON and weights): the test metrics' scores.
    let loaded = loaded(&model, 4000);
    let raw = batch.project(&[0, 1]).unwrap();
    let served = loaded.score(&[raw]).unwrap();
    let test_rows: Vec<usize> = (0..4000).filter(|i| i % 5 == 4).collect();
    let labels: Vec<f32> = {
        let y = batch
            .column(2)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        test_rows
            .iter()
            .map(|&i| f32::from(u8::from(y.value(i) == "yes")))
            .collect()
    };
    let test_scores: Vec<f32> = test_rows.iter().map(|&i| served[i]).collect();
    let served_auc = halyard_models::metrics::auc(&test_scores, &labels).unwrap();
    assert_eq!(
        served_auc, trees_auc,
        "served scores differ from the training-time ones"
    );
}

#[test]
fn a_blend_weighs_its_mlp_and_trees_on_the_validation_rows_and_serves_what_it_measured() {
    let batch = synthetic(4000, 5);
    let ResponseKind::Gbdt(trees) = gbdt_cfg(200).kind else {
        unreachable!("gbdt_cfg makes trees")
    };
    let cfg = ResponseConfig {
        kind: ResponseKind::Blend {
            hidden: vec![16],
            max_embedding: 4,
            trees,
        },
        train: TrainConfig {
            epochs: 6,
            batch_size: 128,
            learning_rate: 0.01,
            patience: 3,
            seed: 7,
            ..TrainConfig::default()
        },
        ensemble: 2,
        balance_classes: false,
    };
    let mut parts = Vec::new();
    let model = train_response_model(
        std::slice::from_ref(&batch),
        &features(Encoding::OneHot),
        &cfg,
        |r| {
            parts.push((r.model, r.member, r.members));
            ControlFlow::Continue(())
        },
    )
    .unwrap();
    // Progress names the parts: two MLP members, then the trees as the third.
    assert_eq!(parts.first(), Some(&(Some("mlp part"), 0, 3)));
    assert_eq!(parts.last(), Some(&(Some("trees part"), 2, 3)));
    let Architecture::Blend { parts } = &model.architecture else {
        panic!("not a blend: {:?}", model.architecture.kind());
    };
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0].architecture.kind(), "mlp");
    assert_eq!(parts[1].architecture.kind(), "gbdt");
    let w = model.metrics["blend_trees_weight"];
    assert_eq!(parts[1].weight, w);
    assert!((parts[0].weight + w - 1.0).abs() < 1e-12 && (0.0..=1.0).contains(&w));
    assert!(model.metrics["test_auc"] > 0.8, "{:?}", model.metrics);
    // Loaded from its weights file, the blend gives the test AUC it recorded.
    let runtime =
        halyard_models::runtime::Runtime::new(model.architecture.clone(), &model.weights).unwrap();
    let raw = batch.project(&[0, 1]).unwrap();
    let served = runtime.score(&[raw]).unwrap();
    let test_rows: Vec<usize> = (0..4000).filter(|i| i % 5 == 4).collect();
    let y = batch
        .column(2)
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    let labels: Vec<f32> = test_rows
        .iter()
        .map(|&i| f32::from(u8::from(y.value(i) == "yes")))
        .collect();
    let scores: Vec<f32> = test_rows.iter().map(|&i| served[i]).collect();
    assert_eq!(
        halyard_models::metrics::auc(&scores, &labels).unwrap(),
        model.metrics["test_auc"]
    );
}

#[test]
fn boosted_trees_train_on_constant_missing_many_valued_and_non_finite_columns() {
    let base = synthetic(3000, 9);
    let rows = base.num_rows();
    let column = |f: &dyn Fn(usize) -> Option<f64>| -> ArrayRef {
        Arc::new(Float64Array::from((0..rows).map(f).collect::<Vec<_>>()))
    };
    let batch = RecordBatch::try_from_iter([
        ("x", base.column(0).clone()),
        ("channel", base.column(1).clone()),
        ("constant", column(&|_| Some(5.0))),
        ("all_missing", column(&|_| None)),
        // NaN and infinities every seventh row: missing, sent to the better side of a split.
        (
            "noisy",
            column(&|i| {
                Some(match i % 7 {
                    0 => f64::NAN,
                    1 => f64::INFINITY,
                    2 => f64::NEG_INFINITY,
                    _ => (i % 13) as f64,
                })
            }),
        ),
        // 3,000 distinct values: the most frequent `max_categories` are kept.
        (
            "customer",
            Arc::new(StringArray::from(
                (0..rows).map(|i| format!("c{i}")).collect::<Vec<_>>(),
            )) as ArrayRef,
        ),
        ("responded", base.column(2).clone()),
    ])
    .unwrap();
    let model = fit(
        std::slice::from_ref(&batch),
        &features(Encoding::OneHot),
        &gbdt_cfg(100),
    )
    .unwrap();
    let Architecture::Gbdt { importance, .. } = &model.architecture else {
        panic!("not a tree model");
    };
    // Columns without information earn no split; x carries the signal.
    for useless in ["constant", "all_missing"] {
        assert_eq!(importance[useless].splits, 0, "{useless}: {importance:?}");
    }
    assert!(
        importance["x"].gain > importance["noisy"].gain,
        "{importance:?}"
    );
    assert!(model.metrics["test_auc"] > 0.8, "{:?}", model.metrics);
    // Served: customers in the `other` slot and non-finite numbers still get a probability.
    let scores = loaded(&model, rows).score(&[batch.slice(0, 7)]).unwrap();
    assert!(
        scores
            .iter()
            .all(|p| p.is_finite() && (0.0..=1.0).contains(p)),
        "{scores:?}"
    );
}
