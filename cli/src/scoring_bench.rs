//! `halyard bench scoring`: batch scoring end to end on a running cluster — a `[score]` job:
//! a Parquet table in, the feature stage's shards, each scored by the executor that reads
//! it, the scores written as Parquet, the audience picked — against a single-process loop
//! over the same runtime and artifact in the same invocation (the Parquet table in, scored
//! batch by batch, the scores written as Parquet). Runs alternate; medians are reported.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Float64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::{CsvReadOptions, SessionContext};
use halyard_client::Client;
use halyard_core::spec::JobSpec;
use halyard_models::runtime::LoadedModel;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::{CliError, Result};

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct ScoringBench {
    /// Folder for the generated table and the single-process scores.
    pub dir: PathBuf,
    /// Rows to score.
    pub rows: usize,
    /// The registered model (trained on `halyard datagen`'s columns).
    pub model: String,
    /// The cluster's object store folder (a `file://` store), where the artifact is read
    /// for the single-process loop.
    pub store: PathBuf,
    /// Scoring workers of the cluster's job.
    pub workers: u32,
    /// Runs of each (alternating).
    pub runs: usize,
}

/// Times of the runs.
#[derive(Debug, Default)]
pub struct Figures {
    /// The cluster's `[score]` jobs, submit to succeeded.
    pub cluster: Vec<Duration>,
    /// The single-process loops.
    pub local: Vec<Duration>,
    /// The model version scored.
    pub version: u64,
}

fn io(path: &Path, e: impl std::fmt::Display) -> CliError {
    CliError::Failed(format!("{}: {e}", path.display()))
}

/// The table to score: `halyard datagen`'s responses, `rows` of them, as Parquet.
async fn table(b: &ScoringBench) -> Result<PathBuf> {
    let out = b.dir.join(format!("customers-{}.parquet", b.rows));
    if out.exists() {
        return Ok(out);
    }
    std::fs::create_dir_all(&b.dir).map_err(|e| io(&b.dir, e))?;
    let generated = crate::datagen::generate(&b.dir.join("gen"), b.rows, 7)?;
    let ctx = SessionContext::new();
    let df = ctx
        .read_csv(
            generated.responses.display().to_string(),
            CsvReadOptions::new(),
        )
        .await
        .map_err(|e| io(&generated.responses, e))?;
    let batches = df
        .collect()
        .await
        .map_err(|e| io(&generated.responses, e))?;
    let schema = batches
        .first()
        .map(|b| b.schema())
        .ok_or_else(|| io(&generated.responses, "no rows"))?;
    let file = std::fs::File::create(&out).map_err(|e| io(&out, e))?;
    let mut w = ArrowWriter::try_new(file, schema, None).map_err(|e| io(&out, e))?;
    for batch in &batches {
        w.write(batch).map_err(|e| io(&out, e))?;
    }
    w.close().map_err(|e| io(&out, e))?;
    let _ = std::fs::remove_dir_all(b.dir.join("gen"));
    Ok(out)
}

/// The latest version of `model` in the store, and its artifact.
fn artifact(b: &ScoringBench) -> Result<(u64, LoadedModel)> {
    let dir = b.store.join("models").join(&b.model);
    let version = std::fs::read_dir(&dir)
        .map_err(|e| io(&dir, e))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .ok_or_else(|| io(&dir, "no published version: train the model first"))?;
    let v = dir.join(version.to_string());
    let read = |f: &str| std::fs::read(v.join(f)).map_err(|e| io(&v.join(f), e));
    let model = LoadedModel::from_bytes(&read("model.safetensors")?, &read("manifest.json")?)
        .map_err(|e| io(&v, e))?;
    Ok((version, model))
}

