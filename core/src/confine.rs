//! The data roots: the folders and buckets a cluster's jobs and SQL may read and write
//! (`--data-roots`). Every location a job spec names is checked at submit time, and every
//! object-store operation a node makes for SQL or a job's data is checked again where it
//! happens (`halyard_features::stores`), so `file:///etc/passwd`, `..`, a symbolic link out
//! of a root and an unlisted bucket are refused before anything is read or written.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// The folders and buckets data may come from and go to.
#[derive(Clone, PartialEq, Eq)]
pub struct Roots {
    /// Absolute folders, with symbolic links resolved.
    dirs: Vec<PathBuf>,
    /// `(bucket, prefix)`: a bucket, or a prefix in it (no leading or trailing `/`).
    buckets: Vec<(String, String)>,
    /// No confinement: a user's own process (`halyard sql --local`, `halyard train`).
    any: bool,
}

impl fmt::Debug for Roots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Roots({self})")
    }
}

impl fmt::Display for Roots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.any {
            return f.write_str("anywhere");
        }
        let mut names: Vec<String> = self.dirs.iter().map(|d| d.display().to_string()).collect();
        names.extend(self.buckets.iter().map(|(b, p)| {
            if p.is_empty() {
                format!("s3://{b}")
            } else {
                format!("s3://{b}/{p}")
            }
        }));
        if names.is_empty() {
            return f.write_str("none");
        }
        f.write_str(&names.join(", "))
    }
}

impl Roots {
    /// No confinement, for a process that acts with its own user's rights only.
    pub fn any() -> Roots {
        Roots {
            dirs: Vec::new(),
            buckets: Vec::new(),
            any: true,
        }
    }

    /// Roots from `entries`: folders (relative ones against `base`), `file://` URLs, and
    /// `s3://bucket` or `s3://bucket/prefix`.
    pub fn parse(entries: &[String], base: &Path) -> Result<Roots> {
        let bad = |entry: &str, rule: &str| Error::invalid("config", "data_roots", entry, rule);
        let mut roots = Roots {
            dirs: Vec::new(),
            buckets: Vec::new(),
            any: false,
        };
        for entry in entries {
            let entry = entry.trim();
            if let Some(rest) = entry.strip_prefix("s3://") {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(bad(
                        entry,
                        "an S3 root names its bucket: s3://bucket[/prefix]",
                    ));
                }
                roots
                    .buckets
                    .push((bucket.to_string(), prefix.trim_matches('/').to_string()));
            } else if entry.contains("://") && !entry.starts_with("file://") {
                return Err(bad(
                    entry,
                    "a root is a folder, a file:// URL or s3://bucket[/prefix]",
                ));
            } else {
                let path = base.join(entry.strip_prefix("file://").unwrap_or(entry));
                if has_parent_step(&path) {
                    // `../shared/data`: the folder it names, which must exist.
                    let real = std::fs::canonicalize(&path)
                        .map_err(|_| bad(entry, "no such folder (a root with `..` must exist)"))?;
                    roots.dirs.push(real);
                } else {
                    // Resolved once here, not at every check: links above a folder that
                    // does not exist yet are resolved too.
                    roots.dirs.push(resolve(&path).unwrap_or(path));
                }
            }
        }
        Ok(roots)
    }

    /// Add a location (a store's URL) to the roots.
    pub fn with(mut self, url: &str) -> Result<Roots> {
        let more = Roots::parse(&[url.to_string()], Path::new("/"))?;
        self.dirs.extend(more.dirs);
        self.buckets.extend(more.buckets);
        Ok(self)
    }

    /// Whether `url` (a `file://` or `s3://` URL, or an absolute path) lies under a root;
    /// the error says which roots there are and what to do.
    pub fn check_url(&self, url: &str) -> Result<()> {
        if self.any {
            return Ok(());
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            return self.check_object(bucket, key, url);
        }
        let path = match url.strip_prefix("file://") {
            Some(p) => p,
            None if url.contains("://") => return Err(self.outside(url)),
            None => url,
        };
        self.check_path(Path::new(path), url)
    }

    /// Whether the local file or folder `path` lies under a root, with symbolic links
    /// resolved; `shown` names it in the error.
    pub fn check_path(&self, path: &Path, shown: &str) -> Result<()> {
        if self.any {
            return Ok(());
        }
        // `..` and links are resolved first; a `..` below a folder that does not exist
        // cannot be, and is refused.
        let Some(real) = path.is_absolute().then(|| resolve(path)).flatten() else {
            return Err(self.outside(shown));
        };
        let inside = self.dirs.iter().any(|root| real.starts_with(root));
        if inside {
            Ok(())
        } else {
            Err(self.outside(shown))
        }
    }

    /// Whether `key` of `bucket` lies under a root; `shown` names it in the error.
    pub fn check_object(&self, bucket: &str, key: &str, shown: &str) -> Result<()> {
        if self.any {
            return Ok(());
        }
        let key = key.trim_start_matches('/');
        let inside = !key.split('/').any(|s| s == "..")
            && self.buckets.iter().any(|(b, prefix)| {
                b == bucket
                    && (prefix.is_empty()
                        || key == prefix
                        || key
                            .strip_prefix(prefix.as_str())
                            .is_some_and(|rest| rest.starts_with('/')))
            });
        if inside {
            Ok(())
        } else {
            Err(self.outside(shown))
        }
    }

    /// Whether any key of `bucket` may be touched (an S3 client for it may be made).
    pub fn allows_bucket(&self, bucket: &str) -> bool {
        self.any || self.buckets.iter().any(|(b, _)| b == bucket)
    }

    fn outside(&self, location: &str) -> Error {
        Error::Outside {
            location: location.to_string(),
            roots: self.to_string(),
        }
    }
}

