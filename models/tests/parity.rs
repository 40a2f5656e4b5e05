//! burn (training) and candle (serving) compute the same outputs from the same weights,
//! within 1e-5, for every model type; so do the plain arrays that score a request of a
//! few rows of a response model.

use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use burn::tensor::{Device, Tensor, TensorData};
use halyard_models::artifact::{Architecture, export_module, merge_members};
use halyard_models::forecast::Series;
use halyard_models::forecast::nbeats::{NBeatsTrainConfig, forecast_member, train_nbeats};
use halyard_models::logistic::{TrainConfig, train};
use halyard_models::mlp::{InputLayout, MlpConfig, train_mlp};
use halyard_models::preprocess::{Encoded, Encoding, FeatureConfig, Preprocessor};
use halyard_models::runtime::Runtime;
use rand::{Rng, SeedableRng};

fn records(rows: usize) -> RecordBatch {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let chans = ["email", "sms", "push", "mail"];
    let mut x = Vec::new();
    let mut c = Vec::new();
    let mut seg = Vec::new();
    let mut y = Vec::new();
    for _ in 0..rows {
        let v: f64 = rng.random_range(0.0..100.0);
        let ch = chans[rng.random_range(0..4)];
        x.push(v);
        c.push(ch);
        seg.push(format!("s{}", rng.random_range(0..7)));
        y.push(
            if rng.random_bool((v / 120.0 + if ch == "email" { 0.1 } else { 0.0 }).min(1.0)) {
                "yes"
            } else {
                "no"
            },
        );
    }
    RecordBatch::try_from_iter([
        ("x", Arc::new(Float64Array::from(x)) as ArrayRef),
        ("channel", Arc::new(StringArray::from(c))),
        ("segment", Arc::new(StringArray::from(seg))),
        ("y", Arc::new(StringArray::from(y))),
    ])
    .unwrap()
}

fn features() -> FeatureConfig {
    FeatureConfig {
        label: "y".into(),
        positive: None,
        exclude: vec![],
        categorical: vec![],
        encoding: Encoding::OneHot,
        max_categories: 10,
        hash_buckets: 8,
        holdout_every: 5,
        split_column: None,
        numeric_buckets: 0,
        crosses: vec![],
    }
}

fn assert_close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-5 * x.abs().max(1.0),
            "row {i}: burn {x} vs the runtime's {y}"
        );
    }
}

/// `expected` (burn's) within 1e-5 of the runtime's `scores` with candle and with plain
/// arrays; and a request of a few rows, scored on plain arrays, gets the very bits those
/// rows get in a request of all of them.
fn assert_both_forms(
    expected: &[f32],
    rt: &Runtime,
    data: &Encoded,
    scores: impl Fn(&Runtime, &Encoded) -> Vec<f32>,
) {
    let all = scores(&rt.clone().with_plain_rows(usize::MAX), data);
    assert_close(expected, &all);
    assert_close(expected, &scores(&rt.clone().with_plain_rows(0), data));
    let few = |i: usize| i % 197 == 3;
    let (_, some) = data.partition(few);
    assert_eq!(some.rows, 4);
    let want: Vec<f32> = (0..data.rows).filter(|&i| few(i)).map(|i| all[i]).collect();
    assert_eq!(scores(&rt.clone().with_plain_rows(4), &some), want);
}

fn tc() -> TrainConfig {
    TrainConfig {
        epochs: 2,
        batch_size: 64,
        patience: 0,
        ..TrainConfig::default()
    }
}

