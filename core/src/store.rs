//! Object storage: `file://` (default) and `s3://`, through `object_store`, and the
//! artifact layout. Only this module knows where things live in a store.
//!
//! Layout under a store's base URL:
//!
//! ```text
//! models/<name>/<version>/model.safetensors
//! models/<name>/<version>/manifest.json      written last: its presence marks a whole artifact
//! jobs/<job>/features/part-NNNNN.parquet      the feature stage's shards
//! jobs/<job>/features/features.json           written last: shards, row counts, statistics
//! jobs/<job>/checkpoint/latest.ckpt           a data-parallel job's last checkpoint
//! jobs/<job>/scores/…                         a scoring job's scores
//! audiences/<name>/<version>/…                an audience version
//! events/<model>/hour=<hour>/<node>-<seq>.parquet   the event log
//! ```
//!
//! What no record references any more is collected by [`crate::gc`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, ObjectStore, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// S3 settings; unset fields fall back to the usual AWS environment variables
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// Endpoint URL of an S3-compatible server, such as `http://127.0.0.1:9000`.
    pub endpoint: Option<String>,
    /// Region; `us-east-1` when unset anywhere.
    pub region: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key. Never logged or shown.
    pub secret_access_key: Option<String>,
    /// CA certificates (a PEM bundle) trusted for an `https://` endpoint, beside the
    /// system's.
    pub ca_file: Option<std::path::PathBuf>,
    /// Seconds a request is retried, with backoff and jitter, while the server cannot be
    /// reached or answers with a server error; unset: [`DEFAULT_S3_RETRY_SECS`].
    pub retry_secs: Option<u64>,
}

/// How long an S3 request is retried by default, seconds: an S3 server restarted or
/// briefly unreachable costs a task this long at most before it fails.
pub const DEFAULT_S3_RETRY_SECS: u64 = 120;

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("ca_file", &self.ca_file)
            .field("retry_secs", &self.retry_secs)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// One object of a [`Store::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its path relative to the store's base.
    pub rel: String,
    /// Bytes.
    pub size: u64,
    /// Last written, ms since the epoch.
    pub modified_ms: i64,
}

/// An object store with a base location: everything is read and written relative to it.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    base_url: String,
    prefix: ObjectPath,
    /// Seals what is written and opens what is read (client-side encryption).
    sealer: Option<Arc<crate::seal::Sealer>>,
    /// A `file://` store's folder: writes check the room on its disk first.
    local: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("url", &self.base_url)
            .finish()
    }
}

fn map_err(location: &str, e: object_store::Error) -> Error {
    match e {
        object_store::Error::NotFound { .. } => Error::NotFound {
            location: location.to_string(),
        },
        other => Error::Store {
            location: location.to_string(),
            message: describe_store_error(&other),
        },
    }
}

/// An object store error in words, with what to do when the S3 server refused the
/// credentials (the credentials themselves are never part of it).
pub fn describe_store_error(e: &object_store::Error) -> String {
    let text = e.to_string();
    if let Some(tries) = text
        .split_once(" retries, max_retries")
        .and_then(|(head, _)| head.rsplit_once("after "))
        .map(|(_, n)| n)
    {
        // object_store's retries ran out: the server stayed unreachable or failing.
        let last = text.rsplit(" - ").next().unwrap_or(&text).trim();
        return format!(
            "the S3 server did not answer within s3_retry_secs ({tries} retries with backoff; \
             the last: {last}): check that it runs and that --s3-endpoint / \
             HALYARD_S3_ENDPOINT names it"
        );
    }
    if text.contains("status 403")
        || text.contains("403 Forbidden")
        || text.contains("SignatureDoesNotMatch")
        || text.contains("InvalidAccessKeyId")
        || text.contains("AccessDenied")
    {
        "access denied by the S3 server: check the access key id and secret \
         (--s3-access-key-id / HALYARD_S3_ACCESS_KEY_ID or AWS_ACCESS_KEY_ID)"
            .to_string()
    } else {
        text
    }
}

/// Split `scheme://rest` into its parts.
fn split_url(url: &str) -> Result<(&str, &str)> {
    url.split_once("://").ok_or_else(|| Error::StoreUrl {
        url: url.to_string(),
        message: "expected file:///absolute/path or s3://bucket/prefix".into(),
    })
}

