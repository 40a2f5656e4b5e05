//! A task's input: its data source read into Arrow, or its feature stage run on the
//! cluster's SQL (Ballista) and the shards read back; series for forecasters.

use bytes::Bytes;
use datafusion::prelude::SessionContext;
use halyard_core::coord::Coordinator;
use halyard_core::data::digest;
use halyard_core::data::{read_parquet_parts, read_table, sort_table};
use halyard_core::spec::{ForecastSpec, JobSpec, SeriesLayout};
use halyard_core::store::{Store, feature_shard_path, features_manifest_path, read_url};
use halyard_features::session::{DataAccess, remote_context};
use halyard_features::stage::FeatureTable;
use halyard_models::forecast::data::{from_long_table, read_wide_csv};
use halyard_models::forecast::{Series, split_last};

use crate::error::{ExecutorError, Result};

/// Partitions per stage of a feature query on the cluster.
const SQL_PARTITIONS: usize = 4;

/// The leader's SQL endpoint, waiting a little for a new leader to advertise it.
async fn sql_endpoint(coord: &Coordinator) -> Result<String> {
    for _ in 0..40 {
        if let Some(e) = coord.sql_endpoint().await? {
            return Ok(e);
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    Err(ExecutorError::Sql(
        "no SQL scheduler is advertised: the leading scheduler runs one; check its log".into(),
    ))
}

/// A context on the cluster's SQL (Ballista) scheduler.
pub(crate) async fn sql_context(
    coord: &Coordinator,
    token: &str,
    tls: Option<&halyard_core::tls::Tls>,
    access: &DataAccess,
    log: &mut (dyn FnMut(String) + Send),
) -> Result<SessionContext> {
    let endpoint = sql_endpoint(coord).await?;
    log(format!(
        "features: running the SQL on the cluster (scheduler {endpoint})"
    ));
    Ok(remote_context(
        &endpoint,
        Some(token),
        tls.map(halyard_core::tls::Tls::tonic_client),
        access,
        SQL_PARTITIONS,
    )
    .await?)
}

/// What a job trains on: its source file, or the Parquet shards its feature stage wrote.
#[derive(Debug, Clone)]
pub struct Input {
    /// The source file's bytes (one part), or the feature table's shards.
    pub parts: Vec<Bytes>,
    /// Forecasting: the test source's bytes.
    pub test: Option<Bytes>,
    /// The feature table's location and identity (`sha256:` of its manifest), when the
    /// parts are its shards.
    pub features: Option<(String, String)>,
    /// Rows of every shard of the feature table (all of them, also those not read).
    pub shard_rows: Vec<u64>,
    /// The shard number of each part.
    pub shards: Vec<usize>,
}

impl Input {
    /// Where the data came from, for the model's lineage.
    pub fn location<'a>(&'a self, spec: &'a JobSpec) -> &'a str {
        self.features.as_ref().map_or(&spec.data.source, |(l, _)| l)
    }

    /// The rows as one table.
    pub fn table(&self, spec: &JobSpec) -> Result<halyard_core::data::Table> {
        let (table, origin) = match &self.features {
            Some((location, digest)) => (
                read_parquet_parts(&self.parts, location, digest.clone())?,
                location.as_str(),
            ),
            None => (
                read_table(&self.parts[0], &spec.data, &spec.data.source)?,
                spec.data.source.as_str(),
            ),
        };
        // Series are read in time order. Shards hold their rows in whatever order the
        // engine wrote them: a feature table is ordered by every column, so the same table
        // trains the same model on any engine.
        let mut by: Vec<String> = spec
            .forecast
            .as_ref()
            .and_then(|f| Some(vec![f.id_column.clone()?, f.time_column.clone()?]))
            .unwrap_or_default();
        if self.features.is_some() {
            for f in table.schema.fields() {
                if !by.contains(f.name()) {
                    by.push(f.name().clone());
                }
            }
        }
        if by.is_empty() {
            return Ok(table);
        }
        let by: Vec<&str> = by.iter().map(String::as_str).collect();
        Ok(sort_table(table, &by, origin)?)
    }
}

/// Read a job's data source (and its forecast test source), logging each read. A job with
/// `[features]` reads its feature table instead. Each location must lie under `access`'s
/// roots.
pub async fn read_inputs(
    spec: &JobSpec,
    access: &DataAccess,
    log: &mut (dyn FnMut(String) + Send),
) -> Result<Input> {
    let source = &spec.data.source;
    access.roots.check_url(source)?;
    let bytes = read_url(source, &access.s3).await?;
    log(format!("read {} bytes from {source}", bytes.len()));
    Ok(Input {
        parts: vec![bytes],
        test: read_test_source(spec, access, log).await?,
        features: None,
        shard_rows: Vec::new(),
        shards: Vec::new(),
    })
}

pub(crate) async fn read_test_source(
    spec: &JobSpec,
    access: &DataAccess,
    log: &mut (dyn FnMut(String) + Send),
) -> Result<Option<Bytes>> {
    Ok(
        match spec.forecast.as_ref().and_then(|f| f.test_source.clone()) {
            Some(url) => {
                access.roots.check_url(&url)?;
                let b = read_url(&url, &access.s3).await?;
                log(format!("read {} bytes from {url}", b.len()));
                Some(b)
            }
            None => None,
        },
    )
}

/// Read the shards of the feature table whose manifest (`features.json`'s bytes) is
/// `manifest`: all of them, or with `only = Some((rank, workers))` those whose number is
/// `rank` modulo `workers`.
pub(crate) async fn read_feature_table(
    store: &Store,
    dir: &str,
    manifest: &Bytes,
    only: Option<(usize, usize)>,
    log: &mut (dyn FnMut(String) + Send),
) -> Result<Input> {
    let manifest_path = features_manifest_path(dir);
    let table: FeatureTable =
        serde_json::from_slice(manifest).map_err(|e| halyard_features::FeatureError::Output {
            location: store.url_of(&manifest_path),
            message: e.to_string(),
        })?;
    let mut parts = Vec::with_capacity(table.shards.len());
    let mut shards = Vec::with_capacity(table.shards.len());
    for (i, shard) in table.shards.iter().enumerate() {
        if only.is_none_or(|(rank, workers)| i % workers == rank) {
            parts.push(store.get(&feature_shard_path(dir, &shard.file)).await?);
            shards.push(i);
        }
    }
    let read: usize = parts.iter().map(Bytes::len).sum();
    log(format!(
        "features: read {} of {} shard(s) ({} rows in all), {read} bytes",
        parts.len(),
        table.shards.len(),
        table.rows
    ));
    Ok(Input {
        parts,
        test: None,
        features: Some((store.url_of(dir), digest(manifest))),
        shard_rows: table.shards.iter().map(|s| s.rows).collect(),
        shards,
    })
}

/// A forecasting job's series.
pub struct JobSeries {
    /// Histories to train on.
    pub train: Vec<Series>,
    /// Their true futures, for the test metrics.
    pub test: Vec<Series>,
    /// Series in the source.
    pub in_source: usize,
    /// `sha256:<hex>` of the source.
    pub digest: String,
}

/// Training and test series of a forecasting job: the test source's futures, or else the
/// last `horizon` points of every series held out.
pub fn read_series(input: &Input, spec: &JobSpec, f: &ForecastSpec) -> Result<JobSeries> {
    let source = input.location(spec);
    let (series, digest) = match f.layout {
        SeriesLayout::Wide => (
            read_wide_csv(&String::from_utf8_lossy(&input.parts[0]), source)?,
            digest(&input.parts[0]),
        ),
        SeriesLayout::Long => {
            let table = input.table(spec)?;
            let id = f.id_column.clone().unwrap_or_default();
            let value = f.value_column.clone().unwrap_or_default();
            (
                from_long_table(&table.batches, &id, &value, &f.covariates)?,
                table.digest,
            )
        }
    };
    let in_source = series.len();
    let (train, test) = match &input.test {
        Some(t) => {
            let origin = f.test_source.clone().unwrap_or_default();
            (series, read_wide_csv(&String::from_utf8_lossy(t), &origin)?)
        }
        None => split_last(series, f.horizon),
    };
    Ok(JobSeries {
        train,
        test,
        in_source,
        digest,
    })
}
