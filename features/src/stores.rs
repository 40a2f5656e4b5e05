//! Object stores for DataFusion: `file://` and every `s3://bucket`, built from Halyard's S3
//! settings on each node. Plans carry only URLs; the credentials stay in this registry.
//!
//! Every store it hands out is confined to the node's data roots ([`Roots`]): each read,
//! write, listing, copy and delete is checked before it reaches the file system or the
//! bucket, so a query planned anywhere (a client of the SQL port included) cannot touch
//! `/etc/passwd` or an unlisted bucket on this node.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::ObjectStoreRegistry;
use futures::stream::{BoxStream, StreamExt};
use halyard_core::confine::Roots;
use halyard_core::store::{S3Config, build_s3};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use url::Url;

use crate::sealed::Sealing;

/// Resolves `file://` to the local file system and `s3://bucket` to an S3 client for that
/// bucket, created on first use; each confined to the roots.
pub struct Stores {
    s3: S3Config,
    roots: Arc<Roots>,
    /// Seals the SQL cluster's objects in Halyard's store, when the node has a key.
    sealing: Option<Sealing>,
    local: Arc<dyn ObjectStore>,
    buckets: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
}

impl fmt::Debug for Stores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // S3Config's Debug redacts the secret.
        f.debug_struct("Stores")
            .field("s3", &self.s3)
            .field("roots", &self.roots)
            .finish()
    }
}

impl Stores {
    /// A registry with these S3 settings, confined to `roots`, sealing with `sealing`
    /// ([`crate::sealed`]).
    pub fn new(s3: S3Config, roots: Roots, sealing: Option<Sealing>) -> Self {
        let roots = Arc::new(roots);
        let local = guard(
            &roots,
            sealing.as_ref(),
            &Url::parse("file:///").expect("a file URL"),
            Arc::new(LocalFileSystem::new()),
        );
        Stores {
            s3,
            local,
            roots,
            sealing,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// `store`, the one for `url`'s bucket, guarded as [`guard`] says.
    fn guarded(&self, url: &Url, store: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
        guard(&self.roots, self.sealing.as_ref(), url, store)
    }

    fn key(url: &Url) -> String {
        format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""))
    }
}

impl ObjectStoreRegistry for Stores {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        // A store registered by a session is confined like the node's own.
        let guarded = self.guarded(url, store);
        self.buckets
            .lock()
            .expect("store registry lock")
            .insert(Self::key(url), guarded)
    }

    fn get_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        let key = Self::key(url);
        if let Some(s) = self.buckets.lock().expect("store registry lock").get(&key) {
            return Ok(s.clone());
        }
        match url.scheme() {
            "file" | "" => Ok(self.local.clone()),
            "s3" => {
                let bucket = url.host_str().unwrap_or_default();
                if !self.roots.allows_bucket(bucket) {
                    return Err(DataFusionError::External(Box::new(
                        halyard_core::Error::Outside {
                            location: format!("s3://{bucket}"),
                            roots: self.roots.to_string(),
                        },
                    )));
                }
                let inner = build_s3(bucket, &self.s3).map_err(|e| {
                    DataFusionError::Configuration(format!("s3 bucket {bucket}: {e}"))
                })?;
                let store = self.guarded(url, Arc::new(inner));
                self.buckets
                    .lock()
                    .expect("store registry lock")
                    .insert(key, store.clone());
                Ok(store)
            }
            other => Err(DataFusionError::Configuration(format!(
                "no object store for {other}:// URLs: use file:// or s3://"
            ))),
        }
    }
}

/// `store`, the one for `url`'s bucket, confined to `roots` and, when it holds Halyard's
/// store, sealing with `sealing`.
fn guard(
    roots: &Arc<Roots>,
    sealing: Option<&Sealing>,
    url: &Url,
    store: Arc<dyn ObjectStore>,
) -> Arc<dyn ObjectStore> {
    let confined: Arc<dyn ObjectStore> = Arc::new(Confined {
        inner: store,
        bucket: url.host_str().map(String::from),
        roots: roots.clone(),
    });
    match sealing {
        Some(sealing) if sealing.covers(url) => sealing.wrap(confined),
        _ => confined,
    }
}

