//! Batch scoring and audiences: the `score` and `audience` stages of a `[score]` job.
//!
//! Each worker of the job (rank `r` of `n`) scores the feature table's shards whose number
//! is `r` modulo `n`, where they lie in object storage, and writes one Parquet file of
//! scores per shard (`jobs/<job>/scores/part-NNNNN.parquet`: the key columns, `score`,
//! `excluded`, `model_version`, `scored_at_ms`) and the rows it could not score beside it
//! (`rejects-NNNNN.parquet`: the keys and the reason). It then leaves a marker saying it is
//! done (with its counts) or why it failed. Rank 0 waits for every marker, reads every
//! shard's scores, picks the audience by the spec's rule and writes it as a new immutable
//! version (`audiences/<name>/<version>/`: `audience.parquet`, `added.parquet` and
//! `removed.parquet` against the previous version, `audience.json`), registered in the
//! coordinator only while its assignment stands.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray, UInt32Array,
    UInt64Array,
};
use arrow::compute::kernels::boolean::not;
use arrow::compute::{
    SortColumn, SortOptions, cast, concat_batches, filter_record_batch, lexsort_to_indices, take,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use bytes::Bytes;
use datafusion::datasource::MemTable;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::{SessionConfig, SessionContext};
use halyard_core::data::{read_parquet_parts, write_parquet};
use halyard_core::records::{TaskProgress, now_ms};
use halyard_core::registry::{AudienceVersion, ModelVersion};
use halyard_core::spec::{Pick, ScoreSpec};
use halyard_core::store::{
    MANIFEST_FILE, Store, WEIGHTS_FILE, audience_dir, feature_shard_file, read_model, scores_dir,
};
use halyard_features::stage::FeatureTable;
use halyard_models::preprocess::ColumnEncoding;
use halyard_models::runtime::LoadedModel;
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::error::{ExecutorError, Result};
use crate::input::{read_feature_table, read_inputs};
use crate::pipeline::{Flow, Run, table_manifest};
use crate::task::Task;

/// Rows scored at once (bounds the memory of one shard's encoding).
const SCORE_BATCH: usize = 65_536;
/// How long rank 0 waits for the other workers' scores.
const WORKERS_WAIT: Duration = Duration::from_secs(3600);

/// What one worker scored, in its marker.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
struct Counts {
    scored: u64,
    excluded: u64,
    rejected: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        self.scored += o.scored;
        self.excluded += o.excluded;
        self.rejected += o.rejected;
    }
}

/// The score stage on this worker's shards.
pub(crate) async fn score(t: &Task, progress: &mut TaskProgress, run: &Run<'_>) -> Result<Flow> {
    let a = &t.a.value;
    let (rank, workers) = (a.rank as usize, a.group.len().max(1));
    let dir = scores_dir(&a.job_id);
    let result = score_shards(t, progress, run, (rank, workers), &dir).await;
    // Rank 0 (which writes the audience) learns this worker's end from its marker.
    let (path, body) = match &result {
        Ok(c) => (
            marker(&dir, a.attempt, rank, "done"),
            serde_json::to_vec(c).expect("counts serialise"),
        ),
        Err(e) => (
            marker(&dir, a.attempt, rank, "failed"),
            e.to_string().into_bytes(),
        ),
    };
    t.store.put(&path, Bytes::from(body)).await?;
    result?;
    Ok(if rank == 0 { Flow::Next } else { Flow::Stop })
}

fn marker(dir: &str, attempt: u32, rank: usize, what: &str) -> String {
    format!("{dir}/workers/{attempt}-{rank}.{what}")
}

/// Load a registered version's artifact, checking its files against their digests.
async fn load_model(store: &Store, v: &ModelVersion) -> Result<LoadedModel> {
    let (weights, manifest) = read_model(store, &v.name, v.version)
        .await?
        .ok_or_else(|| {
            ExecutorError::Invalid(format!(
                "model {} version {}: its artifact is missing from the store",
                v.name, v.version
            ))
        })?;
    v.check_file(WEIGHTS_FILE, &weights)?;
    v.check_file(MANIFEST_FILE, &manifest)?;
    Ok(LoadedModel::from_bytes(&weights, &manifest)?)
}

