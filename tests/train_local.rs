//! `halyard train`, the real binary, no cluster: it trains a spec in this process, prints
//! the metrics, writes the weights to `--out`, and leaves no temporary folder behind,
//! whether training succeeded or failed.

mod common;

use std::process::{Command, Output};

fn train(tmp: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_halyard"))
        .arg("train")
        .args(args)
        .env("TMPDIR", tmp)
        .output()
        .unwrap()
}

#[test]
fn local_training_reports_writes_its_output_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let scratch = dir.path().join("tmp");
    std::fs::create_dir_all(&scratch).unwrap();
    let g = halyard_cli::datagen::generate(&dir.path().join("data"), 1000, 4).unwrap();
    let spec = |name: &str, label: &str| {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "name = \"{name}\"\n[data]\nsource = \"{}\"\nlabel = \"{label}\"\nexclude = [\"customer_id\"]\n[train]\nepochs = 1\n",
                g.responses.display()
            ),
        )
        .unwrap();
        path.display().to_string()
    };
    let out_dir = dir.path().join("out");
    let out = train(
        &scratch,
        &[
            &spec("good", "responded"),
            "--out",
            out_dir.to_str().unwrap(),
        ],
    );
    let text = common::succeeded(&out);
    assert!(text.contains("test_auc"), "{text}");
    assert!(out_dir.join("model.safetensors").exists());
    assert!(out_dir.join("training.json").exists());
    // The test rows' predictions: every 5th row (holdout_every), with its id and label,
    // and a probability; as many as the summary's test rows.
    let csv = std::fs::read_to_string(out_dir.join("predictions.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("row,customer_id,responded,score"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("training.json")).unwrap()).unwrap();
    assert_eq!(
        rows.len() as u64,
        summary["data"]["test_rows"].as_u64().unwrap()
    );
    assert!(rows.len() >= 180, "{} test rows of 1,000", rows.len());
    for r in &rows {
        assert_eq!(r[0].parse::<usize>().unwrap() % 5, 4, "{r:?}");
        let score: f64 = r[3].parse().unwrap();
        assert!((0.0..=1.0).contains(&score), "{r:?}");
    }

    let out = train(&scratch, &[&spec("plain", "responded")]);
    assert!(out.status.success());
    // A label that is not a class fails training, after the scratch folder was made.
    let out = train(&scratch, &[&spec("bad", "region")]);
    assert_eq!(out.status.code(), Some(1));
    let left: Vec<_> = std::fs::read_dir(&scratch).unwrap().collect();
    assert!(left.is_empty(), "temporary folders left behind: {left:?}");
}

/// The committed fixture: an income column with blank, `NA` and `?` cells, zip codes with
/// leading zeros, signup dates.
const MARKERS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/markers_and_types.csv"
);

#[test]
fn missing_markers_and_stated_types_train_and_their_absence_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let spec = |name: &str, extra: &str| {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "name = \"{name}\"\n[data]\nsource = \"{MARKERS}\"\nlabel = \"responded\"\nexclude = [\"customer_id\"]\n{extra}\n[train]\nepochs = 2\n"
            ),
        )
        .unwrap();
        path.display().to_string()
    };
    // By default blank, NA and ? are missing values: income stays numeric and it trains,
    // zip read as text keeps its leading zeros.
    let out = train(
        dir.path(),
        &[&spec(
            "markers",
            "types = { zip = \"string\", signup = \"date\" }",
        )],
    );
    let text = common::succeeded(&out);
    assert!(text.contains("test_auc"), "{text}");
    // Without the markers, the job stops and says which cells and what to set.
    let out = train(dir.path(), &[&spec("strict", "missing = []")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("markers_and_types.csv")
            && err.contains("column 3 (\"income\")")
            && err.contains("[data] missing = [\"NA\", \"?\"]"),
        "{err}"
    );
    // A stated column that does not exist is named, with the columns there are.
    let out = train(
        dir.path(),
        &[&spec("typo", "types = { zipcode = \"string\" }")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"zipcode\"") && err.contains("customer_id, age, income"),
        "{err}"
    );
}
