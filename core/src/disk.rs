//! Local disk: room before a write, and what a folder holds. A full disk fails the write
//! that would meet it with [`Error::DiskFull`] (a folder at its budget with
//! [`Error::DiskBudget`]), naming the path and the sizes, instead of an I/O error half-way
//! through.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Space a write must leave free on its disk, bytes: the rest of the machine (logs, the
/// coordinator's journal, the event log) keeps room to work.
pub const KEEP_FREE_BYTES: u64 = 64 << 20;

/// Bytes free to unprivileged writers on the disk of `path` (or of its nearest existing
/// parent); `None` where that cannot be told.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let mut at = Some(path);
    while let Some(p) = at {
        if let Ok(s) = rustix::fs::statvfs(p) {
            return Some(s.f_bavail.saturating_mul(s.f_frsize));
        }
        at = p.parent();
    }
    None
}

/// Refuse a write of `need` bytes at `path` that would leave less than
/// [`KEEP_FREE_BYTES`] free on its disk.
pub fn room_for(path: &Path, need: u64) -> Result<()> {
    match free_bytes(path) {
        Some(free) if free < need.saturating_add(KEEP_FREE_BYTES) => Err(Error::DiskFull {
            path: path.to_path_buf(),
            free,
            need,
        }),
        _ => Ok(()),
    }
}

/// Bytes of the files under `dir`, all levels down (0 when it is missing).
pub fn usage(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => usage(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

/// Refuse to add to `dir` once it holds `budget` bytes or more (a node's budget for the
/// folder), or when its disk has no room left.
pub fn within_budget(dir: &Path, budget: Option<u64>) -> Result<()> {
    if let Some(budget) = budget {
        let used = usage(dir);
        if used >= budget {
            return Err(Error::DiskBudget {
                path: PathBuf::from(dir),
                used,
                budget,
            });
        }
    }
    room_for(dir, 0)
}

/// Bytes in words: `12.3 MiB`.
pub fn size_text(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_larger_than_the_room_left_is_refused_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).expect("statvfs works here");
        let target = dir.path().join("not/yet/there.bin");
        assert!(room_for(&target, 1).is_ok() || free < KEEP_FREE_BYTES);
        let err = room_for(&target, free).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&target.display().to_string()) && text.contains("free"),
            "{text}"
        );
        assert_eq!(err.failure(), crate::Failure::Unavailable);
    }

    #[test]
    fn a_folder_at_its_budget_takes_no_more() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("job/1")).unwrap();
        std::fs::write(dir.path().join("job/1/a.arrow"), vec![0u8; 3000]).unwrap();
        std::fs::write(dir.path().join("b"), vec![0u8; 100]).unwrap();
        assert_eq!(usage(dir.path()), 3100);
        assert!(within_budget(dir.path(), None).is_ok());
        assert!(within_budget(dir.path(), Some(3101)).is_ok());
        let text = within_budget(dir.path(), Some(3100))
            .unwrap_err()
            .to_string();
        assert!(
            text.contains(&dir.path().display().to_string())
                && text.contains("3.0 KiB")
                && text.contains("disk_budget_mb"),
            "{text}"
        );
        assert_eq!(size_text(5), "5 bytes");
        assert_eq!(size_text(3 << 20), "3.0 MiB");
    }
}
