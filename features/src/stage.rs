//! The feature stage of a job: register the sources, run the SQL on the cluster, add the
//! split, write the feature table as Parquet shards (one query per shard, all at once:
//! Ballista writes each `COPY` through one task), then compute the statistics the model
//! needs with SQL aggregates over the shards, and write `features.json` last.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Schema, UInt64Type};
use datafusion::prelude::{CsvReadOptions, JsonReadOptions, ParquetReadOptions, SessionContext};
use futures::StreamExt;
use halyard_core::csv;
use halyard_core::data::column_list;
use halyard_core::spec::{FeaturesSpec, SPLIT_COLUMN, SourceFormat, SourceSpec, SplitSpec};
use halyard_core::store::describe_store_error;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::error::{FeatureError, Result};

/// The view holding the feature table with its split column.
const FEATURES_VIEW: &str = "halyard_features";
/// The shards, read back for the statistics.
const OUTPUT_TABLE: &str = "halyard_output";
/// Most frequent values kept per categorical column.
const TOP_VALUES: usize = 1000;
/// Quantiles computed per numeric column.
const QUANTILES: [f64; 9] = [0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99];

/// `features.json`: the feature table's shards and statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureTable {
    /// The shards, in order.
    pub shards: Vec<Shard>,
    /// Rows in all shards.
    pub rows: u64,
    /// Rows per split part (`train`, `validation`, `test`).
    pub split_rows: BTreeMap<String, u64>,
    /// Columns and their Arrow types.
    pub columns: Vec<Column>,
    /// Statistics of the numeric columns over the rows outside the test part.
    pub numeric: Vec<NumericStats>,
    /// Statistics of the string columns over the rows outside the test part.
    pub categorical: Vec<CategoricalStats>,
    /// The queries that built the table, by step name.
    pub queries: Vec<(String, String)>,
}

/// One Parquet shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shard {
    /// File name within the features folder.
    pub file: String,
    /// Its rows.
    pub rows: u64,
}

/// A column of the feature table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Column {
    /// Name.
    pub name: String,
    /// Arrow type, as Arrow prints it.
    pub data_type: String,
}

/// Statistics of a numeric column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NumericStats {
    /// Column.
    pub column: String,
    /// Non-null values.
    pub count: u64,
    /// Mean.
    pub mean: Option<f64>,
    /// Population standard deviation.
    pub std: Option<f64>,
    /// Smallest value.
    pub min: Option<f64>,
    /// Largest value.
    pub max: Option<f64>,
    /// `(q, value)` pairs, approximate (t-digest).
    pub quantiles: Vec<(f64, f64)>,
}

/// Statistics of a string column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoricalStats {
    /// Column.
    pub column: String,
    /// Distinct non-null values.
    pub distinct: u64,
    /// The most frequent values with their counts, most frequent first.
    pub top: Vec<(String, u64)>,
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Rows of a one-column count result.
fn count_of(batches: &[RecordBatch]) -> u64 {
    batches
        .iter()
        .filter(|b| b.num_columns() > 0)
        .map(|b| {
            let c = cast(b.column(0), &DataType::UInt64).expect("a count casts to u64");
            c.as_primitive::<UInt64Type>().iter().flatten().sum::<u64>()
        })
        .sum()
}

/// Runs of a query that fails while executing, before its error stands.
const ATTEMPTS: u32 = 3;

/// Whether a query's error is in the data itself (a value its column's type cannot hold,
/// a row with the wrong number of fields): running the query again cannot help.
pub fn is_data_error(text: &str) -> bool {
    const MARKERS: [&str; 5] = [
        "Error while parsing value",
        "incorrect number of fields",
        "Parser error",
        "Cannot cast string",
        "Error parsing timestamp",
    ];
    MARKERS.iter().any(|m| text.contains(m))
}

