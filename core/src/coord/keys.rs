//! API keys: the coordinator's methods over `keys/<id>` (each a [`KeyRecord`], the
//! secret's hash and never the secret).

use super::{Coordinator, Edit, encode, put};
use crate::auth::KeyRecord;
use crate::error::{Error, Result};

impl Coordinator {
    fn key_key(&self, id: &str) -> String {
        self.key(&format!("keys/{id}"))
    }

    /// Store a new key; refuses an id that is taken.
    pub async fn create_key(&self, record: &KeyRecord) -> Result<()> {
        let key = self.key_key(&record.id);
        let out = self
            .cas(&key, 0, vec![put(key.clone(), encode(record))])
            .await?;
        if out.succeeded {
            Ok(())
        } else {
            Err(Error::Conflict { key })
        }
    }

    /// Store `record` whatever is there (the bootstrap key of a node's key file).
    pub async fn ensure_key(&self, record: &KeyRecord) -> Result<()> {
        let key = self.key_key(&record.id);
        self.kv
            .txn(Vec::new(), vec![put(key, encode(record))])
            .await?;
        Ok(())
    }

    /// The key with this id.
    pub async fn get_key(&self, id: &str) -> Result<Option<KeyRecord>> {
        self.get_value(&self.key_key(id)).await
    }

    /// Every key, revoked ones included, by id.
    pub async fn list_keys(&self) -> Result<Vec<KeyRecord>> {
        self.values("keys/").await
    }

    /// Revoke the key with this id; returns it revoked.
    pub async fn revoke_key(&self, id: &str) -> Result<KeyRecord> {
        self.update(&self.key_key(id), |key: Option<KeyRecord>| {
            let mut key = key.ok_or_else(|| Error::NotFound {
                location: format!("API key {id}"),
            })?;
            key.revoked = true;
            Ok(Edit::Write(key))
        })
        .await
    }
}