async fn score_shards(
    t: &Task,
    progress: &mut TaskProgress,
    run: &Run<'_>,
    (rank, workers): (usize, usize),
    dir: &str,
) -> Result<Counts> {
    let s = run.spec.score.as_ref().expect("a score stage has [score]");
    let version = t.coord.resolve_model(s).await?;
    let model = Arc::new(load_model(&t.store, &version).await?);
    progress.log(format!(
        "scoring with {} version {} ({}), worker {rank} of {workers}",
        version.name, version.version, version.model_type
    ));
    let tables = shards_to_score(t, progress, run, (rank, workers)).await?;
    t.report(progress).await;
    let scored_at = now_ms();
    let mut total = Counts::default();
    for (shard, table) in tables {
        if t.cancel.load(Ordering::Relaxed) {
            return Err(halyard_models::ModelError::Cancelled.into());
        }
        let excluded = match &s.exclude {
            Some(pred) => Some(exclusions(&table.schema, &table.batches, pred).await?),
            None => None,
        };
        let job = ShardJob {
            model: model.clone(),
            spec: s.clone(),
            version: version.version,
            scored_at,
            shard,
        };
        let batches = table.batches;
        let out = tokio::task::spawn_blocking(move || job.run(&batches, excluded.as_deref()))
            .await
            .map_err(|e| ExecutorError::Panicked(e.to_string()))??;
        t.store
            .put(&format!("{dir}/{}", feature_shard_file(shard)), out.scores)
            .await?;
        if let Some(rejects) = out.rejects {
            t.store
                .put(&format!("{dir}/rejects-{shard:05}.parquet"), rejects)
                .await?;
        }
        total += out.counts;
        progress.log(format!(
            "shard {shard}: {} scored, {} excluded, {} rejected",
            out.counts.scored, out.counts.excluded, out.counts.rejected
        ));
        t.report(progress).await;
    }
    info!(job = %t.a.value.job_id, rank, scored = total.scored, "shards scored");
    Ok(total)
}

/// This worker's shards of the table, read: the feature table's shards numbered `rank`
/// modulo `workers`, or (a job reading its `[data] source`) the whole source as shard 0
/// on rank 0.
async fn shards_to_score(
    t: &Task,
    progress: &mut TaskProgress,
    run: &Run<'_>,
    (rank, workers): (usize, usize),
) -> Result<Vec<(usize, halyard_core::data::Table)>> {
    let mut log = |l: String| progress.log(l);
    if run.spec.features.is_none() {
        if rank != 0 {
            return Ok(Vec::new());
        }
        let input = read_inputs(run.spec, run.data, &mut log).await?;
        return Ok(vec![(0, input.table(run.spec)?)]);
    }
    let manifest = table_manifest(run).await?;
    let input = read_feature_table(
        &t.store,
        &run.table_dir,
        &manifest,
        Some((rank, workers)),
        &mut log,
    )
    .await?;
    let (location, digest) = input.features.clone().unwrap_or_default();
    input
        .parts
        .iter()
        .zip(&input.shards)
        .map(|(part, &shard)| {
            Ok((
                shard,
                read_parquet_parts(std::slice::from_ref(part), &location, digest.clone())?,
            ))
        })
        .collect()
}

/// Shards of the scored table: the feature table's, or 1 for a `[data] source`.
async fn shard_count(run: &Run<'_>) -> Result<usize> {
    if run.spec.features.is_none() {
        return Ok(1);
    }
    let manifest = table_manifest(run).await?;
    let table: FeatureTable = serde_json::from_slice(&manifest)
        .map_err(|e| ExecutorError::Invalid(format!("feature table manifest: {e}")))?;
    Ok(table.shards.len())
}

