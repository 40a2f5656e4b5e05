//! Response-model training on data with known effects, and the artifact round trip.

use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::array::{Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use halyard_models::ModelError;
use halyard_models::artifact::{LoadedModel, linear_to_safetensors};
use halyard_models::features::{Encoding, FeatureConfig};
use halyard_models::logistic::{Optimizer, TrainConfig};
use halyard_models::pipeline::train_response_model;
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
    let schema = Arc::new(Schema::new(vec![
        Field::new("x", DataType::Float64, true),
        Field::new("channel", DataType::Utf8, true),
        Field::new("responded", DataType::Utf8, true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Float64Array::from(xs)),
            Arc::new(StringArray::from(chans)),
            Arc::new(StringArray::from(ys)),
        ],
    )
    .unwrap()
}

fn features(encoding: Encoding) -> FeatureConfig {
    FeatureConfig {
        label: "responded".into(),
        positive: None,
        exclude: vec![],
        categorical: vec![],
        encoding,
        max_categories: 10,
        hash_buckets: 16,
        holdout_every: 5,
    }
}

fn train_cfg() -> TrainConfig {
    TrainConfig {
        epochs: 8,
        batch_size: 128,
        learning_rate: 0.05,
        optimizer: Optimizer::Adam,
        l2: 1e-4,
        seed: 7,
    }
}

#[test]
fn learns_known_effects_and_reaches_the_bayes_auc() {
    let batch = synthetic(4000, 1);
    let mut epochs = Vec::new();
    let model = train_response_model(&[batch], &features(Encoding::OneHot), &train_cfg(), |r| {
        epochs.push(r.loss);
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
    let p = &model.preprocessor;
    let w = &model.scorer.weight;
    assert!(w[p.columns[0].offset] > 0.5, "weights {w:?}");
    let chan = &p.columns[1];
    let vocab = match &chan.encoding {
        halyard_models::features::ColumnEncoding::OneHot { vocabulary } => vocabulary.clone(),
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
    let model = train_response_model(
        &[synthetic(2000, 2)],
        &features(Encoding::Hashed),
        &train_cfg(),
        |_| ControlFlow::Continue(()),
    )
    .unwrap();
    assert_eq!(model.preprocessor.dim, 1 + 16);
    assert!(model.metrics["test_auc"] > 0.8);
}

#[test]
fn artifact_scores_raw_records_like_the_trained_model() {
    let batch = synthetic(1000, 3);
    let model = train_response_model(
        std::slice::from_ref(&batch),
        &features(Encoding::OneHot),
        &train_cfg(),
        |_| ControlFlow::Continue(()),
    )
    .unwrap();
    let weights = linear_to_safetensors(&model.scorer).unwrap();
    let manifest = halyard_models::artifact::Manifest {
        format: halyard_models::artifact::FORMAT.into(),
        name: "t".into(),
        version: 1,
        model_type: "logistic_regression".into(),
        preprocessor: model.preprocessor.clone(),
        tensors: Default::default(),
        metrics: model.metrics.clone(),
        spec: serde_json::json!({}),
        data: halyard_models::artifact::DataLineage {
            source: "mem".into(),
            digest: "sha256:0".into(),
            rows: 1000,
            train_rows: model.train_rows,
            test_rows: model.test_rows,
        },
        job_id: "j".into(),
        halyard_version: "0".into(),
        created_ms: 0,
    };
    let loaded =
        LoadedModel::from_bytes(&weights, &serde_json::to_vec(&manifest).unwrap()).unwrap();
    // Score without the label column, as a service would send it.
    let raw = batch.project(&[0, 1]).unwrap();
    let served = loaded.score(&[raw]).unwrap();
    let encoded = model.preprocessor.transform(&[batch], |_| true).unwrap();
    let trained = model.scorer.predict(&encoded);
    assert_eq!(served, trained);
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
    let err = train_response_model(&[batch], &features(Encoding::OneHot), &train_cfg(), |_| {
        ControlFlow::Continue(())
    })
    .unwrap_err();
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
    let err = train_response_model(&[synthetic(50, 5)], &f, &train_cfg(), |_| {
        ControlFlow::Continue(())
    })
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("\"converted\"") && text.contains("x, channel, responded"),
        "{text}"
    );
}

#[test]
fn empty_data_is_refused() {
    let batch = synthetic(10, 6).slice(0, 0);
    let err = train_response_model(&[batch], &features(Encoding::OneHot), &train_cfg(), |_| {
        ControlFlow::Continue(())
    })
    .unwrap_err();
    assert!(matches!(err, ModelError::NoRows { .. }), "{err}");
}

#[test]
fn cancellation_stops_training() {
    let err = train_response_model(
        &[synthetic(500, 8)],
        &features(Encoding::OneHot),
        &train_cfg(),
        |r| {
            if r.epoch == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        },
    )
    .unwrap_err();
    assert!(matches!(err, ModelError::Cancelled));
}
