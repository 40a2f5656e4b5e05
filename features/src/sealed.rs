//! Client-side encryption of what the SQL cluster keeps in Halyard's store: a feature
//! table's files are written by `COPY … TO` on the executors, and they and the event log's
//! files are read by queries, not through `halyard_core::store::Store`, so the node's
//! object store for the store's bucket (or file system) seals and opens them itself, with
//! the same keys and format
//! (`halyard_core::seal`; authenticated with the object's path in the store, so
//! `Store::get` opens what a query wrote and `halyard reseal` rotates it).
//!
//! Which objects: those `halyard_core::store::sealed_by_sql` names. A write is sealed
//! whole (a multipart upload is gathered first); a read fetches the whole object, opens it
//! and serves the range asked for (the last few objects opened are kept, so the ranged
//! reads of one Parquet file open it once); listings and `head` report the plaintext's
//! size, which the Parquet reader relies on. An object written unsealed (before a key was
//! set) reads as it is.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use halyard_core::seal::{self, Sealer};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetRange, GetResult, GetResultPayload, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload,
    PutResult, UploadPart,
};
use url::Url;

/// Where a node's Halyard store lies and the keys that seal what the SQL cluster keeps
/// there.
#[derive(Clone)]
pub struct Sealing {
    /// The store's URL (`file:///…` or `s3://bucket[/prefix]`).
    pub store: Url,
    /// The node's keys: the first seals, every one opens.
    pub sealer: Arc<Sealer>,
}

impl fmt::Debug for Sealing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealing")
            .field("store", &self.store.as_str())
            .field("sealer", &self.sealer)
            .finish()
    }
}

impl Sealing {
    /// Sealing for the store at `store_url` with `sealer`'s keys.
    pub fn new(store_url: &str, sealer: Arc<Sealer>) -> halyard_core::Result<Sealing> {
        let store = Url::parse(store_url).map_err(|e| {
            halyard_core::Error::invalid("config", "store", store_url, e.to_string())
        })?;
        Ok(Sealing { store, sealer })
    }

    /// Whether `url` (a store's URL: scheme and bucket) holds Halyard's store.
    pub fn covers(&self, url: &Url) -> bool {
        url.scheme() == self.store.scheme() && url.host_str() == self.store.host_str()
    }

    /// `inner`, the object store of Halyard's store's bucket, sealing as above.
    pub fn wrap(&self, inner: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
        Arc::new(Sealed {
            inner,
            root: Path::from_url_path(self.store.path()).unwrap_or_default(),
            sealer: self.sealer.clone(),
            opened: Arc::default(),
        })
    }
}

/// Objects kept opened at most, and their bytes at most.
const OPENED_OBJECTS: usize = 8;
const OPENED_BYTES: usize = 512 << 20;

/// An object opened: its path, sealed size and tag (so a rewritten one is not served from
/// memory), and plaintext.
struct Opened {
    location: Path,
    size: u64,
    e_tag: Option<String>,
    plain: Bytes,
}

/// The object store of the bucket holding Halyard's store, sealing the SQL cluster's
/// objects in it.
#[derive(Clone)]
struct Sealed {
    inner: Arc<dyn ObjectStore>,
    /// The store's folder in the bucket (or file system).
    root: Path,
    sealer: Arc<Sealer>,
    opened: Arc<Mutex<VecDeque<Opened>>>,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealed({}, {})", self.inner, self.root)
    }
}

impl fmt::Display for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// `meta` with the plaintext's size.
fn plain_sized(meta: ObjectMeta, plain: &Bytes) -> ObjectMeta {
    ObjectMeta {
        size: plain.len() as u64,
        ..meta
    }
}

fn generic(e: impl std::error::Error + Send + Sync + 'static) -> object_store::Error {
    object_store::Error::Generic {
        store: "sealed",
        source: Box::new(e),
    }
}

impl Sealed {
    /// The path in the store of `location`, when it is an object sealed here.
    fn sealed_path(&self, location: &Path) -> Option<String> {
        let rel = location.prefix_match(&self.root)?;
        let rel = rel
            .map(|p| p.as_ref().to_string())
            .collect::<Vec<_>>()
            .join("/");
        halyard_core::store::sealed_by_sql(&rel).then_some(rel)
    }

    /// `meta` with the plaintext's size when its object is sealed (read from its first
    /// bytes: an object written before the key was set is not).
    async fn plain_meta(&self, mut meta: ObjectMeta) -> object_store::Result<ObjectMeta> {
        if self.sealed_path(&meta.location).is_none() || meta.size < seal::OVERHEAD as u64 {
            return Ok(meta);
        }
        let head = self
            .inner
            .get_opts(
                &meta.location,
                GetOptions {
                    range: Some(GetRange::Bounded(0..seal::MAGIC_LEN as u64)),
                    ..GetOptions::default()
                },
            )
            .await?
            .bytes()
            .await?;
        if seal::is_sealed(&head) {
            meta.size -= seal::OVERHEAD as u64;
        }
        Ok(meta)
    }