#[test]
fn logistic_regression_burn_equals_candle() {
    let batch = records(600);
    let pre = Preprocessor::fit(std::slice::from_ref(&batch), &features()).unwrap();
    let data = pre.transform(&[batch], |_| true).unwrap();
    let model = train(&data, &tc(), |_| ControlFlow::Continue(())).unwrap();
    let device = Device::flex();
    let x = Tensor::<2>::from_data(
        TensorData::new(data.x.clone(), [data.rows, data.dim]),
        &device,
    );
    let burn_z = model.forward(x).into_data().try_to_vec::<f32>().unwrap();
    let weights = merge_members(&[export_module(&model).unwrap()]).unwrap();
    let rt = Runtime::new(
        Architecture::LogisticRegression {
            preprocessor: pre,
            members: 1,
        },
        &weights,
    )
    .unwrap();
    assert_both_forms(&burn_z, &rt, &data, |rt, d| rt.member_logits(0, d).unwrap());
}

#[test]
fn mlp_burn_equals_candle() {
    let batch = records(600);
    let pre = Preprocessor::fit(std::slice::from_ref(&batch), &features()).unwrap();
    let data = pre.transform(&[batch], |_| true).unwrap();
    let cfg = MlpConfig::new(InputLayout::of(&pre), vec![16, 8], 4);
    let empty = Encoded::empty(data.dim);
    let model = train_mlp(&data, &empty, &cfg, &tc(), |_| ControlFlow::Continue(())).unwrap();
    let burn_p = model.predict(&cfg.layout, &data, &Device::flex()).unwrap();
    let weights = merge_members(&[export_module(&model).unwrap()]).unwrap();
    let rt = Runtime::new(
        Architecture::Mlp {
            preprocessor: pre,
            config: cfg,
            members: 1,
        },
        &weights,
    )
    .unwrap();
    assert_both_forms(&burn_p, &rt, &data, |rt, d| rt.score_encoded(d).unwrap());
    // The plain arrays hold every weight once more: the file's floats (safetensors: an
    // 8-byte length, the JSON header, then the tensors' bytes).
    let header = u64::from_le_bytes(weights[..8].try_into().unwrap());
    assert_eq!(rt.derived_bytes(), weights.len() as u64 - 8 - header);
}

fn series(n: usize, covariates: bool) -> Vec<Series> {
    (0..6)
        .map(|k| {
            let values: Vec<f64> = (0..n)
                .map(|t| {
                    10.0 + k as f64 + 3.0 * ((t % 12) as f64 / 12.0 * std::f64::consts::TAU).sin()
                })
                .collect();
            let mut s = Series::new(format!("s{k}"), values);
            if covariates {
                // One flag per step, for the history and 8 future steps.
                s.covariates = (0..n + 8)
                    .map(|t| vec![f64::from(u8::from(t % 7 == 0))])
                    .collect();
            }
            s
        })
        .collect()
}

fn nbeats_parity(covariates: bool) {
    let train_series = series(80, covariates);
    let tc = NBeatsTrainConfig {
        steps: 5,
        batch_size: 16,
        lookbacks: vec![2, 3],
        blocks: 2,
        layers: 2,
        width: 16,
        ..NBeatsTrainConfig::default()
    };
    let trained = train_nbeats(&train_series, 8, 12, &tc, |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(
        trained.config.members[0].covariates,
        usize::from(covariates)
    );
    let weights = merge_members(
        &trained
            .members
            .iter()
            .map(|m| export_module(m).unwrap())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let rt = Runtime::new(
        Architecture::NBeats {
            config: trained.config.clone(),
        },
        &weights,
    )
    .unwrap();
    for (k, member) in trained.members.iter().enumerate() {
        let cfg = &trained.config.members[k];
        let burn_f = forecast_member(member, cfg, &train_series, &Device::flex()).unwrap();
        let candle_f = rt.member_forecast(k, &train_series).unwrap();
        for (a, b) in burn_f.iter().zip(&candle_f) {
            let a: Vec<f32> = a.iter().map(|v| *v as f32).collect();
            let b: Vec<f32> = b.iter().map(|v| *v as f32).collect();
            assert_close(&a, &b);
        }
    }
}

#[test]
fn nbeats_burn_equals_candle() {
    nbeats_parity(false);
}

#[test]
fn nbeats_with_covariates_burn_equals_candle() {
    nbeats_parity(true);
}
