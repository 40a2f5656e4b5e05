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

/// The committed fixture (`tests/fixtures/own_data.py` writes it): `Spend` has decimals
/// only after row 5,000, `Tenure` blank, whitespace-only and `NA` cells, `Signup` ISO
/// dates and `LastVisit` day-first ones; every name has capitals.
const OWN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/own_data.csv");

/// Each input column of a trained model: its type as read and how it is encoded.
fn encodings(out: &std::path::Path) -> std::collections::BTreeMap<String, (String, String)> {
    let text = std::fs::read_to_string(out.join("training.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut found = std::collections::BTreeMap::new();
    for c in v["architecture"]["preprocessor"]["columns"]
        .as_array()
        .unwrap()
    {
        let kinds: &mut (String, String) = found
            .entry(c["name"].as_str().unwrap().to_string())
            .or_default();
        kinds.0 = c["source_type"].as_str().unwrap().to_string();
        let kind = c["encoding"]["kind"].as_str().unwrap();
        if !kinds.1.contains(kind) {
            kinds.1 = [kinds.1.as_str(), kind]
                .iter()
                .filter(|k| !k.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join("+");
        }
    }
    found
}

#[test]
fn a_users_own_csv_trains_alike_through_data_and_features() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: String| {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let data = |name: &str, extra: &str| {
        write(
            name,
            format!(
                "name = \"{name}\"\n[data]\nsource = \"{OWN}\"\nlabel = \"Responded\"\nexclude = [\"Customer_Id\"]\n{extra}\n[train]\nepochs = 2\n"
            ),
        )
    };
    let features = |name: &str, extra: &str| {
        write(
            name,
            format!(
                "name = \"{name}\"\n[data]\nlabel = \"Responded\"\nexclude = [\"Customer_Id\"]\n\
                 [[features.sources]]\nname = \"own\"\npath = \"{OWN}\"\n{extra}\n[features]\n\
                 sql = 'SELECT \"Customer_Id\", \"Spend\", \"Tenure\", \"Signup\", \"LastVisit\", \"Responded\" FROM own'\n\
                 split = {{ method = \"hash\", key = \"Customer_Id\", test_percent = 20.0 }}\n\
                 [train]\nepochs = 2\n"
            ),
        )
    };
    let want = [
        ("LastVisit", "Date32", "numeric+date_part"),
        ("Signup", "Date32", "numeric+date_part"),
        ("Spend", "Float64", "numeric"),
        ("Tenure", "Int64", "numeric"),
    ];
    for (how, spec) in [
        ("data", data("own-data", "date_format = \"%d/%m/%Y\"")),
        (
            "features",
            features("own-features", "date_format = \"%d/%m/%Y\""),
        ),
    ] {
        let out = dir.path().join(how);
        let run = train(dir.path(), &[&spec, "--out", out.to_str().unwrap()]);
        let text = common::succeeded(&run);
        assert!(text.contains("test_auc"), "{text}");
        // The log starts with the data's profile: the dates as dates, the blanks and
        // markers of Tenure as missing, the id left out.
        let log = String::from_utf8_lossy(&run.stderr);
        let line = |column: &str| {
            log.lines()
                .find(|l| l.starts_with(&format!("data: {column} ")))
                .unwrap_or_else(|| panic!("{how}: no profile line of {column}: {log}"))
                .to_string()
        };
        assert!(line("LastVisit").contains(" date "), "{how}: {log}");
        assert!(
            line("Tenure").contains(" 3.3%"),
            "{how}: {}",
            line("Tenure")
        );
        assert!(line("Customer_Id").contains("left out"), "{how}: {log}");
        assert!(line("Responded").contains("the label"), "{how}: {log}");
        let found = encodings(&out);
        for (name, ty, kind) in want {
            assert_eq!(
                found.get(name),
                Some(&(ty.to_string(), kind.to_string())),
                "{how}: {name} in {found:?}"
            );
        }
    }
    // Without the format, the day-first dates stay text (a category), ISO ones are dates.
    let out = dir.path().join("no-format");
    let run = train(
        dir.path(),
        &[&data("no-format", ""), "--out", out.to_str().unwrap()],
    );
    common::succeeded(&run);
    let found = encodings(&out);
    assert_eq!(found["LastVisit"].0, "Utf8");
    assert_eq!(found["Signup"].0, "Date32");
    // A stated type the values break, and markers turned off, are named with the file,
    // the line, the column and the setting to change, through both ways in.
    let cases = [
        (
            data("int-data", "types = { Spend = \"int\" }"),
            "line 5002, column 2 (\"Spend\"): value \"165.8\" is not a valid Int64",
            "[data] types = { Spend = \"float\" }",
        ),
        (
            features("int-features", "types = { Spend = \"int\" }"),
            "line 5002, column 2 (\"Spend\"): value \"165.8\" is not a valid Int64",
            "[[features.sources]] (\"own\") types = { Spend = \"float\" }",
        ),
        (
            data("strict-data", "missing = []"),
            "line 13, column 3 (\"Tenure\"): value \"NA\" is not a number",
            "[data] missing = [\"NA\"]",
        ),
        (
            features("strict-features", "missing = []"),
            "line 13, column 3 (\"Tenure\"): value \"NA\" is not a number",
            "[[features.sources]] (\"own\") missing = [\"NA\"]",
        ),
    ];
    for (spec, what, fix) in cases {
        let run = train(dir.path(), &[&spec]);
        let err = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(1), "{err}");
        assert!(
            err.contains("own_data.csv") && err.contains(what) && err.contains(fix),
            "{spec}: {err}"
        );
    }
}

#[test]
fn a_forecasters_held_out_points_are_written_with_their_forecasts() {
    let dir = tempfile::tempdir().unwrap();
    let g = halyard_cli::datagen::generate(&dir.path().join("data"), 200, 3).unwrap();
    let spec = dir.path().join("kpi.toml");
    std::fs::write(
        &spec,
        format!(
            "name = \"kpi\"\n[data]\nsource = \"{}\"\n[model]\ntype = \"nbeats\"\n\
             [forecast]\nhorizon = 7\nperiod = 7\nlayout = \"long\"\nid_column = \"campaign\"\n\
             value_column = \"conversions\"\nwidth = 16\nsteps = 20\n",
            g.kpis.display()
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    let run = train(
        dir.path(),
        &[spec.to_str().unwrap(), "--out", out.to_str().unwrap()],
    );
    let text = common::succeeded(&run);
    assert!(text.contains("forecasts.csv"), "{text}");
    // The actual values are each campaign's last 7 days in the source, in order.
    let source = std::fs::read_to_string(&g.kpis).unwrap();
    let mut header = source.lines().next().unwrap().split(',');
    let id = header.clone().position(|c| c == "campaign").unwrap();
    let value = header.position(|c| c == "conversions").unwrap();
    let mut series: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for line in source.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        series
            .entry(f[id].to_string())
            .or_default()
            .push(f[value].parse().unwrap());
    }
    let csv = std::fs::read_to_string(out.join("forecasts.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("series,step,actual,forecast"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), series.len() * 7, "{csv}");
    for r in &rows {
        let values = &series[r[0]];
        let step: usize = r[1].parse().unwrap();
        let actual: f64 = r[2].parse().unwrap();
        assert_eq!(actual, values[values.len() - 7 + step - 1], "{r:?}");
        assert!(r[3].parse::<f64>().unwrap().is_finite(), "{r:?}");
    }
}