/// Whether each row is excluded by the SQL predicate `pred` (a null result keeps the row).
/// The predicate runs on an in-memory table of the shard alone, with no DDL, DML or other
/// statement allowed: it reads nothing else.
async fn exclusions(schema: &SchemaRef, batches: &[RecordBatch], pred: &str) -> Result<Vec<bool>> {
    let bad = |e: datafusion::error::DataFusionError| {
        ExecutorError::Invalid(format!(
            "[score] exclude = {pred:?}: {}",
            e.to_string().lines().next().unwrap_or_default()
        ))
    };
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    let table = MemTable::try_new(schema.clone(), vec![batches.to_vec()]).map_err(bad)?;
    ctx.register_table("t", Arc::new(table)).map_err(bad)?;
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let df = ctx
        .sql_with_options(
            &format!("SELECT COALESCE(CAST(({pred}) AS BOOLEAN), false) AS excluded FROM t"),
            options,
        )
        .await
        .map_err(bad)?;
    let mut out = Vec::new();
    for b in df.collect().await.map_err(bad)? {
        let col = b
            .column(0)
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| {
                ExecutorError::Invalid(format!("[score] exclude = {pred:?}: not a predicate"))
            })?;
        out.extend((0..col.len()).map(|i| col.value(i)));
    }
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if out.len() != rows {
        return Err(ExecutorError::Invalid(format!(
            "[score] exclude = {pred:?}: gave {} rows for {rows}; use a predicate over one row's columns",
            out.len()
        )));
    }
    Ok(out)
}

/// One shard to score, on a blocking thread.
struct ShardJob {
    model: Arc<LoadedModel>,
    spec: ScoreSpec,
    version: u64,
    scored_at: i64,
    shard: usize,
}

/// One shard's scores and rejects, as Parquet.
struct ShardOut {
    scores: Bytes,
    rejects: Option<Bytes>,
    counts: Counts,
}