    /// The plaintext of the object at `location` (`rel` in the store) and its meta. An
    /// object kept opened is checked against the store's size and tag (one `head`); any
    /// other is fetched once, whole.
    async fn open(&self, location: &Path, rel: &str) -> object_store::Result<(ObjectMeta, Bytes)> {
        let kept = {
            let opened = self.opened.lock().expect("opened objects lock");
            opened
                .iter()
                .find(|o| o.location == *location)
                .map(|o| (o.size, o.e_tag.clone(), o.plain.clone()))
        };
        if let Some((size, e_tag, plain)) = kept {
            let meta = self.inner.head(location).await?;
            if meta.size == size && meta.e_tag == e_tag {
                return Ok((plain_sized(meta, &plain), plain));
            }
        }
        let fetched = self.inner.get(location).await?;
        let meta = fetched.meta.clone();
        let raw = fetched.bytes().await?;
        let plain = Bytes::from(
            seal::open(Some(&self.sealer), rel, location.as_ref(), &raw).map_err(generic)?,
        );
        self.keep(Opened {
            location: location.clone(),
            size: raw.len() as u64,
            e_tag: meta.e_tag.clone(),
            plain: plain.clone(),
        });
        Ok((plain_sized(meta, &plain), plain))
    }

    fn keep(&self, object: Opened) {
        if object.plain.len() > OPENED_BYTES {
            return;
        }
        let mut opened = self.opened.lock().expect("opened objects lock");
        opened.retain(|o| o.location != object.location);
        opened.push_back(object);
        while opened.len() > OPENED_OBJECTS
            || opened.iter().map(|o| o.plain.len()).sum::<usize>() > OPENED_BYTES
        {
            opened.pop_front();
        }
    }

    async fn put_sealed(
        &self,
        location: &Path,
        rel: &str,
        plain: Bytes,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let sealed = Bytes::from(self.sealer.seal(rel, &plain));
        self.inner.put_opts(location, sealed.into(), opts).await
    }
}

#[async_trait]
impl ObjectStore for Sealed {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        match self.sealed_path(location) {
            Some(rel) => self.put_sealed(location, &rel, payload.into(), opts).await,
            None => self.inner.put_opts(location, payload, opts).await,
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        match self.sealed_path(location) {
            Some(rel) => Ok(Box::new(Gathered {
                store: self.clone(),
                location: location.clone(),
                rel,
                opts: Some(PutOptions {
                    tags: opts.tags,
                    attributes: opts.attributes,
                    extensions: opts.extensions,
                    ..PutOptions::default()
                }),
                parts: Vec::new(),
            })),
            None => self.inner.put_multipart_opts(location, opts).await,
        }
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let Some(rel) = self.sealed_path(location) else {
            return self.inner.get_opts(location, options).await;
        };
        let (meta, plain) = self.open(location, &rel).await?;
        let range = match &options.range {
            Some(r) => r.as_range(meta.size).map_err(generic)?,
            None => 0..meta.size,
        };
        let payload = if options.head {
            Bytes::new()
        } else {
            plain.slice(range.start as usize..range.end as usize)
        };
        Ok(GetResult {
            payload: GetResultPayload::Stream(futures::stream::once(async { Ok(payload) }).boxed()),
            meta,
            range,
            attributes: Default::default(),
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let this = self.clone();
        // One small read per sealed object, a few at once (a folder of event files).
        self.inner
            .list(prefix)
            .map(move |meta| {
                let this = this.clone();
                async move { this.plain_meta(meta?).await }
            })
            .buffered(16)
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let mut listed = self.inner.list_with_delimiter(prefix).await?;
        let mut objects = Vec::with_capacity(listed.objects.len());
        for meta in listed.objects {
            objects.push(self.plain_meta(meta).await?);
        }
        listed.objects = objects;
        Ok(listed)
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        match (self.sealed_path(from), self.sealed_path(to)) {
            (None, None) => self.inner.copy_opts(from, to, options).await,
            // Sealed objects are bound to their path: open and seal again.
            (from_rel, to_rel) => {
                let plain = match from_rel {
                    Some(rel) => self.open(from, &rel).await?.1,
                    None => self.inner.get(from).await?.bytes().await?,
                };
                match to_rel {
                    Some(rel) => {
                        self.put_sealed(to, &rel, plain, PutOptions::default())
                            .await
                    }
                    None => self.inner.put(to, plain.into()).await,
                }
                .map(drop)
            }
        }
    }
}

/// A multipart upload of a sealed object: the parts are gathered and sealed whole when it
/// completes (AES-GCM authenticates the whole object).
struct Gathered {
    store: Sealed,
    location: Path,
    rel: String,
    opts: Option<PutOptions>,
    parts: Vec<PutPayload>,
}

impl fmt::Debug for Gathered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gathered({}, {} parts)", self.location, self.parts.len())
    }
}