/// A store whose every location is checked against the roots first.
#[derive(Debug, Clone)]
struct Confined {
    inner: Arc<dyn ObjectStore>,
    /// The bucket (S3), or `None` for the local file system.
    bucket: Option<String>,
    roots: Arc<Roots>,
}

impl fmt::Display for Confined {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Confined({}, {})", self.inner, self.roots)
    }
}

impl Confined {
    /// Whether `location` (`None`: the whole store) lies under a root.
    fn check(&self, location: Option<&Path>) -> object_store::Result<()> {
        let key = location.map_or("", |p| p.as_ref());
        let checked = match &self.bucket {
            None => {
                let path = format!("/{key}");
                self.roots
                    .check_path(std::path::Path::new(&path), &format!("file://{path}"))
            }
            Some(bucket) => self
                .roots
                .check_object(bucket, key, &format!("s3://{bucket}/{key}")),
        };
        checked.map_err(|e| object_store::Error::PermissionDenied {
            path: key.to_string(),
            source: Box::new(e),
        })
    }
}

#[async_trait]
impl ObjectStore for Confined {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.check(Some(location))?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.check(Some(location))?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.check(Some(location))?;
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let guard = self.clone();
        let checked = locations
            .map(move |p| p.and_then(|p| guard.check(Some(&p)).map(|()| p)))
            .boxed();
        self.inner.delete_stream(checked)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        match self.check(prefix) {
            Ok(()) => self.inner.list(prefix),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.check(prefix)?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.check(Some(from))?;
        self.check(Some(to))?;
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    #[tokio::test]
    async fn every_operation_outside_the_roots_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(dir.path().join("secret.csv"), "a\n1\n").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret.csv"), root.join("link.csv")).unwrap();
        let roots = Roots::parse(&[root.display().to_string()], std::path::Path::new("/")).unwrap();
        let stores = Stores::new(S3Config::default(), roots, None);
        let store = stores.get_store(&Url::parse("file:///").unwrap()).unwrap();
        let inside = Path::from_absolute_path(root.join("in.csv")).unwrap();
        let outside = Path::from_absolute_path(dir.path().join("secret.csv")).unwrap();
        let link = Path::from_absolute_path(root.join("link.csv")).unwrap();
        store.put(&inside, "x\n2\n".into()).await.unwrap();
        assert_eq!(
            store.get(&inside).await.unwrap().bytes().await.unwrap(),
            "x\n2\n"
        );
        let denied = |r: object_store::Result<()>| {
            let e = r.unwrap_err();
            assert!(
                matches!(e, object_store::Error::PermissionDenied { .. }),
                "{e}"
            );
            assert!(e.to_string().contains("--data-roots"), "{e}");
        };
        denied(store.get(&outside).await.map(drop));
        denied(store.get(&link).await.map(drop));
        denied(store.head(&outside).await.map(drop));
        denied(store.put(&outside, "y".into()).await.map(drop));
        denied(store.put_multipart(&outside).await.map(drop));
        denied(store.delete(&outside).await);
        denied(store.copy(&inside, &outside).await);
        denied(store.copy(&outside, &inside).await);
        denied(store.list_with_delimiter(None).await.map(drop));
        denied(
            store
                .list(Some(&Path::from("etc")))
                .next()
                .await
                .unwrap()
                .map(drop),
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("secret.csv")).unwrap(),
            "a\n1\n"
        );
        let bucket = stores.get_store(&Url::parse("s3://elsewhere/x").unwrap());
        assert!(bucket.unwrap_err().to_string().contains("s3://elsewhere"));
    }
}