impl ShardJob {
    fn run(&self, batches: &[RecordBatch], excluded: Option<&[bool]>) -> Result<ShardOut> {
        let origin = format!("shard {}", self.shard);
        let pre = self
            .model
            .manifest
            .architecture
            .preprocessor()
            .ok_or_else(|| {
                ExecutorError::Invalid(format!(
                    "[score] model = {:?} is a forecaster: batch scoring needs a response model",
                    self.spec.model
                ))
            })?;
        let Some(first) = batches.first() else {
            let schema = scores_schema(&Schema::empty(), &[])?;
            return Ok(ShardOut {
                scores: write_parquet(schema, &[], &origin)?,
                rejects: None,
                counts: Counts::default(),
            });
        };
        let schema = first.schema();
        // Plan-time checks, before any row is scored: the keys and the model's columns.
        let mut problems: Vec<String> = self
            .spec
            .carried()
            .iter()
            .filter(|k| schema.field_with_name(k).is_err())
            .map(|k| format!("missing key or segment column {k:?}"))
            .collect();
        problems.extend(pre.schema_problems(&schema));
        if !problems.is_empty() {
            return Err(ExecutorError::Invalid(format!(
                "model {} version {} cannot score this table: {}; the table has: {}",
                self.spec.model,
                self.version,
                problems.join("; "),
                halyard_core::data::column_list(&schema)
            )));
        }
        let all = concat_batches(&schema, batches).map_err(arrow_err)?;
        let rows = all.num_rows();
        // Rows that cannot be scored: a null key, or a number that is NaN or infinite.
        let mut reason: Vec<Option<String>> = vec![None; rows];
        for k in &self.spec.key {
            let col = all.column_by_name(k).expect("checked above");
            for (i, r) in reason.iter_mut().enumerate() {
                if r.is_none() && col.is_null(i) {
                    *r = Some(format!("key column {k:?} is null"));
                }
            }
        }
        for c in &pre.columns {
            if !matches!(c.encoding, ColumnEncoding::Numeric { .. }) {
                continue;
            }
            let col = cast(
                all.column_by_name(&c.name).expect("checked above"),
                &DataType::Float64,
            )
            .map_err(arrow_err)?;
            let col = col
                .as_any()
                .downcast_ref::<Float64Array>()
                .expect("cast to f64");
            for (i, r) in reason.iter_mut().enumerate() {
                if r.is_none() && col.is_valid(i) && !col.value(i).is_finite() {
                    *r = Some(format!("column {:?} holds {}", c.name, col.value(i)));
                }
            }
        }
        let good: Vec<u32> = (0..rows as u32)
            .filter(|&i| reason[i as usize].is_none())
            .collect();
        let bad: Vec<u32> = (0..rows as u32)
            .filter(|&i| reason[i as usize].is_some())
            .collect();
        let kept = take_rows(&all, &good)?;
        // The label, when the table has it, is not read (its values may be anything).
        let inputs = match kept.schema().index_of(&pre.label) {
            Ok(i) => {
                let mut b = kept.clone();
                b.remove_column(i);
                b
            }
            Err(_) => kept.clone(),
        };
        let mut scores = Vec::with_capacity(kept.num_rows());
        let mut at = 0;
        while at < inputs.num_rows() {
            let n = SCORE_BATCH.min(inputs.num_rows() - at);
            let part = inputs.slice(at, n);
            scores.extend(self.model.score(&[part])?.into_iter().map(f64::from));
            at += n;
        }
        let excluded_col: Vec<bool> = good
            .iter()
            .map(|&i| excluded.is_some_and(|e| e[i as usize]))
            .collect();
        let counts = Counts {
            scored: scores.len() as u64,
            excluded: excluded_col.iter().filter(|e| **e).count() as u64,
            rejected: bad.len() as u64,
        };
        let keys: Vec<ArrayRef> = self
            .spec
            .carried()
            .iter()
            .map(|k| kept.column_by_name(k).expect("checked above").clone())
            .collect();
        let out_schema = scores_schema(&schema, &self.spec.carried())?;
        let n = scores.len();
        let mut columns = keys;
        columns.push(Arc::new(Float64Array::from(scores)));
        columns.push(Arc::new(BooleanArray::from(excluded_col)));
        columns.push(Arc::new(UInt64Array::from(vec![self.version; n])));
        columns.push(Arc::new(Int64Array::from(vec![self.scored_at; n])));
        let batch = RecordBatch::try_new(out_schema.clone(), columns).map_err(arrow_err)?;
        let rejects = if bad.is_empty() {
            None
        } else {
            let rejected = take_rows(&all, &bad)?;
            let mut fields: Vec<Field> = self
                .spec
                .key
                .iter()
                .map(|k| {
                    schema
                        .field_with_name(k)
                        .expect("checked")
                        .clone()
                        .with_nullable(true)
                })
                .collect();
            fields.push(Field::new("reason", DataType::Utf8, false));
            let mut cols: Vec<ArrayRef> = self
                .spec
                .key
                .iter()
                .map(|k| rejected.column_by_name(k).expect("checked").clone())
                .collect();
            cols.push(Arc::new(StringArray::from_iter_values(
                bad.iter()
                    .map(|&i| reason[i as usize].clone().unwrap_or_default()),
            )));
            let schema = Arc::new(Schema::new(fields));
            let b = RecordBatch::try_new(schema.clone(), cols).map_err(arrow_err)?;
            Some(write_parquet(schema, &[b], &origin)?)
        };
        Ok(ShardOut {
            scores: write_parquet(out_schema, &[batch], &origin)?,
            rejects,
            counts,
        })
    }
}