#[async_trait]
impl MultipartUpload for Gathered {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.parts.push(data);
        Box::pin(async { Ok(()) })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let size = self.parts.iter().map(PutPayload::content_length).sum();
        let mut plain = Vec::with_capacity(size);
        for part in self.parts.drain(..) {
            for chunk in &part {
                plain.extend_from_slice(chunk);
            }
        }
        let opts = self.opts.take().unwrap_or_default();
        self.store
            .put_sealed(&self.location, &self.rel, plain.into(), opts)
            .await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.parts.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{DataAccess, local_context};
    use halyard_core::store::{S3Config, Store};

    /// A feature table written by SQL into a store with a key: sealed on disk, read back by
    /// SQL (the Parquet reader's ranged reads and sizes), opened by `Store::get` as any
    /// sealed object; objects elsewhere stay plain; a multipart upload is sealed whole.
    #[tokio::test]
    async fn the_sql_clusters_feature_tables_are_sealed_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store_url = halyard_core::config::file_url(&dir.path().join("store")).unwrap();
        let sealer = Arc::new(Sealer::from_text(&"7e".repeat(32), "test").unwrap());
        let access = DataAccess {
            sealing: Some(Sealing::new(&store_url, sealer.clone()).unwrap()),
            ..DataAccess::unconfined(&S3Config::default())
        };
        let ctx = local_context(&access, 2).unwrap();
        let shard = "jobs/j1/features/part-00000.parquet";
        ctx.sql(&format!(
            "COPY (SELECT v, v * 2 AS w, 'secret-' || v AS s FROM generate_series(1, 5000) AS t(v)) TO '{store_url}/{shard}' STORED AS PARQUET"
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
        let raw = std::fs::read(dir.path().join("store").join(shard)).unwrap();
        assert!(seal::is_sealed(&raw), "the shard is not sealed");
        assert!(
            !raw.windows(7).any(|w| w == b"secret-"),
            "plaintext on disk"
        );
        ctx.sql(&format!(
            "CREATE EXTERNAL TABLE features STORED AS PARQUET LOCATION '{store_url}/jobs/j1/features/'"
        ))
        .await
        .unwrap();
        let batches = ctx
            .sql("SELECT count(*) AS n, sum(w) AS w FROM features")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        assert!(text.contains("| 5000 | 25005000 |"), "{text}");
        // The store opens it (the same path authenticates it), and it is a Parquet file.
        let store = Store::open(&store_url, &S3Config::default())
            .unwrap()
            .sealed(Some(sealer.clone()));
        let plain = store.get(shard).await.unwrap();
        assert!(plain.starts_with(b"PAR1") && plain.ends_with(b"PAR1"));
        assert_eq!(plain.len() + seal::OVERHEAD, raw.len());

        let stores = crate::stores::Stores::new(
            S3Config::default(),
            halyard_core::confine::Roots::any(),
            access.sealing.clone(),
        );
        let os = datafusion::execution::object_store::ObjectStoreRegistry::get_store(
            &stores,
            &Url::parse(&store_url).unwrap(),
        )
        .unwrap();
        let at = |rel: &str| Path::from_absolute_path(dir.path().join("store").join(rel)).unwrap();
        // Size and ranges are the plaintext's.
        assert_eq!(os.head(&at(shard)).await.unwrap().size, plain.len() as u64);
        let listed: Vec<ObjectMeta> = os
            .list(Some(&at("jobs/j1/features")))
            .map(Result::unwrap)
            .collect()
            .await;
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].size, plain.len() as u64);
        let tail = os
            .get_range(&at(shard), plain.len() as u64 - 8..plain.len() as u64)
            .await
            .unwrap();
        assert_eq!(tail, plain.slice(plain.len() - 8..));
        // Elsewhere in the store: plain.
        os.put(&at("models/m/1/notes.txt"), "plain".into())
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("store/models/m/1/notes.txt")).unwrap(),
            b"plain"
        );
        // A multipart upload is sealed whole, and opens.
        let part = "jobs/j2/features/part-00001.parquet";
        let mut upload = os.put_multipart(&at(part)).await.unwrap();
        upload.put_part("first half, ".into()).await.unwrap();
        upload.put_part("second half".into()).await.unwrap();
        upload.complete().await.unwrap();
        let raw = std::fs::read(dir.path().join("store").join(part)).unwrap();
        assert!(seal::is_sealed(&raw));
        assert_eq!(store.get(part).await.unwrap(), "first half, second half");
        // A store without the key names the key the object needs.
        let bare = Store::open(&store_url, &S3Config::default()).unwrap();
        let err = bare.get(part).await.unwrap_err().to_string();
        assert!(err.contains(sealer.id()), "{err}");
    }
}
