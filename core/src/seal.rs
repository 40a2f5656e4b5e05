//! Client-side encryption of what a node writes to the object store (AES-256-GCM): model
//! artifacts, feature-table manifests, checkpoints. The key comes from `--encryption-key`
//! or `--encryption-key-file` (64 hex digits); each sealed object starts with a magic
//! tag and the key's id (the first 12 hex digits of its SHA-256), then a random nonce and
//! the ciphertext, whose authentication covers the object's path in the store, so an
//! object moved to another path does not open. An object without the tag is read as it is
//! (written before encryption was on, or by the SQL cluster).
//!
//! **Rotation.** A node may hold several keys (one per line of the key file, or
//! comma-separated): the first seals, every one opens. To rotate, put the new key first and
//! keep the old one after it on every node, restart them, run `halyard reseal` (every
//! object sealed with another key is sealed again with the first), then drop the old key.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;

use crate::error::{Error, Result};

/// The first bytes of a sealed object.
const MAGIC: &[u8; 8] = b"HLYSEAL1";
/// Hex digits of a key id.
const ID_LEN: usize = 12;
const NONCE_LEN: usize = 12;
/// AES-GCM's authentication tag.
const TAG_LEN: usize = 16;
/// Bytes a sealed object has beyond its plaintext.
pub const OVERHEAD: usize = MAGIC.len() + ID_LEN + NONCE_LEN + TAG_LEN;
/// Bytes at the start of an object that say whether it is sealed ([`is_sealed`]).
pub const MAGIC_LEN: usize = MAGIC.len();

/// One encryption key.
#[derive(Clone)]
struct Key {
    cipher: Aes256Gcm,
    id: String,
}

/// A node's encryption keys: the first seals, every one opens.
#[derive(Clone)]
pub struct Sealer {
    keys: Vec<Key>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").field("ids", &self.ids()).finish()
    }
}

impl Key {
    /// The key whose text is `hex` (64 hex digits); `origin` names it in errors.
    fn from_hex(hex_text: &str, origin: &str) -> Result<Key> {
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
        Ok(Key { cipher, id })
    }
}

impl Sealer {
    /// The keys in `text`: 64 hex digits each, one per line or comma-separated (blank
    /// lines and `#` comments skipped), the sealing key first; `origin` names it in errors.
    pub fn from_text(text: &str, origin: &str) -> Result<Sealer> {
        let mut keys: Vec<Key> = Vec::new();
        for part in text
            .lines()
            .map(|l| l.split('#').next().unwrap_or(""))
            .flat_map(|l| l.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let key = Key::from_hex(part, origin)?;
            if !keys.iter().any(|k| k.id == key.id) {
                keys.push(key);
            }
        }
        if keys.is_empty() {
            return Err(Error::invalid(
                "config",
                origin,
                "(empty)",
                "no encryption key: write one (`openssl rand -hex 32`)",
            ));
        }
        Ok(Sealer { keys })
    }

    /// The keys of the settings: `encryption_key`, else the file `encryption_key_file`.
    pub fn from_settings(s: &crate::config::Settings) -> Result<Option<Sealer>> {
        if let Some(text) = &s.encryption_key {
            return Sealer::from_text(text, "encryption_key").map(Some);
        }
        let Some(path) = &s.encryption_key_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        Sealer::from_text(&text, "encryption_key_file").map(Some)
    }

    /// The sealing key's id (recorded in every object it seals).
    pub fn id(&self) -> &str {
        &self.keys[0].id
    }

    /// Every key's id, the sealing key's first.
    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.id.as_str()).collect()
    }

    /// `plain` sealed with the first key for the store path `path`.
    pub fn seal(&self, path: &str, plain: &[u8]) -> Vec<u8> {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = key
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
        out.extend_from_slice(key.id.as_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }
}

/// Whether `bytes` is a sealed object.
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// The id of the key that sealed `bytes`, when they are a sealed object.
pub fn sealed_with(bytes: &[u8]) -> Option<String> {
    let id = bytes.get(MAGIC.len()..MAGIC.len() + ID_LEN)?;
    is_sealed(bytes).then(|| String::from_utf8_lossy(id).into_owned())
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
    let key = match sealer {
        Some(s) => match s.keys.iter().find(|k| k.id == id) {
            Some(k) => k,
            None => {
                return Err(corrupt(format!(
                    "sealed with encryption key {id}, but this node has key {}: give it key {id} (--encryption-key-file)",
                    s.ids().join(", ")
                )));
            }
        },
        None => {
            return Err(corrupt(format!(
                "sealed with encryption key {id}, and this node has none: give it that key (--encryption-key-file)"
            )));
        }
    };
    let nonce = &bytes[MAGIC.len() + ID_LEN..header];
    key.cipher
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
        let key = Sealer::from_text(&"ab".repeat(32), "test").unwrap();
        let other = Sealer::from_text(&"cd".repeat(32), "test").unwrap();
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
        for bad in ["", "abcd", &"zz".repeat(32), "# only a comment\n"] {
            assert!(Sealer::from_text(bad, "test").is_err());
        }
        assert!(!format!("{key:?}").contains("abab"));
    }

    #[test]
    fn with_several_keys_the_first_seals_and_every_one_opens() {
        let old = Sealer::from_text(&"ab".repeat(32), "test").unwrap();
        let file = format!(
            "# rotated 2026-12-02\n{}\n\n{}  # old\n",
            "cd".repeat(32),
            "ab".repeat(32)
        );
        let both = Sealer::from_text(&file, "test").unwrap();
        let same =
            Sealer::from_text(&format!("{},{}", "cd".repeat(32), "ab".repeat(32)), "t").unwrap();
        assert_eq!(both.ids(), same.ids());
        assert_eq!(both.ids()[1], old.id());
        let by_old = old.seal("p", b"plain");
        assert_eq!(open(Some(&both), "p", "loc", &by_old).unwrap(), b"plain");
        let by_new = both.seal("p", b"plain");
        assert_eq!(sealed_with(&by_new).as_deref(), Some(both.id()));
        assert_eq!(sealed_with(&by_old).as_deref(), Some(old.id()));
        assert_eq!(sealed_with(b"plain"), None);
        let err = open(Some(&old), "p", "loc", &by_new)
            .unwrap_err()
            .to_string();
        assert!(err.contains(both.id()) && err.contains(old.id()), "{err}");
    }
}