/// The scores file's schema: the key columns as in the table, then the score's.
fn scores_schema(table: &Schema, key: &[String]) -> Result<SchemaRef> {
    let mut fields: Vec<Field> = key
        .iter()
        .map(|k| {
            table
                .field_with_name(k)
                .map(|f| f.clone().with_nullable(true))
                .unwrap_or_else(|_| Field::new(k, DataType::Utf8, true))
        })
        .collect();
    fields.extend([
        Field::new("score", DataType::Float64, false),
        Field::new("excluded", DataType::Boolean, false),
        Field::new("model_version", DataType::UInt64, false),
        Field::new("scored_at_ms", DataType::Int64, false),
    ]);
    Ok(Arc::new(Schema::new(fields)))
}

fn take_rows(batch: &RecordBatch, rows: &[u32]) -> Result<RecordBatch> {
    let idx = UInt32Array::from(rows.to_vec());
    let cols = batch
        .columns()
        .iter()
        .map(|c| take(c, &idx, None))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(arrow_err)?;
    RecordBatch::try_new(batch.schema(), cols).map_err(arrow_err)
}

fn arrow_err(e: arrow::error::ArrowError) -> ExecutorError {
    ExecutorError::Invalid(format!("scoring: {e}"))
}

/// The audience stage (rank 0): wait for every worker, pick, write, register.
pub(crate) async fn audience(t: &Task, progress: &mut TaskProgress, run: &Run<'_>) -> Result<()> {
    let a = &t.a;
    let spec = run.spec;
    let s = spec.score.as_ref().expect("an audience stage has [score]");
    let dir = scores_dir(&a.value.job_id);
    let workers = a.value.group.len().max(1);
    let counts = wait_for_workers(t, &dir, workers).await?;
    let shards = shard_count(run).await?;
    let mut parts = Vec::with_capacity(shards);
    for i in 0..shards {
        parts.push(
            t.store
                .get(&format!("{dir}/{}", feature_shard_file(i)))
                .await?,
        );
    }
    let location = t.store.url_of(&dir);
    let scores = read_parquet_parts(&parts, &location, String::new())?;
    let schema = scores.schema.clone();
    let all = concat_batches(&schema, &scores.batches).map_err(arrow_err)?;
    let picked = pick(&all, s)?;
    let version_used = all
        .column_by_name("model_version")
        .and_then(|c| c.as_any().downcast_ref::<UInt64Array>().cloned())
        .filter(|c| !c.is_empty())
        .map_or(0, |c| c.value(0));
    // The previous version, for the churn.
    let previous = t.coord.audiences(Some(&spec.name)).await?.pop();
    let previous_rows = match &previous {
        Some(p) => {
            let bytes = t
                .store
                .get(&format!(
                    "{}/audience.parquet",
                    audience_dir(&p.name, p.version)
                ))
                .await?;
            let prev = read_parquet_parts(&[bytes], &p.location, String::new())?;
            Some(concat_batches(&prev.schema, &prev.batches).map_err(arrow_err)?)
        }
        None => None,
    };
    let keys_of = |b: &RecordBatch| key_texts(b, &s.key);
    let now_keys: Vec<String> = keys_of(&picked)?;
    let now_set: HashSet<&str> = now_keys.iter().map(String::as_str).collect();
    let (prev_keys, prev_set): (Vec<String>, HashSet<String>) = match &previous_rows {
        Some(b) => {
            let k = keys_of(b)?;
            let set = k.iter().cloned().collect();
            (k, set)
        }
        None => (Vec::new(), HashSet::new()),
    };
    let entered: Vec<u32> = (0..now_keys.len() as u32)
        .filter(|&i| !prev_set.contains(&now_keys[i as usize]))
        .collect();
    let left: Vec<u32> = (0..prev_keys.len() as u32)
        .filter(|&i| !now_set.contains(prev_keys[i as usize].as_str()))
        .collect();
    let version = t.coord.next_audience_version(&spec.name).await?;
    let out = audience_dir(&spec.name, version);
    let origin = t.store.url_of(&out);
    let key_only = |b: &RecordBatch, rows: &[u32]| -> Result<Bytes> {
        let b = take_rows(b, rows)?;
        let idx: Vec<usize> = s
            .key
            .iter()
            .map(|k| b.schema().index_of(k).expect("key column"))
            .collect();
        let b = b.project(&idx).map_err(arrow_err)?;
        Ok(write_parquet(b.schema(), &[b], &origin)?)
    };
    let added = key_only(&picked, &entered)?;
    let removed = match &previous_rows {
        Some(b) => key_only(b, &left)?,
        None => key_only(&picked, &[])?,
    };
    let record = AudienceVersion {
        name: spec.name.clone(),
        version,
        location: origin.clone(),
        job_id: a.value.job_id.clone(),
        model: s.model.clone(),
        model_version: version_used,
        rule: rule_text(s.audience.pick()),
        size: picked.num_rows() as u64,
        scored: counts.scored,
        excluded: counts.excluded,
        rejected: counts.rejected,
        entered: entered.len() as u64,
        left: left.len() as u64,
        created_ms: now_ms(),
    };
    t.store
        .put(
            &format!("{out}/audience.parquet"),
            write_parquet(picked.schema(), std::slice::from_ref(&picked), &origin)?,
        )
        .await?;
    t.store.put(&format!("{out}/added.parquet"), added).await?;
    t.store
        .put(&format!("{out}/removed.parquet"), removed)
        .await?;
    t.store
        .put(
            &format!("{out}/audience.json"),
            Bytes::from(serde_json::to_vec_pretty(&record).expect("record serialises")),
        )
        .await?;
    t.coord.register_audience(a, &record).await?;
    progress.metrics = BTreeMap::from([
        ("audience_version".into(), version as f64),
        ("audience_size".into(), record.size as f64),
        ("scored".into(), record.scored as f64),
        ("excluded".into(), record.excluded as f64),
        ("rejected".into(), record.rejected as f64),
        ("entered".into(), record.entered as f64),
        ("left".into(), record.left as f64),
    ]);
    progress.artifact = Some(origin.clone());
    progress.log(format!(
        "audience {} version {version}: {} of {} scored rows ({}), {} entered and {} left since the previous version; {} excluded, {} rejected; written to {origin}",
        spec.name, record.size, record.scored, record.rule, record.entered, record.left, record.excluded, record.rejected
    ));
    Ok(())
}