/// Plan and run `sql`, running it again (up to [`ATTEMPTS`] times in all) when it fails
/// while executing: a query cancelled because an executor was lost (the SQL cluster
/// cancels them, `cluster::SqlScheduler::executor_lost`) then runs whole on the others. A
/// planning error (syntax, unknown column), a refusal (a key, a role, the data roots) and
/// an error in the data ([`is_data_error`]) fail at once.
pub async fn collect_retrying(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>> {
    let mut attempt = 1;
    loop {
        let df = ctx.sql(sql).await?;
        match df.collect().await {
            Ok(batches) => return Ok(batches),
            Err(e)
                if attempt < ATTEMPTS
                    && !halyard_core::auth::is_refusal(&e.to_string())
                    && !is_data_error(&e.to_string()) =>
            {
                tracing::warn!(attempt, error = %crate::error::describe(&e), "sql query failed while running; running it again");
                tokio::time::sleep(std::time::Duration::from_secs(u64::from(attempt))).await;
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Register every source of the spec on `ctx`, checking that each exists and that a
/// folder's files share one schema.
pub async fn register_sources(ctx: &SessionContext, spec: &FeaturesSpec) -> Result<()> {
    for src in &spec.sources {
        register_source(ctx, src).await?;
    }
    Ok(())
}

fn source_error(src: &SourceSpec, message: impl Into<String>) -> FeatureError {
    FeatureError::Source {
        name: src.name.clone(),
        location: src.path.clone(),
        message: message.into(),
    }
}

/// The object store, URL and path of `location`, one of `src`'s.
fn store_of(
    ctx: &SessionContext,
    src: &SourceSpec,
    location: &str,
) -> Result<(Arc<dyn ObjectStore>, Url, ObjectPath)> {
    let url = Url::parse(location).map_err(|e| source_error(src, format!("not a URL: {e}")))?;
    let store = ctx
        .runtime_env()
        .object_store_registry
        .get_store(&url)
        .map_err(|e| source_error(src, crate::error::describe(&e)))?;
    let path =
        ObjectPath::from_url_path(url.path()).map_err(|e| source_error(src, e.to_string()))?;
    Ok((store, url, path))
}

/// The files of a source: the file itself, or a folder's files.
async fn source_files(ctx: &SessionContext, src: &SourceSpec) -> Result<Vec<String>> {
    let (store, url, path) = store_of(ctx, src, &src.path)?;
    if !src.path.ends_with('/') {
        return match store.head(&path).await {
            Ok(_) => Ok(vec![src.path.clone()]),
            Err(object_store::Error::NotFound { .. }) => Err(source_error(
                src,
                "does not exist; check the path (relative paths are relative to the spec file)",
            )),
            Err(e) => Err(source_error(src, describe_store_error(&e))),
        };
    }
    let mut files = Vec::new();
    let mut listing = store.list(Some(&path));
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(|e| source_error(src, describe_store_error(&e)))?;
        let name = meta.location.filename().unwrap_or_default();
        if name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        let mut u = url.clone();
        u.set_path(&format!("/{}", meta.location));
        files.push(u.to_string());
    }
    files.sort();
    if files.is_empty() {
        return Err(source_error(src, "the folder is empty or does not exist"));
    }
    Ok(files)
}

fn extension(path: &str, format: SourceFormat) -> String {
    let name = path.rsplit('/').next().unwrap_or_default();
    match name.rsplit_once('.') {
        Some((_, ext)) if !path.ends_with('/') => format!(".{ext}"),
        _ => format!(".{}", format.as_str()),
    }
}

async fn register_file(
    ctx: &SessionContext,
    table: &str,
    path: &str,
    src: &SourceSpec,
    format: SourceFormat,
    schema: Option<&Schema>,
) -> Result<()> {
    let ext = extension(path, format);
    let r = match format {
        SourceFormat::Csv => {
            let mut opts = CsvReadOptions::new()
                .delimiter(src.delimiter_byte())
                .has_header(src.has_header)
                .file_extension(&ext);
            if let Some(s) = schema {
                opts = opts.schema(s);
            }
            ctx.register_csv(table, path, opts).await
        }
        SourceFormat::Parquet => {
            ctx.register_parquet(
                table,
                path,
                ParquetReadOptions::default().file_extension(&ext),
            )
            .await
        }
        SourceFormat::Json => {
            ctx.register_json(table, path, JsonReadOptions::default().file_extension(&ext))
                .await
        }
    };
    r.map_err(|e| source_error(src, crate::error::describe(&e)))
}

/// A CSV file's columns by the source's rules ([`halyard_core::csv`], as `[data]` reads
/// them): a file up to 64 MiB is read whole — its types inferred from every row, every
/// value checked (an error names its line and column), dates in `date_format` found;
/// a larger one is typed from stretches spread across it and checked in its first.
async fn csv_schema(ctx: &SessionContext, src: &SourceSpec, file: &str) -> Result<Schema> {
    let (store, _, path) = store_of(ctx, src, file)?;
    let at = |message: String| FeatureError::Source {
        name: src.name.clone(),
        location: file.to_string(),
        message,
    };
    let store_error = |e: object_store::Error| at(describe_store_error(&e));
    let size = store.head(&path).await.map_err(store_error)?.size as usize;
    let rules = src.csv_rules();
    if size <= csv::INFER_WHOLE_BYTES {
        let bytes = store.get(&path).await.map_err(store_error)?.bytes().await;
        let bytes = bytes.map_err(store_error)?;
        let schema = rules.infer(&bytes).map_err(at)?;
        return Ok(rules.read(&bytes, &schema).map_err(at)?.0.as_ref().clone());
    }
    let ranges: Vec<std::ops::Range<u64>> = csv::sample_offsets(size)
        .into_iter()
        .map(|o| o as u64..(o + csv::SAMPLE_PART_BYTES).min(size) as u64)
        .collect();
    let head = store
        .get_ranges(&path, &ranges)
        .await
        .map_err(store_error)?;
    let parts: Vec<&[u8]> = head.iter().map(|b| &b[..]).collect();
    let schema = rules.infer(&csv::spread_sample(&parts)).map_err(at)?;
    // The first stretch's complete lines, read with those types, check the values and
    // find the dates (its line numbers are the file's).
    let first = csv::spread_sample(&parts[..1]);
    Ok(rules.read(&first, &schema).map_err(at)?.0.as_ref().clone())
}

/// Every column of `schema` as text: how the raw CSV is read before [`typed_columns`]
/// turns markers into missing values and casts.
fn as_text(schema: &Schema) -> Schema {
    Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| {
                f.as_ref()
                    .clone()
                    .with_data_type(DataType::Utf8)
                    .with_nullable(true)
            })
            .collect::<Vec<_>>(),
    )
}

/// The select list that gives `raw`'s columns `schema`'s types: for a CSV source, a cell
/// matching a missing-value marker (or blank) is null, and text is cast (dates in
/// `date_format` parsed with it); for Parquet and JSON the stated types are cast.
fn typed_columns(schema: &Schema, src: &SourceSpec, format: SourceFormat) -> String {
    let blanks = literal(csv::BLANKS);
    let markers: Vec<String> = csv::missing_cells(&src.missing).map(literal).collect();
    schema
        .fields()
        .iter()
        .map(|f| {
            let c = quote(f.name());
            let ty = f.data_type();
            if format != SourceFormat::Csv {
                return if src.types.contains_key(f.name()) {
                    format!("arrow_cast({c}, {}) AS {c}", literal(&ty.to_string()))
                } else {
                    c
                };
            }
            if ty == &DataType::Null {
                // Every cell empty (Arrow reads such a column as nulls): DataFusion cannot
                // cast text to Null.
                return format!("NULL AS {c}");
            }
            let trimmed = format!("btrim({c}, {blanks})");
            let value = match (ty, &src.date_format) {
                (DataType::Utf8, _) => c.clone(),
                (DataType::Date32, Some(fmt)) => format!(
                    "to_date({trimmed}, {}, {})",
                    literal(fmt),
                    literal(csv::ISO_DATE)
                ),
                (DataType::Timestamp(..), Some(fmt)) => format!(
                    "to_timestamp_millis({trimmed}, {}, {}, {})",
                    literal(fmt),
                    literal(csv::ISO_TIMESTAMPS[0]),
                    literal(csv::ISO_TIMESTAMPS[1])
                ),
                _ => format!("arrow_cast({trimmed}, {})", literal(&ty.to_string())),
            };
            format!(
                "CASE WHEN {trimmed} IN ({}) THEN NULL ELSE {value} END AS {c}",
                markers.join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Register one source table (what `halyard sql --table` does too). A CSV source is read
/// as text and typed by a view ([`typed_columns`]): DataFusion's CSV reader applies
/// missing-value markers only while inferring types, not while reading.
pub async fn register_source(ctx: &SessionContext, src: &SourceSpec) -> Result<()> {
    let files = source_files(ctx, src).await?;
    let format = match src.format {
        Some(f) => f,
        // A folder: its first file's name tells.
        None => SourceSpec {
            path: files[0].clone(),
            ..src.clone()
        }
        .resolved_format("[features]")?,
    };
    // Every file must have the first one's columns: a mismatch names both files.
    let probe = format!("{}__probe", src.name);
    let mut first: Option<(String, Schema)> = None;
    for file in &files {
        let schema = if format == SourceFormat::Csv {
            csv_schema(ctx, src, file).await?
        } else if files.len() > 1 || !src.types.is_empty() {
            register_file(ctx, &probe, file, src, format, None).await?;
            let schema = ctx
                .table(probe.as_str())
                .await?
                .schema()
                .inner()
                .as_ref()
                .clone();
            ctx.deregister_table(probe.as_str())?;
            schema
        } else {
            break;
        };
        match &first {
            None => first = Some((file.clone(), schema)),
            Some((f0, s0)) => {
                let names = |s: &Schema| {
                    s.fields()
                        .iter()
                        .map(|f| format!("{} {}", f.name(), f.data_type()))
                        .collect::<Vec<_>>()
                };
                if names(s0) != names(&schema) {
                    return Err(source_error(
                        src,
                        format!(
                            "files differ in their columns: {f0} has [{}] but {file} has [{}]; \
                             make every file of a source share one schema",
                            names(s0).join(", "),
                            names(&schema).join(", ")
                        ),
                    ));
                }
            }
        }
    }
    let table = if src.row_index.is_some() {
        format!("{}__file", src.name)
    } else {
        src.name.clone()
    };
    match first {
        // A CSV source, or another with stated types: read raw, typed by a view.
        Some((_, schema)) if format == SourceFormat::Csv || !src.types.is_empty() => {
            let raw = format!("{}__raw", src.name);
            let schema = if format == SourceFormat::Csv {
                schema
            } else {
                src.csv_rules()
                    .with_stated_types(schema)
                    .map_err(|m| source_error(src, m))?
            };
            let reading = (format == SourceFormat::Csv).then(|| as_text(&schema));
            register_file(ctx, &raw, &src.path, src, format, reading.as_ref()).await?;
            ctx.sql(&format!(
                "CREATE VIEW {} AS SELECT {} FROM {}",
                quote(&table),
                typed_columns(&schema, src, format),
                quote(&raw)
            ))
            .await?;
        }
        _ => register_file(ctx, &table, &src.path, src, format, None).await?,
    }
    if let Some(idx) = &src.row_index {
        // One file, read as one partition (the stage turns off file-scan repartitioning),
        // so row_number() counts rows in file order.
        let sql = format!(
            "CREATE VIEW {} AS SELECT CAST(row_number() OVER () - 1 AS BIGINT) AS {}, * FROM {}",
            quote(&src.name),
            quote(idx),
            quote(&table)
        );
        ctx.sql(&sql).await?;
    }
    Ok(())
}

/// Create the pipeline's views; returns the name of the one holding the feature table.
pub async fn create_views(ctx: &SessionContext, spec: &FeaturesSpec) -> Result<String> {
    let mut last = String::new();
    for (name, sql) in spec.queries() {
        let body = sql.trim().trim_end_matches(';');
        let view = if spec.sql.is_some() {
            "halyard_query"
        } else {
            name
        };
        ctx.sql(&format!("CREATE VIEW {} AS {body}", quote(view)))
            .await
            .map_err(|e| {
                FeatureError::Sql(format!("step {name:?}: {}", crate::error::describe(&e)))
            })?;
        last = view.to_string();
    }
    Ok(last)
}

fn split_case(split: Option<&SplitSpec>) -> String {
    let Some(split) = split else {
        return "'train'".into();
    };
    match split {
        SplitSpec::Hash {
            key,
            test_percent,
            validation_percent,
        } => {
            let b = format!("hash_bucket({}, 10000)", quote(key));
            let t = (test_percent * 100.0).round() as i64;
            let v = t + (validation_percent * 100.0).round() as i64;
            format!(
                "CASE WHEN {b} < {t} THEN 'test' WHEN {b} < {v} THEN 'validation' ELSE 'train' END"
            )
        }
        SplitSpec::Modulo {
            key,
            every,
            test_remainder,
            validation_remainder,
        } => {
            let m = format!("(CAST({} AS BIGINT) % {every})", quote(key));
            let valid = validation_remainder
                .map(|v| format!(" WHEN {m} = {v} THEN 'validation'"))
                .unwrap_or_default();
            format!("CASE WHEN {m} = {test_remainder} THEN 'test'{valid} ELSE 'train' END")
        }
        SplitSpec::Time {
            column,
            test_from,
            validation_from,
        } => {
            let c = quote(column);
            let valid = validation_from
                .as_ref()
                .map(|v| format!(" WHEN {c} >= {} THEN 'validation'", literal(v)))
                .unwrap_or_default();
            format!(
                "CASE WHEN {c} >= {} THEN 'test'{valid} ELSE 'train' END",
                literal(test_from)
            )
        }
    }
}

/// Settings the stage needs on its context (a file's row order needs one scan partition).
pub async fn prepare(ctx: &SessionContext, spec: &FeaturesSpec) -> Result<()> {
    if spec.sources.iter().any(|s| s.row_index.is_some()) {
        ctx.sql("SET datafusion.optimizer.repartition_file_scans = false")
            .await?;
    }
    Ok(())
}

/// Run the whole stage on `ctx`, writing into the folder `out_url` (`file://…` or
/// `s3://…`). `label` (may be empty) must be a column of the output. `column_stats`: also
/// compute each column's statistics for the manifest (moments, quantiles, vocabularies;
/// a scoring job skips them). Progress lines go to `progress`. Returns the manifest, which
/// the caller writes as `features.json`.
pub async fn run_stage(
    ctx: &SessionContext,
    spec: &FeaturesSpec,
    label: &str,
    out_url: &str,
    column_stats: bool,
    progress: &mut (dyn FnMut(String) + Send),
) -> Result<FeatureTable> {
    prepare(ctx, spec).await?;
    register_sources(ctx, spec).await?;
    let names: Vec<&str> = spec.sources.iter().map(|s| s.name.as_str()).collect();
    progress(format!("features: sources {} registered", names.join(", ")));
    let output = create_views(ctx, spec).await?;
    let schema = ctx.table(output.as_str()).await?.schema().inner().clone();
    let need = |column: &str, role: &'static str| -> Result<()> {
        if schema.field_with_name(column).is_err() {
            return Err(FeatureError::MissingColumn {
                column: column.to_string(),
                role,
                available: column_list(&schema),
            });
        }
        Ok(())
    };
    if !label.is_empty() {
        need(label, "the [data] label")?;
    }
    if let Some(split) = &spec.split {
        need(split.column(), "the split's key")?;
    }
    let shard_key = spec
        .shard_key
        .as_deref()
        .or(spec.split.as_ref().map(SplitSpec::column))
        .unwrap_or_default();
    if spec.shards > 1 {
        need(shard_key, "the shard key")?;
    }
    if schema.field_with_name(SPLIT_COLUMN).is_ok() {
        return Err(FeatureError::Sql(format!(
            "the feature query's output already has a column {SPLIT_COLUMN:?}, which the stage adds; rename it"
        )));
    }
    ctx.sql(&format!(
        "CREATE VIEW {FEATURES_VIEW} AS SELECT *, {} AS {SPLIT_COLUMN} FROM {}",
        split_case(spec.split.as_ref()),
        quote(&output)
    ))
    .await?;
    let out = out_url.trim_end_matches('/');
    let n = spec.shards;
    progress(format!("features: writing {n} shard(s) to {out}"));
    let writes = (0..n).map(|i| {
        let file = halyard_core::store::feature_shard_file(i);
        let filter = if n > 1 {
            format!(" WHERE hash_bucket({}, {n}) = {i}", quote(shard_key))
        } else {
            String::new()
        };
        let sql = format!(
            "COPY (SELECT * FROM {FEATURES_VIEW}{filter}) TO {} STORED AS PARQUET",
            literal(&halyard_core::store::feature_shard_path(out, &file))
        );
        async move {
            let batches = collect_retrying(ctx, &sql).await?;
            Ok::<_, FeatureError>(Shard {
                file,
                rows: count_of(&batches),
            })
        }
    });
    let shards = futures::future::try_join_all(writes).await?;
    let rows: u64 = shards.iter().map(|s| s.rows).sum();
    progress(format!("features: {rows} rows written"));
    let mut table = statistics(ctx, &format!("{out}/"), shards, column_stats).await?;
    table.queries = spec
        .queries()
        .into_iter()
        .map(|(n, q)| (n.to_string(), q.to_string()))
        .collect();
    let dates = table
        .columns
        .iter()
        .filter(|c| c.data_type.starts_with("Date") || c.data_type.starts_with("Timestamp"))
        .count();
    progress(format!(
        "features: statistics of {} numeric, {} string and {dates} date columns; split {}",
        table.numeric.len(),
        table.categorical.len(),
        table
            .split_rows
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(table)
}

/// Statistics over the written shards: three queries, run at once (the split's counts,
/// and with `column_stats` every numeric column's moments and quantiles and every string
/// column's vocabulary).
async fn statistics(
    ctx: &SessionContext,
    dir: &str,
    shards: Vec<Shard>,
    column_stats: bool,
) -> Result<FeatureTable> {
    ctx.register_parquet(OUTPUT_TABLE, dir, ParquetReadOptions::default())
        .await?;
    let schema = ctx.table(OUTPUT_TABLE).await?.schema().inner().clone();
    let columns: Vec<Column> = schema
        .fields()
        .iter()
        .map(|f| Column {
            name: f.name().clone(),
            data_type: f.data_type().to_string(),
        })
        .collect();
    let fit = format!("FROM {OUTPUT_TABLE} WHERE {SPLIT_COLUMN} <> 'test'");
    let numeric_cols: Vec<&str> = schema
        .fields()
        .iter()
        .filter(|f| column_stats && f.data_type().is_numeric() && f.name() != SPLIT_COLUMN)
        .map(|f| f.name().as_str())
        .collect();
    let string_cols: Vec<&str> = schema
        .fields()
        .iter()
        .filter(|f| {
            column_stats
                && matches!(
                    f.data_type(),
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Boolean
                )
                && f.name() != SPLIT_COLUMN
        })
        .map(|f| f.name().as_str())
        .collect();
    let split_sql =
        format!("SELECT {SPLIT_COLUMN}, count(*) FROM {OUTPUT_TABLE} GROUP BY {SPLIT_COLUMN}");
    let (split_rows, numeric, categorical) = futures::future::try_join3(
        collect_retrying(ctx, &split_sql),
        numeric_stats(ctx, &fit, &numeric_cols),
        vocabularies(ctx, &fit, &string_cols),
    )
    .await?;
    let mut parts = BTreeMap::new();
    for b in &split_rows {
        let names = cast(b.column(0), &DataType::Utf8)?;
        let names = names.as_string::<i32>();
        let counts = cast(b.column(1), &DataType::UInt64)?;
        let counts = counts.as_primitive::<UInt64Type>();
        for i in 0..b.num_rows() {
            parts.insert(names.value(i).to_string(), counts.value(i));
        }
    }
    let rows = shards.iter().map(|s| s.rows).sum();
    Ok(FeatureTable {
        shards,
        rows,
        split_rows: parts,
        columns,
        numeric,
        categorical,
        queries: Vec::new(),
    })
}

/// Moments, extremes and approximate quantiles of `cols`, in one aggregate query.
async fn numeric_stats(
    ctx: &SessionContext,
    fit: &str,
    cols: &[&str],
) -> Result<Vec<NumericStats>> {
    if cols.is_empty() {
        return Ok(Vec::new());
    }
    let per = 5 + QUANTILES.len();
    let exprs: Vec<String> = cols
        .iter()
        .flat_map(|c| {
            let q = quote(c);
            let f = format!("CAST({q} AS DOUBLE)");
            let mut v = vec![
                format!("CAST(count({q}) AS DOUBLE)"),
                format!("avg({f})"),
                format!("stddev_pop({f})"),
                format!("min({f})"),
                format!("max({f})"),
            ];
            v.extend(
                QUANTILES
                    .iter()
                    .map(|p| format!("approx_percentile_cont({p}) WITHIN GROUP (ORDER BY {f})")),
            );
            v
        })
        .collect();
    let batches = collect_retrying(ctx, &format!("SELECT {} {fit}", exprs.join(", "))).await?;
    let row: Vec<Option<f64>> = match batches.iter().find(|b| b.num_rows() > 0) {
        Some(b) => (0..b.num_columns())
            .map(|i| {
                let c = cast(b.column(i), &DataType::Float64).ok()?;
                let c = c.as_primitive::<Float64Type>();
                (!c.is_null(0)).then(|| c.value(0))
            })
            .collect(),
        None => vec![None; exprs.len()],
    };
    Ok(cols
        .iter()
        .enumerate()
        .map(|(k, c)| {
            let v = &row[k * per..(k + 1) * per];
            NumericStats {
                column: c.to_string(),
                count: v[0].unwrap_or(0.0) as u64,
                mean: v[1],
                std: v[2],
                min: v[3],
                max: v[4],
                quantiles: QUANTILES
                    .iter()
                    .zip(&v[5..])
                    .filter_map(|(q, x)| x.map(|x| (*q, x)))
                    .collect(),
            }
        })
        .collect())
}

/// The [`TOP_VALUES`] most frequent values of each of `cols` with their counts, and each
/// column's distinct count, in one query (a `UNION ALL` of the counts, ranked per column).
async fn vocabularies(
    ctx: &SessionContext,
    fit: &str,
    cols: &[&str],
) -> Result<Vec<CategoricalStats>> {
    if cols.is_empty() {
        return Ok(Vec::new());
    }
    let counts: Vec<String> = cols
        .iter()
        .enumerate()
        .map(|(k, c)| {
            let q = quote(c);
            format!(
                "SELECT {k} AS c, CAST({q} AS VARCHAR) AS v, count(*) AS n {fit} AND {q} IS NOT NULL GROUP BY {q}"
            )
        })
        .collect();
    // One column: no PARTITION BY (its key would be a constant, which Ballista's planner
    // drops from the sort the window needs, failing the query).
    let by = if cols.len() > 1 {
        "PARTITION BY c "
    } else {
        ""
    };
    let sql = format!(
        "SELECT c, v, n, d FROM (\
           SELECT c, v, n, count(*) OVER ({by}) AS d, \
                  row_number() OVER ({by}ORDER BY n DESC, v) AS r \
           FROM ({}) counts) ranked \
         WHERE r <= {TOP_VALUES}",
        counts.join(" UNION ALL ")
    );
    let mut out: Vec<CategoricalStats> = cols
        .iter()
        .map(|c| CategoricalStats {
            column: c.to_string(),
            distinct: 0,
            top: Vec::new(),
        })
        .collect();
    for b in &collect_retrying(ctx, &sql).await? {
        let c = cast(b.column(0), &DataType::UInt64)?;
        let c = c.as_primitive::<UInt64Type>();
        let v = cast(b.column(1), &DataType::Utf8)?;
        let v = v.as_string::<i32>();
        let n = cast(b.column(2), &DataType::UInt64)?;
        let n = n.as_primitive::<UInt64Type>();
        let d = cast(b.column(3), &DataType::UInt64)?;
        let d = d.as_primitive::<UInt64Type>();
        for i in 0..b.num_rows() {
            let stats = &mut out[c.value(i) as usize];
            stats.top.push((v.value(i).to_string(), n.value(i)));
            stats.distinct = d.value(i);
        }
    }
    for stats in &mut out {
        stats
            .top
            .sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{collect_retrying, is_data_error, register_source};
    use crate::session::{DataAccess, local_context};

    #[tokio::test]
    async fn a_source_whose_decimals_start_late_reads_as_decimals() {
        // Whole numbers for 6,000 rows, then a decimal: DataFusion's default inference
        // (1,000 rows) read the column as integers and the query failed at that row.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("econ.csv");
        let mut csv = String::from("id,employed\n");
        for i in 0..6000 {
            csv.push_str(&format!("{i},{}\n", 5000 + i % 300));
        }
        csv.push_str("6000,5228.1\n");
        std::fs::write(&path, csv).unwrap();
        let ctx = local_context(&DataAccess::unconfined(&Default::default()), 2).unwrap();
        let src = halyard_core::spec::SourceSpec::new("econ", format!("file://{}", path.display()));
        register_source(&ctx, &src).await.unwrap();
        assert_eq!(
            one_value(&ctx, "SELECT max(employed) AS m FROM econ").await,
            "5299.0"
        );
    }

    /// The one value of a one-row, one-column query, as text.
    async fn one_value(ctx: &datafusion::prelude::SessionContext, sql: &str) -> String {
        let batches = collect_retrying(ctx, sql).await.unwrap();
        let v =
            arrow::compute::cast(batches[0].column(0), &arrow::datatypes::DataType::Utf8).unwrap();
        v.as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap()
            .value(0)
            .to_string()
    }

    #[tokio::test]
    async fn a_large_source_is_typed_from_stretches_across_it_and_markers_are_missing() {
        // 70 MiB of whole numbers with `NA` cells, decimals only in the last rows: the
        // head alone would read integers (and DataFusion would read `NA` as a value).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.csv");
        let mut csv = String::from("id,amount,Note\n");
        let mut i = 0u64;
        while csv.len() < 70 << 20 {
            let amount = if i % 1000 == 7 {
                "NA".to_string()
            } else {
                (i % 500).to_string()
            };
            csv.push_str(&format!("{i},{amount},x\n"));
            i += 1;
        }
        for j in 0..3000 {
            csv.push_str(&format!("{},{}.5, ?\n", i + j, j % 100));
        }
        std::fs::write(&path, csv).unwrap();
        let ctx = local_context(&DataAccess::unconfined(&Default::default()), 2).unwrap();
        let src = halyard_core::spec::SourceSpec::new("big", format!("file://{}", path.display()));
        register_source(&ctx, &src).await.unwrap();
        let schema = ctx.table("big").await.unwrap().schema().inner().clone();
        assert_eq!(
            schema.field(1).data_type(),
            &arrow::datatypes::DataType::Float64
        );
        assert_eq!(
            one_value(&ctx, "SELECT max(amount - floor(amount)) FROM big").await,
            "0.5"
        );
        let missing = one_value(&ctx, "SELECT count(*) - count(amount) FROM big").await;
        assert_eq!(missing, (i / 1000 + u64::from(i % 1000 > 7)).to_string());
        // `?` (with blanks around it) is missing in a text column too.
        assert_eq!(
            one_value(&ctx, "SELECT count(*) - count(\"Note\") FROM big").await,
            "3000"
        );
    }

    #[tokio::test]
    async fn an_empty_column_times_and_markers_read_as_arrow_would() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        std::fs::write(
            &path,
            "a,empty,c,at\n1,,x,2024-01-02T10:00:00\n2,,NA,2024-01-03T11:30:00\n3, ,y,\n",
        )
        .unwrap();
        let ctx = local_context(&DataAccess::unconfined(&Default::default()), 2).unwrap();
        let src = halyard_core::spec::SourceSpec::new("t", format!("file://{}", path.display()));
        register_source(&ctx, &src).await.unwrap();
        let types = "SELECT arrow_typeof(empty), arrow_typeof(at), count(c), count(at) FROM t \
                     GROUP BY arrow_typeof(empty), arrow_typeof(at)";
        let batches = collect_retrying(&ctx, types).await.unwrap();
        let row: Vec<String> = (0..4)
            .map(|i| {
                let v =
                    arrow::compute::cast(batches[0].column(i), &arrow::datatypes::DataType::Utf8)
                        .unwrap();
                v.as_any()
                    .downcast_ref::<arrow::array::StringArray>()
                    .unwrap()
                    .value(0)
                    .to_string()
            })
            .collect();
        assert_eq!(row, ["Null", "Timestamp(s)", "2", "2"]);
    }

    #[test]
    fn errors_in_the_data_are_not_retried() {
        assert!(is_data_error(
            "Arrow error: Parser error: Error while parsing value '5228.1' as type 'Int64' for column 19 at line 7764"
        ));
        assert!(is_data_error(
            "Arrow error: Csv error: incorrect number of fields for line 3, expected 3 got 2"
        ));
        assert!(!is_data_error("executor lost: connection refused"));
    }
}
