//! The embedded coordinator's journal: every write that outlives a lease (a put without
//! one, a delete of such a key) appended to one file and synced before the write is
//! acknowledged, replayed at start, and rewritten as a snapshot of the live keys when it
//! grows past [`COMPACT_BYTES`]. Keys on a lease are not journalled: their leases end with
//! the process, as etcd's do when nobody renews them.
//!
//! A record is a [`crate::frame`]: the kind (`u8`: 0 put, 1 delete, 2 revision), the
//! revision (`i64`), the key and the value (each a `u32` length and bytes).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::frame::{self, Reader};

/// The journal is rewritten as a snapshot past this size.
pub const COMPACT_BYTES: u64 = 64 << 20;

/// One journalled effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// `key` holds `value` since `revision`.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// Its mod revision.
        revision: i64,
    },
    /// `key` was deleted at `revision`.
    Delete {
        /// The key.
        key: String,
        /// The revision.
        revision: i64,
    },
    /// The store's revision was `revision` (written with a snapshot).
    Revision(i64),
}

impl Record {
    fn encode(&self, buf: &mut Vec<u8>) {
        let (kind, revision, key, value): (u8, i64, &str, &[u8]) = match self {
            Record::Put {
                key,
                value,
                revision,
            } => (0, *revision, key, value),
            Record::Delete { key, revision } => (1, *revision, key, &[]),
            Record::Revision(r) => (2, *r, "", &[]),
        };
        frame::encode(buf, |b| {
            b.push(kind);
            b.extend_from_slice(&revision.to_le_bytes());
            frame::put_bytes(b, key.as_bytes());
            frame::put_bytes(b, value);
        });
    }

    /// The records of a journal's bytes, and the length of their intact prefix.
    fn decode_all(bytes: &[u8]) -> (Vec<Record>, usize) {
        frame::decode(bytes, |payload| {
            let mut r = Reader(payload);
            let kind = r.take(1)?[0];
            let revision = r.u64()? as i64;
            let key = r.string()?;
            let value = r.bytes()?.to_vec();
            Some(match kind {
                0 => Record::Put {
                    key,
                    value,
                    revision,
                },
                1 => Record::Delete { key, revision },
                2 => Record::Revision(revision),
                _ => return None,
            })
        })
    }
}

/// The open journal.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    len: u64,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Journal {
    /// Open (or create) the journal at `path`; its records, a torn tail cut off.
    pub fn open(path: &Path) -> Result<(Journal, Vec<Record>)> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(path)(e)),
        };
        let (records, good) = Record::decode_all(&bytes);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io(path))?;
        if good < bytes.len() {
            tracing::warn!(journal = %path.display(), bytes = bytes.len() - good, "cutting a torn tail off the coordinator's journal (a write that was never acknowledged)");
            file.set_len(good as u64)
                .and_then(|_| file.sync_all())
                .map_err(io(path))?;
        }
        Ok((
            Journal {
                path: path.to_path_buf(),
                file,
                len: good as u64,
            },
            records,
        ))
    }

    /// Append `records` and sync them; on failure nothing of them stays.
    pub fn append(&mut self, records: &[Record]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for r in records {
            r.encode(&mut buf);
        }
        let written = self
            .file
            .write_all(&buf)
            .and_then(|_| self.file.sync_data());
        if let Err(e) = written {
            let _ = self.file.set_len(self.len);
            return Err(io(&self.path)(e));
        }
        self.len += buf.len() as u64;
        Ok(())
    }

    /// Whether the journal should be rewritten as a snapshot.
    pub fn is_large(&self) -> bool {
        self.len > COMPACT_BYTES
    }

    /// Replace the journal with `records` (a snapshot): written beside it, synced, then
    /// renamed over it.
    pub fn rewrite(&mut self, records: &[Record]) -> Result<()> {
        let tmp = self.path.with_extension("snapshot");
        let mut buf = Vec::new();
        for r in records {
            r.encode(&mut buf);
        }
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&buf)
            .and_then(|_| f.sync_all())
            .map_err(io(&tmp))?;
        std::fs::rename(&tmp, &self.path).map_err(io(&tmp))?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
        }
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io(&self.path))?;
        self.len = buf.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.journal");
        let records = vec![
            Record::Put {
                key: "/h/jobs/a".into(),
                value: b"{\"x\":1}".to_vec(),
                revision: 3,
            },
            Record::Delete {
                key: "/h/active/a".into(),
                revision: 4,
            },
            Record::Revision(9),
        ];
        let (mut j, got) = Journal::open(&path).unwrap();
        assert!(got.is_empty());
        j.append(&records).unwrap();
        drop(j);
        let len = std::fs::metadata(&path).unwrap().len();
        // A crash in the middle of the next write.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[40, 0, 0, 0, 1, 2, 3]).unwrap();
        drop(f);
        let (_, got) = Journal::open(&path).unwrap();
        assert_eq!(got, records);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
    }
}