impl Store {
    /// Open the store at `url`: `file:///dir` or `s3://bucket[/prefix]`.
    pub fn open(url: &str, s3: &S3Config) -> Result<Store> {
        let (scheme, rest) = split_url(url)?;
        match scheme {
            "file" => {
                let dir = std::path::Path::new(rest);
                if !dir.is_absolute() {
                    return Err(Error::StoreUrl {
                        url: url.into(),
                        message: "a file:// store needs an absolute path".into(),
                    });
                }
                std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                    path: dir.to_path_buf(),
                    source,
                })?;
                // Folders a deletion empties go with it (garbage collection leaves none).
                let fs = LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| map_err(url, e))?
                    .with_automatic_cleanup(true);
                Ok(Store {
                    inner: Arc::new(fs),
                    base_url: format!("file://{}", rest.trim_end_matches('/')),
                    prefix: ObjectPath::default(),
                    sealer: None,
                    local: Some(dir.to_path_buf()),
                })
            }
            "s3" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(Error::StoreUrl {
                        url: url.into(),
                        message: "no bucket name".into(),
                    });
                }
                let s3 = build_s3(bucket, s3).map_err(|e| Error::StoreUrl {
                    url: url.into(),
                    message: e.to_string(),
                })?;
                Ok(Store {
                    inner: Arc::new(s3),
                    base_url: format!("s3://{bucket}/{}", prefix.trim_end_matches('/'))
                        .trim_end_matches('/')
                        .to_string(),
                    prefix: ObjectPath::from(prefix.trim_matches('/')),
                    sealer: None,
                    local: None,
                })
            }
            other => Err(Error::StoreUrl {
                url: url.into(),
                message: format!("unsupported scheme {other}: use file:// or s3://"),
            }),
        }
    }

    /// The base URL.
    pub fn url(&self) -> &str {
        &self.base_url
    }

    /// The URL of a path relative to the base.
    pub fn url_of(&self, rel: &str) -> String {
        format!("{}/{}", self.base_url, rel.trim_start_matches('/'))
    }

    fn path(&self, rel: &str) -> ObjectPath {
        let mut p = self.prefix.clone();
        for part in rel.split('/').filter(|s| !s.is_empty()) {
            p = p.clone().join(part);
        }
        p
    }

    /// Write one object. Objects appear whole or not at all (local files are renamed into
    /// place; an S3 PUT is atomic).
    pub async fn put(&self, rel: &str, bytes: Bytes) -> Result<()> {
        let bytes = match &self.sealer {
            Some(s) => Bytes::from(s.seal(rel, &bytes)),
            None => bytes,
        };
        if let Some(dir) = &self.local {
            crate::disk::room_for(&dir.join(rel), bytes.len() as u64)?;
        }
        self.inner
            .put_opts(
                &self.path(rel),
                PutPayload::from(bytes),
                PutOptions::default(),
            )
            .await
            .map(|_| ())
            .map_err(|e| map_err(&self.url_of(rel), e))
    }

    /// Delete one object (one that is not there is not an error).
    pub async fn delete(&self, rel: &str) -> Result<()> {
        use object_store::ObjectStoreExt;
        match self.inner.delete(&self.path(rel)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(map_err(&self.url_of(rel), e)),
        }
    }

    /// Read one object.
    pub async fn get(&self, rel: &str) -> Result<Bytes> {
        let result = self
            .inner
            .get_opts(&self.path(rel), GetOptions::default())
            .await
            .map_err(|e| map_err(&self.url_of(rel), e))?;
        let bytes = result
            .bytes()
            .await
            .map_err(|e| map_err(&self.url_of(rel), e))?;
        if !crate::seal::is_sealed(&bytes) {
            return Ok(bytes);
        }
        let plain = crate::seal::open(self.sealer.as_deref(), rel, &self.url_of(rel), &bytes)?;
        Ok(Bytes::from(plain))
    }

    /// Key rotation: seal again with the sealing key every object sealed with another of
    /// the store's keys. Returns the objects looked at and those sealed again. Run it while
    /// no job runs (a checkpoint rewritten meanwhile could be overwritten by its older
    /// content); plain objects stay plain.
    pub async fn reseal(&self) -> Result<(usize, usize)> {
        let Some(sealer) = self.sealer.clone() else {
            return Err(Error::invalid(
                "config",
                "encryption_key_file",
                "none",
                "resealing needs the keys: the new one first, then the old ones",
            ));
        };
        let objects = self.list("").await?;
        let mut resealed = 0;
        for object in &objects {
            let rel = &object.rel;
            let raw = match self
                .inner
                .get_opts(&self.path(rel), GetOptions::default())
                .await
            {
                Ok(r) => r.bytes().await,
                Err(e) => Err(e),
            }
            .map_err(|e| map_err(&self.url_of(rel), e))?;
            match crate::seal::sealed_with(&raw) {
                Some(id) if id != sealer.id() => {
                    let plain = crate::seal::open(Some(&sealer), rel, &self.url_of(rel), &raw)?;
                    self.put(rel, Bytes::from(plain)).await?;
                    resealed += 1;
                }
                _ => {}
            }
        }
        Ok((objects.len(), resealed))
    }

    /// Every object under `rel` (a folder relative to the base; `""`: all of them).
    pub async fn list(&self, rel: &str) -> Result<Vec<Listed>> {
        use futures::TryStreamExt;
        let objects: Vec<object_store::ObjectMeta> = self
            .inner
            .list(Some(&self.path(rel)))
            .try_collect()
            .await
            .map_err(|e| map_err(&self.url_of(rel), e))?;
        Ok(objects
            .into_iter()
            .filter_map(|meta| {
                let rel = meta
                    .location
                    .prefix_match(&self.prefix)?
                    .map(|p| p.as_ref().to_string())
                    .collect::<Vec<_>>()
                    .join("/");
                Some(Listed {
                    rel,
                    size: meta.size,
                    modified_ms: meta.last_modified.timestamp_millis(),
                })
            })
            .collect())
    }

    /// The id of the key this store seals with, if it seals.
    pub fn sealing_key(&self) -> Option<&str> {
        self.sealer.as_deref().map(crate::seal::Sealer::id)
    }

    /// This store, sealing what it writes with `sealer` (and opening what it reads).
    pub fn sealed(mut self, sealer: Option<Arc<crate::seal::Sealer>>) -> Store {
        self.sealer = sealer;
        self
    }
}

