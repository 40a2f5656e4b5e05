//! Gradient-boosted trees on UCI bank marketing (without `duration`), the split protocol of
//! `../shared/data/README.md`: training 500 trees of 31 leaves without early stopping on the
//! fit rows (one thread), batch prediction of the test rows, and one record's score through
//! the serving runtime. `benches/lightgbm_bank.py --no-early-stopping --trees 500` times
//! LightGBM's fit of the same rows; benches/RESULTS.md has both.
//!
//! `cargo bench -p halyard-models --bench gbdt` (needs `../shared/data/bank-full.csv`, or
//! `HALYARD_REFERENCE_DATA`; says so in one line and measures nothing without it)

use std::hint::black_box;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow::csv::ReaderBuilder;
use arrow::csv::reader::Format;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use halyard_models::gbdt::{GbdtConfig, train_gbdt};
use halyard_models::logistic::TrainConfig;
use halyard_models::mlp::InputLayout;
use halyard_models::preprocess::{Encoded, Encoding, FeatureConfig, Preprocessor};

/// The bank table, or `None` when the reference data is not there.
fn bank() -> Option<arrow::array::RecordBatch> {
    let path = std::env::var_os("HALYARD_REFERENCE_DATA")
        .map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"),
            PathBuf::from,
        )
        .join("bank-full.csv");
    let Ok(file) = std::fs::File::open(&path) else {
        eprintln!("skipped: {} not found", path.display());
        return None;
    };
    let format = Format::default().with_header(true).with_delimiter(b';');
    let (schema, _) = format
        .infer_schema(std::fs::File::open(&path).unwrap(), Some(1000))
        .unwrap();
    let reader = ReaderBuilder::new(Arc::new(schema))
        .with_format(format)
        .with_batch_size(1 << 20)
        .build(file)
        .unwrap();
    let batches: Vec<_> = reader.map(Result::unwrap).collect();
    let batch = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let keep: Vec<usize> = (0..batch.num_columns())
        .filter(|&i| batch.schema().field(i).name() != "duration")
        .collect();
    Some(batch.project(&keep).unwrap())
}

fn bench(c: &mut Criterion) {
    let Some(batch) = bank() else { return };
    let features = FeatureConfig {
        label: "y".into(),
        positive: Some("yes".into()),
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
    let batches = [batch];
    let pre = Preprocessor::fit(&batches, &features).unwrap();
    let all = pre.transform(&batches, |_| true).unwrap();
    let (fit, rest): (Encoded, Encoded) = all.partition(|i| i % 5 >= 3);
    let (valid, test) = rest.partition(|j| j % 2 == 1);
    let layout = InputLayout::of(&pre);
    let cfg = GbdtConfig {
        early_stopping: 0,
        ..GbdtConfig::new(500, 0.02)
    };
    let tc = TrainConfig {
        seed: 1,
        ..TrainConfig::default()
    };
    let train = || {
        train_gbdt(&fit, &valid, &layout, &cfg, &tc, |_| {
            ControlFlow::Continue(())
        })
        .unwrap()
    };
    let mut g = c.benchmark_group("gbdt_train");
    g.sample_size(10).measurement_time(Duration::from_secs(40));
    g.bench_function(format!("bank_{}_rows_500_trees_31_leaves", fit.rows), |b| {
        b.iter(|| black_box(train()))
    });
    g.finish();

    let (forest, _) = train();
    let mut g = c.benchmark_group("gbdt_predict");
    g.throughput(Throughput::Elements(test.rows as u64));
    g.bench_function(format!("batch_{}_rows_500_trees", test.rows), |b| {
        b.iter(|| black_box(forest.score(&layout, &test)))
    });
    g.bench_function(format!("walked_batch_{}_rows_500_trees", test.rows), |b| {
        b.iter(|| black_box(forest.walked_raw_scores(&layout, &test)))
    });
    let one = test.partition(|i| i > 0).0;
    g.throughput(Throughput::Elements(1));
    g.bench_function("one_row_500_trees", |b| {
        b.iter(|| black_box(forest.score(&layout, &one)))
    });
    g.bench_function("walked_one_row_500_trees", |b| {
        b.iter(|| black_box(forest.walked_raw_scores(&layout, &one)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
