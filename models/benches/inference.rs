//! Scoring latency of the serving runtime: one record and a batch of 1,024, for the
//! bank-marketing-shaped logistic regression, MLP and 10-member MLP ensemble, each with
//! candle and with the plain arrays (preprocessed rows, so the figure is the model's own
//! cost; `score_raw` adds the Arrow preprocessing of raw records and scores as a server
//! does by default), and the drift sketch's count of a JSON record beside the record's encoding.
//!
//! `cargo bench -p halyard-models --bench inference`

use std::hint::black_box;
use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::array::{Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use halyard_models::logistic::TrainConfig;
use halyard_models::pipeline::{ResponseConfig, ResponseKind, train_response_model};
use halyard_models::preprocess::{Encoding, FeatureConfig};
use halyard_models::runtime::Runtime;

/// A bank-marketing-shaped table: 7 numerics, 9 categoricals, a label.
fn table(rows: usize) -> RecordBatch {
    let mut fields = Vec::new();
    let mut cols: Vec<arrow::array::ArrayRef> = Vec::new();
    for k in 0..7 {
        fields.push(Field::new(format!("n{k}"), DataType::Float64, true));
        cols.push(Arc::new(Float64Array::from(
            (0..rows)
                .map(|i| ((i * (k + 3) * 7919) % 1000) as f64)
                .collect::<Vec<_>>(),
        )));
    }
    for k in 0..9 {
        fields.push(Field::new(format!("c{k}"), DataType::Utf8, true));
        cols.push(Arc::new(StringArray::from(
            (0..rows)
                .map(|i| format!("v{}", (i * (k + 5)) % (3 + k * 2)))
                .collect::<Vec<_>>(),
        )));
    }
    fields.push(Field::new("y", DataType::Utf8, true));
    cols.push(Arc::new(StringArray::from(
        (0..rows)
            .map(|i| if (i * 31) % 9 == 0 { "yes" } else { "no" })
            .collect::<Vec<_>>(),
    )));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap()
}

fn bench(c: &mut Criterion) {
    let data = table(4096);
    let features = FeatureConfig {
        label: "y".into(),
        positive: None,
        exclude: vec![],
        categorical: vec![],
        encoding: Encoding::OneHot,
        max_categories: 64,
        hash_buckets: 16,
        holdout_every: 5,
        split_column: None,
        numeric_buckets: 0,
        crosses: vec![],
    };
    let mut g = c.benchmark_group("score");
    let mlp = || ResponseKind::Mlp {
        hidden: vec![128, 64],
        max_embedding: 16,
    };
    for (name, kind, ensemble) in [
        ("logistic", ResponseKind::LogisticRegression, 1),
        ("mlp_128x64", mlp(), 1),
        ("mlp_128x64_x10", mlp(), 10),
    ] {
        let rc = ResponseConfig {
            kind,
            train: TrainConfig {
                epochs: 1,
                ..TrainConfig::default()
            },
            ensemble,
            balance_classes: false,
        };
        let m = train_response_model(std::slice::from_ref(&data), &features, &rc, |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
        let rt = Runtime::new(m.architecture.clone(), &m.weights).unwrap();
        let pre = m.architecture.preprocessor().unwrap().clone();
        let all = pre
            .transform(std::slice::from_ref(&data), |_| true)
            .unwrap();
        let one = all.partition(|i| i != 0).0;
        let batch = all.partition(|i| i >= 1024).0;
        for (form, plain_rows) in [("candle", 0), ("plain", usize::MAX)] {
            let rt = rt.clone().with_plain_rows(plain_rows);
            g.throughput(Throughput::Elements(1));
            g.bench_function(format!("{name}/{form}/1"), |b| {
                b.iter(|| black_box(rt.score_encoded(&one).unwrap()))
            });
            g.throughput(Throughput::Elements(1024));
            g.bench_function(format!("{name}/{form}/1024"), |b| {
                b.iter(|| black_box(rt.score_encoded(&batch).unwrap()))
            });
        }
        // As a server scores by default (its `plain_rows` setting: 4).
        let rt = rt.with_plain_rows(4);
        let raw1 = data.slice(0, 1);
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("{name}/score_raw_1"), |b| {
            b.iter(|| black_box(rt.score(std::slice::from_ref(&raw1)).unwrap()))
        });
        if name == "logistic" {
            drift(&mut g, &m, &pre);
        }
    }
    g.finish();
}

/// The drift sketch's cost per served record (16 columns: 7 numbers, 9 categories),
/// beside the cost of encoding the same JSON record for the model.
fn drift(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    m: &halyard_models::pipeline::TrainedModel,
    pre: &halyard_models::preprocess::Preprocessor,
) {
    use halyard_models::drift::Sketch;
    use halyard_models::json_records::{Record, RecordEncoder};
    let records: Vec<Record> = (0..1024)
        .map(|i| {
            let mut r = Record::new();
            for k in 0..7 {
                r.insert(
                    format!("n{k}"),
                    serde_json::json!(((i * (k + 3) * 7919) % 1000) as f64),
                );
            }
            for k in 0..9 {
                r.insert(
                    format!("c{k}"),
                    serde_json::json!(format!("v{}", (i * (k + 5)) % (3 + k * 2))),
                );
            }
            r
        })
        .collect();
    let mut sketch = Sketch::new(
        m.reference
            .clone()
            .expect("a tabular model has a reference"),
    );
    g.throughput(Throughput::Elements(1024));
    g.bench_function("drift_observe/1024", |b| {
        b.iter(|| {
            for r in &records {
                sketch.observe(black_box(r));
            }
        })
    });
    let encoder = RecordEncoder::new(pre.clone());
    let refs: Vec<&Record> = records.iter().collect();
    g.bench_function("encode_json/1024", |b| {
        b.iter(|| black_box(encoder.encode(&refs).unwrap()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