/// An S3 client for one bucket, from Halyard's S3 settings (then the AWS environment).
pub fn build_s3(bucket: &str, cfg: &S3Config) -> object_store::Result<object_store::aws::AmazonS3> {
    let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
    if let Some(endpoint) = &cfg.endpoint {
        b = b
            .with_endpoint(endpoint)
            .with_allow_http(endpoint.starts_with("http://"));
    } else if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") {
        b = b.with_allow_http(endpoint.starts_with("http://"));
    }
    if let Some(region) = &cfg.region {
        b = b.with_region(region);
    } else if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err() {
        b = b.with_region("us-east-1");
    }
    if let Some(k) = &cfg.access_key_id {
        b = b.with_access_key_id(k);
    }
    if let Some(s) = &cfg.secret_access_key {
        b = b.with_secret_access_key(s);
    }
    if let Some(path) = &cfg.ca_file {
        let pem = std::fs::read(path).map_err(|e| object_store::Error::Generic {
            store: "S3",
            source: format!("s3_ca_file {}: {e}", path.display()).into(),
        })?;
        let mut options = object_store::ClientOptions::new();
        for cert in object_store::Certificate::from_pem_bundle(&pem)? {
            options = options.with_root_certificate(cert);
        }
        b = b.with_client_options(options);
    }
    // Bounded by time, not by count: backoff from 100 ms doubling to 5 s, with jitter
    // (object_store's), until `retry_secs` have passed since the first try.
    let retry = object_store::RetryConfig {
        max_retries: 10_000,
        retry_timeout: Duration::from_secs(cfg.retry_secs.unwrap_or(DEFAULT_S3_RETRY_SECS)),
        backoff: object_store::BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            base: 2.0,
        },
    };
    b.with_retry(retry).build()
}