/// One single-process run: read, score batch by batch, write the key and score.
fn local_run(input: &Path, model: &LoadedModel, out: &Path) -> Result<usize> {
    let file = std::fs::File::open(input).map_err(|e| io(input, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| io(input, e))?
        .with_batch_size(65_536)
        .build()
        .map_err(|e| io(input, e))?;
    let schema = Arc::new(Schema::new(vec![
        Field::new("customer_id", DataType::Utf8, true),
        Field::new("score", DataType::Float64, false),
    ]));
    let file = std::fs::File::create(out).map_err(|e| io(out, e))?;
    let mut w = ArrowWriter::try_new(file, schema.clone(), None).map_err(|e| io(out, e))?;
    let mut rows = 0;
    for batch in reader {
        let batch = batch.map_err(|e| io(input, e))?;
        let scores = model
            .score(std::slice::from_ref(&batch))
            .map_err(|e| io(input, e))?;
        let key: ArrayRef = batch
            .column_by_name("customer_id")
            .cloned()
            .ok_or_else(|| io(input, "no customer_id column"))?;
        let scores: ArrayRef = Arc::new(Float64Array::from_iter_values(
            scores.into_iter().map(f64::from),
        ));
        let out_batch =
            RecordBatch::try_new(schema.clone(), vec![key, scores]).map_err(|e| io(out, e))?;
        w.write(&out_batch).map_err(|e| io(out, e))?;
        rows += batch.num_rows();
    }
    w.close().map_err(|e| io(out, e))?;
    Ok(rows)
}

fn score_spec(b: &ScoringBench, input: &Path) -> Result<JobSpec> {
    let text = format!(
        r#"name = "bench-scoring"
[[features.sources]]
name = "customers"
path = "file://{}"
[features]
sql = "SELECT * FROM customers"
shards = {}
[score]
model = "{}"
key = ["customer_id"]
workers = {}
[score.audience]
top_fraction = 0.1
"#,
        input.display(),
        2 * b.workers.max(1),
        b.model,
        b.workers.max(1)
    );
    Ok(JobSpec::from_toml(&text, "bench-scoring")?)
}

/// Run the benchmark.
pub async fn run(client: &Client, b: &ScoringBench) -> Result<Figures> {
    let input = table(b).await?;
    let input = std::fs::canonicalize(&input).map_err(|e| io(&input, e))?;
    let (version, model) = artifact(b)?;
    let model = Arc::new(model);
    let spec = score_spec(b, &input)?;
    let mut figures = Figures {
        version,
        ..Figures::default()
    };
    for run in 0..b.runs.max(1) {
        let started = Instant::now();
        let (m, i, o) = (
            model.clone(),
            input.clone(),
            b.dir.join("local-scores.parquet"),
        );
        let rows = tokio::task::spawn_blocking(move || local_run(&i, &m, &o))
            .await
            .map_err(|e| CliError::Failed(e.to_string()))??;
        let took = started.elapsed();
        figures.local.push(took);
        eprintln!(
            "run {}: one process scored {rows} rows in {:.2} s",
            run + 1,
            took.as_secs_f64()
        );
        let started = Instant::now();
        let job = client.submit(&spec).await?;
        let done = loop {
            let j = client.job(&job.id).await?;
            if matches!(j.state.as_str(), "succeeded" | "failed" | "cancelled") {
                break j;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if done.state != "succeeded" {
            return Err(CliError::JobFailed {
                id: job.id,
                state: done.state,
                error: done.error,
            });
        }
        let took = started.elapsed();
        figures.cluster.push(took);
        eprintln!(
            "run {}: the cluster's job {} scored {} rows in {:.2} s",
            run + 1,
            job.id,
            done.metrics.get("scored").copied().unwrap_or(0.0),
            took.as_secs_f64()
        );
    }
    Ok(figures)
}

/// The report: medians, rows per second (and per core), the cluster against one process.
pub fn summary(b: &ScoringBench, f: &Figures) -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let (c, l) = (
        crate::bench::median_of(f.cluster.clone()).as_secs_f64(),
        crate::bench::median_of(f.local.clone()).as_secs_f64(),
    );
    let rate = |secs: f64| b.rows as f64 / secs;
    format!(
        "batch scoring: {} rows of the demo data, model {} version {}, {} run(s) each, medians, {cores} cores\n\
         one process (Parquet → score → Parquet):             {l:>8.2} s  {:>12.0} rows/s  {:>12.0} rows/s per core\n\
         cluster [score] job, {} worker(s) (submit → audience): {c:>8.2} s  {:>12.0} rows/s  {:>12.0} rows/s per core\n\
         cluster / one process: {:.2}×",
        b.rows,
        b.model,
        f.version,
        f.cluster.len(),
        rate(l),
        rate(l) / cores,
        b.workers,
        rate(c),
        rate(c) / cores,
        c / l
    )
}
