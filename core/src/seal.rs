//! Client-side encryption of what a node writes to the object store (AES-256-GCM): model
//! artifacts, feature-table manifests, checkpoints. The key comes from `--encryption-key`
//! or `--encryption-key-file` (64 hex digits); each sealed object starts with a magic
//! tag and the key's id (the first 12 hex digits of its SHA-256), then a random nonce and
//! the ciphertext, whose authentication covers the object's path in the store, so an
//! object moved to another path does not open. An object without the tag is read as it is
//! (written before encryption was on, or by the SQL cluster).

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;

use crate::error::{Error, Result};

/// The first bytes of a sealed object.
const MAGIC: &[u8; 8] = b"HLYSEAL1";
/// Hex digits of a key id.
const ID_LEN: usize = 12;
const NONCE_LEN: usize = 12;

/// A node's encryption key.
#[derive(Clone)]
pub struct Sealer {
    cipher: Aes256Gcm,
    id: String,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").field("id", &self.id).finish()
    }
}

impl Sealer {
    /// The key whose text is `hex` (64 hex digits); `origin` names it in errors.
    pub fn from_hex(hex_text: &str, origin: &str) -> Result<Sealer> {
        let bad = || {
            Error::invalid(
                "config",
                origin,
                "(hidden)",
                "an encryption key is 64 hex digits (32 random bytes: `openssl rand -hex 32`)",
            )
        };
        let bytes = hex::decode(hex_text.trim()).map_err(|_| bad())?;
        if bytes.len() != 32 {
            return Err(bad());
        }
        let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| bad())?;
        let id = crate::data::digest(&bytes)
            .trim_start_matches("sha256:")
            .chars()
            .take(ID_LEN)
            .collect();
        Ok(Sealer { cipher, id })
    }

    /// The key of the settings: `encryption_key`, else the file `encryption_key_file`.
    pub fn from_settings(s: &crate::config::Settings) -> Result<Option<Sealer>> {
        if let Some(text) = &s.encryption_key {
            return Sealer::from_hex(text, "encryption_key").map(Some);
        }
        let Some(path) = &s.encryption_key_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        Sealer::from_hex(&text, "encryption_key_file").map(Some)
    }

    /// The key's id (recorded in every object it seals).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `plain` sealed for the store path `path`.
    pub fn seal(&self, path: &str, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: path.as_bytes(),
                },
            )
            .expect("AES-GCM seals any message under 64 GiB");
        let mut out = Vec::with_capacity(MAGIC.len() + ID_LEN + NONCE_LEN + sealed.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(self.id.as_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }
}

/// Whether `bytes` is a sealed object.
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// The plaintext of the object at `path` (`location` names it in errors): opened with
/// `sealer` when sealed, as it is when not.
pub fn open(sealer: Option<&Sealer>, path: &str, location: &str, bytes: &[u8]) -> Result<Vec<u8>> {
    if !is_sealed(bytes) {
        return Ok(bytes.to_vec());
    }
    let header = MAGIC.len() + ID_LEN + NONCE_LEN;
    let corrupt = |message: String| Error::Corrupt {
        key: location.to_string(),
        message,
    };
    if bytes.len() < header {
        return Err(corrupt("a sealed object cut short".into()));
    }
    let id = String::from_utf8_lossy(&bytes[MAGIC.len()..MAGIC.len() + ID_LEN]).into_owned();
    let sealer = match sealer {
        Some(s) if s.id == id => s,
        Some(s) => {
            return Err(corrupt(format!(
                "sealed with encryption key {id}, but this node has key {}: give it key {id} (--encryption-key-file)",
                s.id
            )));
        }
        None => {
            return Err(corrupt(format!(
                "sealed with encryption key {id}, and this node has none: give it that key (--encryption-key-file)"
            )));
        }
    };
    let nonce = &bytes[MAGIC.len() + ID_LEN..header];
    sealer
        .cipher
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: &bytes[header..],
                aad: path.as_bytes(),
            },
        )
        .map_err(|_| {
            corrupt("does not open with its key: changed, or moved from another path".into())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_objects_open_only_with_their_key_at_their_path() {
        let key = Sealer::from_hex(&"ab".repeat(32), "test").unwrap();
        let other = Sealer::from_hex(&"cd".repeat(32), "test").unwrap();
        let plain = b"{\"weights\": [1, 2, 3]}";
        let sealed = key.seal("models/m/1/model.safetensors", plain);
        assert!(is_sealed(&sealed));
        assert!(!sealed.windows(9).any(|w| w == b"\"weights\""));
        let open_at = |s: Option<&Sealer>, path: &str, bytes: &[u8]| open(s, path, "loc", bytes);
        assert_eq!(
            open_at(Some(&key), "models/m/1/model.safetensors", &sealed).unwrap(),
            plain
        );
        let wrong_key = open_at(Some(&other), "models/m/1/model.safetensors", &sealed).unwrap_err();
        assert!(wrong_key.to_string().contains(key.id()), "{wrong_key}");
        assert!(open_at(None, "models/m/1/model.safetensors", &sealed).is_err());
        assert!(open_at(Some(&key), "models/m/2/model.safetensors", &sealed).is_err());
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(open_at(Some(&key), "models/m/1/model.safetensors", &flipped).is_err());
        // Plain objects pass as they are.
        assert_eq!(open_at(Some(&key), "x", plain).unwrap(), plain);
        // Two seals of one message differ (fresh nonces).
        assert_ne!(key.seal("p", plain), key.seal("p", plain));
        for bad in ["", "abcd", &"zz".repeat(32)] {
            assert!(Sealer::from_hex(bad, "test").is_err());
        }
        assert!(!format!("{key:?}").contains("abab"));
    }
}