/// Read a whole object given by URL (`file:///…` or `s3://bucket/key`), such as a data source.
pub async fn read_url(url: &str, s3: &S3Config) -> Result<Bytes> {
    let (scheme, rest) = split_url(url)?;
    let (dir_url, name) = match scheme {
        "file" => {
            let path = std::path::Path::new(rest);
            let parent = path.parent().unwrap_or(std::path::Path::new("/"));
            if !path.is_file() {
                return Err(Error::NotFound {
                    location: url.to_string(),
                });
            }
            (
                format!("file://{}", parent.display()),
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            )
        }
        "s3" => {
            let (dir, name) = rest.rsplit_once('/').ok_or_else(|| Error::StoreUrl {
                url: url.into(),
                message: "expected s3://bucket/key".into(),
            })?;
            (format!("s3://{dir}"), name.to_string())
        }
        other => {
            return Err(Error::StoreUrl {
                url: url.into(),
                message: format!("unsupported scheme {other}: use a path, file:// or s3://"),
            });
        }
    };
    Store::open(&dir_url, s3)?.get(&name).await
}

/// Relative location of a model version's folder.
pub fn model_dir(name: &str, version: u64) -> String {
    format!("models/{name}/{version}")
}

/// File name of the weights inside a model version's folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// File name of the manifest inside a model version's folder; written last.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Publish a model version: the weights first, the manifest last, so that a reader who
/// finds the manifest finds a whole artifact. Returns the version folder's URL.
pub async fn publish_model(
    store: &Store,
    name: &str,
    version: u64,
    weights: Bytes,
    manifest: Bytes,
) -> Result<String> {
    let dir = model_dir(name, version);
    store.put(&format!("{dir}/{WEIGHTS_FILE}"), weights).await?;
    store
        .put(&format!("{dir}/{MANIFEST_FILE}"), manifest)
        .await?;
    Ok(store.url_of(&dir))
}

/// Folder of a model's event-log files (exposures and outcomes, Parquet).
pub fn events_dir(model: &str) -> String {
    format!("{EVENTS_DIR}/{model}/")
}

/// The Parquet file of one event-log segment's events of `model` in `hour`
/// (`YYYY-MM-DDTHH`), written by log `node`: `events/<model>/hour=<hour>/<node>-<seq>.parquet`.
pub fn events_file(model: &str, hour: &str, node: &str, seq: u64) -> String {
    format!("{}hour={hour}/{node}-{seq:012}.parquet", events_dir(model))
}

/// Folder of a job's feature table: Parquet shards and `features.json`.
pub fn features_dir(job_id: &str) -> String {
    format!("{JOBS_DIR}/{job_id}/{FEATURES_FOLDER}")
}

/// The folder of a job's feature table, under the job's.
const FEATURES_FOLDER: &str = "features";

/// The folder of the event log's files.
const EVENTS_DIR: &str = "events";

/// Whether the object at `rel` (a path in the store) is one the SQL cluster writes or
/// reads, sealed and opened by its object stores when the nodes have an encryption key: a
/// feature table's files and the event log's.
pub fn sealed_by_sql(rel: &str) -> bool {
    let mut parts = rel.split('/');
    match parts.next() {
        Some(JOBS_DIR) => {
            parts.next().is_some_and(|job| !job.is_empty())
                && parts.next() == Some(FEATURES_FOLDER)
                && parts.next().is_some()
        }
        Some(EVENTS_DIR) => parts.next().is_some(),
        _ => false,
    }
}

/// Folder of a scoring job's scores: one `part-NNNNN.parquet` per shard of its table,
/// rejects beside them, and a marker per worker when it is done (or failed).
pub fn scores_dir(job_id: &str) -> String {
    format!("jobs/{job_id}/scores")
}

/// Folder of an audience version.
pub fn audience_dir(name: &str, version: u64) -> String {
    format!("audiences/{name}/{version}")
}

/// Folder of a data-parallel job's checkpoints.
pub fn checkpoint_dir(job_id: &str) -> String {
    format!("jobs/{job_id}/checkpoint")
}

/// A data-parallel job's latest checkpoint (rank 0 replaces it whole).
pub fn checkpoint_path(job_id: &str) -> String {
    format!("{}/latest.ckpt", checkpoint_dir(job_id))
}

/// The folders under which model versions and jobs' files lie ([`Store::list`] them).
pub const MODELS_DIR: &str = "models";
/// See [`MODELS_DIR`].
pub const JOBS_DIR: &str = "jobs";