/// Whether `path` steps up with `..`.
fn has_parent_step(path: &Path) -> bool {
    path.components().any(|c| c == Component::ParentDir)
}

/// `path` with `..` and symbolic links resolved: its longest existing ancestor made
/// canonical, and the rest (which does not exist yet, so holds no link) appended; `None`
/// when that rest steps up with `..`.
fn resolve(path: &Path) -> Option<PathBuf> {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(&existing) {
            return Some(rest.iter().rev().fold(real, |p, name| p.join(name)));
        }
        match existing.components().next_back() {
            Some(Component::Normal(name)) => {
                rest.push(name.to_os_string());
                existing.pop();
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_inside_and_outside_the_roots() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let other = dir.path().join("other");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("secret.csv"), "a\n1\n").unwrap();
        std::os::unix::fs::symlink(&other, data.join("escape")).unwrap();
        std::os::unix::fs::symlink(other.join("secret.csv"), data.join("secret.csv")).unwrap();
        let roots = Roots::parse(
            &[data.display().to_string(), "s3://lake/marketing".into()],
            Path::new("/"),
        )
        .unwrap();
        let d = data.display();
        // (location, allowed)
        let table: Vec<(String, bool)> = vec![
            (format!("file://{d}/x.csv"), true),
            (format!("{d}/new/folder/out.csv"), true),
            (format!("file://{d}"), true),
            (format!("file://{d}/../other/secret.csv"), false),
            (format!("file://{d}/../data/x.csv"), true),
            (format!("file://{d}/missing/../../other/x.csv"), false),
            (format!("file://{d}/escape/secret.csv"), false),
            (format!("file://{d}/secret.csv"), false),
            ("file:///etc/passwd".into(), false),
            ("/etc/passwd".into(), false),
            ("relative/x.csv".into(), false),
            ("s3://lake/marketing/x.parquet".into(), true),
            ("s3://lake/marketing".into(), true),
            ("s3://lake/marketing-raw/x.parquet".into(), false),
            ("s3://lake/finance/x.parquet".into(), false),
            ("s3://lake/marketing/../finance/x".into(), false),
            ("s3://other/marketing/x.parquet".into(), false),
            ("http://example.com/x.csv".into(), false),
        ];
        for (location, allowed) in table {
            let got = roots.check_url(&location);
            assert_eq!(got.is_ok(), allowed, "{location}: {got:?}");
            if let Err(e) = got {
                let text = e.to_string();
                assert!(text.contains("--data-roots"), "{text}");
                assert_eq!(e.failure(), crate::Failure::Forbidden);
            }
        }
        assert!(Roots::any().check_url("file:///etc/passwd").is_ok());
        assert!(roots.allows_bucket("lake") && !roots.allows_bucket("other"));
    }

    #[test]
    fn roots_are_folders_file_urls_or_buckets() {
        let base = Path::new("/srv");
        let roots = Roots::parse(&["data".into(), "file:///tmp/x".into()], base).unwrap();
        assert_eq!(roots.to_string(), "/srv/data, /tmp/x");
        for bad in ["s3://", "gs://b", "data/../etc"] {
            assert!(Roots::parse(&[bad.to_string()], base).is_err(), "{bad}");
        }
    }
}
