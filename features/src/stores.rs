//! Object stores for DataFusion: `file://` and every `s3://bucket`, built from Halyard's S3
//! settings on each node. Plans carry only URLs; the credentials stay in this registry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::ObjectStoreRegistry;
use halyard_core::store::{S3Config, build_s3};
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use url::Url;

/// Resolves `file://` to the local file system and `s3://bucket` to an S3 client for that
/// bucket, created on first use.
pub struct Stores {
    s3: S3Config,
    local: Arc<dyn ObjectStore>,
    buckets: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // S3Config's Debug redacts the secret.
        f.debug_struct("Stores").field("s3", &self.s3).finish()
    }
}

impl Stores {
    /// A registry with these S3 settings.
    pub fn new(s3: S3Config) -> Self {
        Stores {
            s3,
            local: Arc::new(LocalFileSystem::new()),
            buckets: Mutex::new(HashMap::new()),
        }
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
        self.buckets
            .lock()
            .expect("store registry lock")
            .insert(Self::key(url), store)
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
                let store: Arc<dyn ObjectStore> =
                    Arc::new(build_s3(bucket, &self.s3).map_err(|e| {
                        DataFusionError::Configuration(format!("s3 bucket {bucket}: {e}"))
                    })?);
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
