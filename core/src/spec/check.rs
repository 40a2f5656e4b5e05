//! What `halyard validate` (and `halyard submit`, for a scheduler on this machine) checks
//! beyond the spec's own rules: that the local files it names exist, and that the data
//! file's header has every column the spec names.

use std::path::{Path, PathBuf};

use super::{DataFormat, JobSpec};

/// The local path of a `file://` location; `None` for S3 and other remote ones.
fn local(url: &str) -> Option<PathBuf> {
    url.strip_prefix("file://").map(PathBuf::from)
}

/// A data file's column names: the CSV header, or the Parquet schema.
fn columns(path: &Path, format: DataFormat, delimiter: u8) -> Result<Vec<String>, String> {
    match format {
        DataFormat::Csv => {
            // Arrow's reader, as jobs read the file: quoting handled the same way.
            let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
            let (schema, _) = arrow::csv::reader::Format::default()
                .with_header(true)
                .with_delimiter(delimiter)
                .infer_schema(std::io::BufReader::new(file), Some(1))
                .map_err(|e| e.to_string())?;
            Ok(schema.fields().iter().map(|f| f.name().clone()).collect())
        }
        DataFormat::Parquet => {
            let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
            let builder =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                    .map_err(|e| e.to_string())?;
            Ok(builder
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect())
        }
    }
}

impl JobSpec {
    /// Every problem with the local files this spec names, at once: a `[data] source`,
    /// `[[features.sources]]` path or `[forecast] test_source` that does not exist, and
    /// every column the spec names (label, treatment, exclude, categorical, crosses, types) that
    /// the data file's header lacks. Remote locations (S3) are not checked.
    pub fn local_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut exists = |what: &str, url: &str| -> Option<PathBuf> {
            let path = local(url)?;
            if path.exists() {
                Some(path)
            } else {
                problems.push(format!(
                    "{what}: {} does not exist (a relative path is read from the spec's folder)",
                    path.display()
                ));
                None
            }
        };
        let mut sources = Vec::new();
        let data = match &self.features {
            Some(f) => {
                for s in &f.sources {
                    if let Some(path) = exists(&format!("[[features.sources]] {}", s.name), &s.path)
                        && path.is_file()
                        && s.has_header
                        && !s.types.is_empty()
                    {
                        sources.push((s, path));
                    }
                }
                None
            }
            None => exists("[data] source", &self.data.source),
        };
        if let Some(t) = self
            .forecast
            .as_ref()
            .and_then(|f| f.test_source.as_deref())
        {
            exists("[forecast] test_source", t);
        }
        // A source's stated types name columns of its file.
        for (s, path) in sources {
            let format = match s.resolved_format("[features]") {
                Ok(super::SourceFormat::Csv) => DataFormat::Csv,
                Ok(super::SourceFormat::Parquet) => DataFormat::Parquet,
                _ => continue,
            };
            if let Ok(have) = columns(&path, format, s.delimiter_byte()) {
                for column in s.types.keys().filter(|c| !have.contains(c)) {
                    problems.push(format!(
                        "[[features.sources]] {} types: column {column:?} is not in {}; its columns are: {}",
                        s.name,
                        path.display(),
                        have.join(", ")
                    ));
                }
            }
        }
        let Some(path) = data else {
            return problems;
        };
        if !self.data.has_header {
            return problems;
        }
        let Ok(format) = self.data.resolved_format() else {
            return problems;
        };
        let delimiter = self.data.delimiter.bytes().next().unwrap_or(b',');
        let have = match columns(&path, format, delimiter) {
            Ok(c) => c,
            Err(e) => {
                problems.push(format!(
                    "[data] source: cannot read the columns of {}: {e}",
                    path.display()
                ));
                return problems;
            }
        };
        let d = &self.data;
        let mut named: Vec<(&str, &str)> = Vec::new();
        if !d.label.trim().is_empty() {
            named.push(("label", &d.label));
        }
        if let Some(t) = &d.treatment {
            named.push(("treatment", t));
        }
        named.extend(d.exclude.iter().map(|c| ("exclude", c.as_str())));
        named.extend(d.categorical.iter().map(|c| ("categorical", c.as_str())));
        named.extend(d.crosses.iter().flatten().map(|c| ("crosses", c.as_str())));
        named.extend(d.types.keys().map(|c| ("types", c.as_str())));
        for (field, column) in named {
            if !have.iter().any(|h| h == column) {
                problems.push(format!(
                    "[data] {field}: column {column:?} is not in {}; its columns are: {}",
                    path.display(),
                    have.join(", ")
                ));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_and_columns_are_all_reported() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("d.csv");
        std::fs::write(&data, "id,age,responded\n1,30,yes\n").unwrap();
        let spec = |body: &str| {
            let path = dir.path().join("s.toml");
            std::fs::write(&path, format!("name = \"s\"\n{body}")).unwrap();
            JobSpec::from_file(&path).unwrap()
        };
        let ok = spec("[data]\nsource = \"d.csv\"\nlabel = \"responded\"\nexclude = [\"id\"]\n");
        assert!(ok.local_problems().is_empty(), "{:?}", ok.local_problems());
        let bad = spec(
            "[data]\nsource = \"d.csv\"\nlabel = \"converted\"\nexclude = [\"id\", \"email\"]\n",
        );
        let p = bad.local_problems();
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("\"converted\"") && p[0].contains("id, age, responded"));
        assert!(p[1].contains("\"email\""));
        let typed = spec(
            "[data]\nlabel = \"responded\"\n[[features.sources]]\nname = \"d\"\npath = \"d.csv\"\n\
             types = { age = \"float\", Age = \"int\" }\n[features]\nsql = \"SELECT * FROM d\"\n\
             split = { method = \"hash\", key = \"id\", test_percent = 20.0 }\n",
        );
        let p = typed.local_problems();
        assert!(
            p.len() == 1 && p[0].contains("[[features.sources]] d types: column \"Age\""),
            "{p:?}"
        );
        let gone = spec("[data]\nsource = \"nope.csv\"\nlabel = \"responded\"\n");
        let p = gone.local_problems();
        assert!(p.len() == 1 && p[0].contains("nope.csv") && p[0].contains("does not exist"));
    }
}