/// The rule as written in the spec.
fn rule_text(p: Pick) -> String {
    match p {
        Pick::All => "every scored row".into(),
        Pick::TopK(k) => format!("top_k = {k}"),
        Pick::TopFraction(f) => format!("top_fraction = {f}"),
        Pick::Threshold(t) => format!("threshold = {t}"),
        Pick::PerSegment(n) => format!("per_segment = {n}"),
    }
}

/// The audience from every score: rows not excluded, by score (highest first, ties by
/// key), as many as the rule keeps, with their rank (1 = highest).
fn pick(all: &RecordBatch, s: &ScoreSpec) -> Result<RecordBatch> {
    let excluded = all
        .column_by_name("excluded")
        .and_then(|c| c.as_any().downcast_ref::<BooleanArray>())
        .ok_or_else(|| ExecutorError::Invalid("scores file without an excluded column".into()))?;
    let eligible =
        filter_record_batch(all, &not(excluded).map_err(arrow_err)?).map_err(arrow_err)?;
    let column = |name: &str| {
        eligible
            .column_by_name(name)
            .cloned()
            .ok_or_else(|| ExecutorError::Invalid(format!("scores file without a {name} column")))
    };
    let mut by = vec![SortColumn {
        values: column("score")?,
        options: Some(SortOptions {
            descending: true,
            nulls_first: false,
        }),
    }];
    for k in &s.key {
        by.push(SortColumn {
            values: column(k)?,
            options: Some(SortOptions::default()),
        });
    }
    // Only the rows the rule can keep are sorted (a partial sort for top_k / top_fraction).
    let limit = s.audience.limit(eligible.num_rows());
    let order = lexsort_to_indices(&by, limit).map_err(arrow_err)?;
    let chosen: Vec<u32> = match (s.audience.pick(), &s.segment) {
        // The highest `n` of each segment, in score order.
        (Pick::PerSegment(n), Some(col)) => {
            let segments = key_texts(&eligible, std::slice::from_ref(col))?;
            let mut taken: std::collections::HashMap<&str, u64> = Default::default();
            order
                .values()
                .iter()
                .copied()
                .filter(|&i| {
                    let c = taken.entry(segments[i as usize].as_str()).or_default();
                    *c += 1;
                    *c <= n
                })
                .collect()
        }
        // The partial sort kept what top_k / top_fraction keep; a threshold cuts the rest.
        _ if limit.is_some() => order.values().to_vec(),
        _ => {
            let score = column("score")?;
            let score = score
                .as_any()
                .downcast_ref::<Float64Array>()
                .ok_or_else(|| {
                    ExecutorError::Invalid("scores file: score is not a number".into())
                })?;
            let sorted: Vec<f64> = order
                .values()
                .iter()
                .map(|&i| score.value(i as usize))
                .collect();
            order.values()[..s.audience.size(&sorted)].to_vec()
        }
    };
    let keep = chosen.len();
    let picked = take_rows(&eligible, &chosen)?;
    let rank: ArrayRef = Arc::new(UInt64Array::from_iter_values(1..=keep as u64));
    let mut fields: Vec<Field> = picked
        .schema()
        .fields()
        .iter()
        .filter(|f| f.name() != "excluded")
        .map(|f| f.as_ref().clone())
        .collect();
    let mut cols: Vec<ArrayRef> = picked
        .schema()
        .fields()
        .iter()
        .zip(picked.columns())
        .filter(|(f, _)| f.name() != "excluded")
        .map(|(_, c)| c.clone())
        .collect();
    fields.push(Field::new("rank", DataType::UInt64, false));
    cols.push(rank);
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).map_err(arrow_err)
}