/// The record an object of the store belongs to, for garbage collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner<'a> {
    /// A file of a model version's folder.
    Version {
        /// Model name.
        name: &'a str,
        /// Version number.
        version: u64,
    },
    /// A file of a job's checkpoint folder.
    Checkpoint {
        /// Job id.
        job: &'a str,
    },
    /// A file of a job's feature table.
    Features {
        /// Job id.
        job: &'a str,
    },
}

impl Owner<'_> {
    /// The whole folder of the owner's files.
    pub fn folder(&self) -> String {
        match *self {
            Owner::Version { name, version } => model_dir(name, version),
            Owner::Checkpoint { job } => checkpoint_dir(job),
            Owner::Features { job } => features_dir(job),
        }
    }
}

/// Whose file the object at `rel` is; `None` for anything else (audiences, scores,
/// events, a name that is not a version number).
pub fn owner_of(rel: &str) -> Option<Owner<'_>> {
    let parts: Vec<&str> = rel.split('/').collect();
    match parts.as_slice() {
        [MODELS_DIR, name, version, _, ..] => Some(Owner::Version {
            name,
            version: version.parse().ok()?,
        }),
        [JOBS_DIR, job, "checkpoint", _, ..] => Some(Owner::Checkpoint { job }),
        [JOBS_DIR, job, "features", _, ..] => Some(Owner::Features { job }),
        _ => None,
    }
}

/// The feature stage's manifest, written after every shard: its presence marks a whole
/// feature table.
pub const FEATURES_MANIFEST: &str = "features.json";

/// The manifest of the feature table in folder `dir` (a [`features_dir`]).
pub fn features_manifest_path(dir: &str) -> String {
    format!("{dir}/{FEATURES_MANIFEST}")
}

/// The file name of a feature table's shard `i`.
pub fn feature_shard_file(i: usize) -> String {
    format!("part-{i:05}.parquet")
}

/// A shard `file` (as the manifest names it) of the feature table in folder `dir`.
pub fn feature_shard_path(dir: &str, file: &str) -> String {
    format!("{dir}/{file}")
}

/// Read a published model version: `None` while its manifest is not written.
pub async fn read_model(store: &Store, name: &str, version: u64) -> Result<Option<(Bytes, Bytes)>> {
    let dir = model_dir(name, version);
    let manifest = match store.get(&format!("{dir}/{MANIFEST_FILE}")).await {
        Ok(m) => m,
        Err(Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let weights = store.get(&format!("{dir}/{WEIGHTS_FILE}")).await?;
    Ok(Some((weights, manifest)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sql_clusters_objects_are_feature_tables_and_event_files() {
        let shard = feature_shard_path(&features_dir("j1"), &feature_shard_file(3));
        assert!(sealed_by_sql(&shard));
        assert!(sealed_by_sql(&features_manifest_path(&features_dir("j1"))));
        assert!(sealed_by_sql(&events_file(
            "offer",
            "2026-12-03T01",
            "node-1",
            7
        )));
        for other in [
            "jobs/j1/checkpoint/state.json",
            "jobs//features/part-00000.parquet",
            "jobs/j1/features",
            "models/offer/1/model.safetensors",
            "events",
            "eventsx/offer/a.parquet",
        ] {
            assert!(!sealed_by_sql(other), "{other}");
        }
    }

    fn generic(text: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: text.to_string().into(),
        }
    }

    #[test]
    fn an_outage_and_a_refusal_are_told_apart_and_said_plainly() {
        // A port or a duration with 403 in it is no refusal.
        let outage = generic(
            "Error performing PUT http://127.0.0.1:40371/b/x in 12.403s, after 34 retries, \
             max_retries: 10000, retry_timeout: 12s  - HTTP error: error sending request",
        );
        assert_eq!(
            describe_store_error(&outage),
            "the S3 server did not answer within s3_retry_secs (34 retries with backoff; the \
             last: HTTP error: error sending request): check that it runs and that \
             --s3-endpoint / HALYARD_S3_ENDPOINT names it"
        );
        let refused = generic(
            "Error performing PUT http://127.0.0.1:9000/b/x in 2ms - Client error with status \
             403 Forbidden: SignatureDoesNotMatch",
        );
        assert!(describe_store_error(&refused).starts_with("access denied by the S3 server"));
        let other = generic("Error performing GET http://h/b/x in 1ms - bucket not found");
        assert_eq!(describe_store_error(&other), other.to_string());
    }
}