/// Each row's key as text (the key columns' values joined by U+001F).
fn key_texts(b: &RecordBatch, key: &[String]) -> Result<Vec<String>> {
    let options = FormatOptions::default().with_null("");
    let formatters = key
        .iter()
        .map(|k| {
            let col = b.column_by_name(k).ok_or_else(|| {
                ExecutorError::Invalid(format!("scores have no key column {k:?}"))
            })?;
            ArrayFormatter::try_new(col.as_ref(), &options).map_err(arrow_err)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((0..b.num_rows())
        .map(|i| {
            formatters
                .iter()
                .map(|f| f.value(i).to_string())
                .collect::<Vec<_>>()
                .join("\u{1f}")
        })
        .collect())
}

/// Wait for every worker's marker of this attempt; the first failure fails the audience.
async fn wait_for_workers(t: &Task, dir: &str, workers: usize) -> Result<Counts> {
    let attempt = t.a.value.attempt;
    let started = std::time::Instant::now();
    let mut total = Counts::default();
    let mut pending: Vec<usize> = (0..workers).collect();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for rank in pending {
            match t.store.get(&marker(dir, attempt, rank, "done")).await {
                Ok(b) => {
                    let c: Counts = serde_json::from_slice(&b).unwrap_or_default();
                    total += c;
                    continue;
                }
                Err(halyard_core::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            match t.store.get(&marker(dir, attempt, rank, "failed")).await {
                Ok(b) => {
                    return Err(ExecutorError::Invalid(format!(
                        "scoring worker {rank} failed: {}",
                        String::from_utf8_lossy(&b)
                    )));
                }
                Err(halyard_core::Error::NotFound { .. }) => still.push(rank),
                Err(e) => return Err(e.into()),
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        if t.cancel.load(Ordering::Relaxed) {
            return Err(halyard_models::ModelError::Cancelled.into());
        }
        if started.elapsed() > WORKERS_WAIT {
            return Err(ExecutorError::Invalid(format!(
                "scoring workers {pending:?} wrote no scores in {WORKERS_WAIT:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(total)
}
