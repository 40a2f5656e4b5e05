//! `halyard experiment analyze`, the real binary: its JSON carries the analysis the
//! models crate checks against scipy/statsmodels/gbstats (`models/tests/experiments.rs`),
//! its text shows the sample-ratio check before any result, and bad input fails with exit
//! code 1 naming what is wrong.

use std::process::{Command, Output};

fn analyze(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_halyard"))
        .args(["experiment", "analyze"])
        .args(args)
        .output()
        .unwrap()
}

/// The arguments that analyse the committed sample with `metrics`, then `extra`.
fn sample_args<'a>(metrics: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--table",
        SAMPLE,
        "--variant",
        "variant",
        "--control",
        "control",
    ];
    for m in metrics {
        args.extend(["--metric", m]);
    }
    args.extend(extra);
    args
}

const SAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/models/tests/fixtures/experiment_sample.csv"
);

#[test]
fn the_cli_reports_the_reference_figures_and_the_srm_check_first() {
    let args = sample_args(
        &["visit", "spend"],
        &["--covariate", "history", "--segment", "region"],
    );
    let out = analyze(&[&args[..], &["--json"]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let want: serde_json::Value = serde_json::from_str(include_str!(
        "../models/tests/fixtures/experiment_reference.json"
    ))
    .unwrap();
    let srm = got["overall"]["srm"]["p_value"].as_f64().unwrap();
    let reference = want["sample"]["overall"]["srm_p_value"].as_f64().unwrap();
    assert!(
        (srm - reference).abs() < 1e-4 * reference,
        "{srm} against {reference}"
    );
    let spend = &got["overall"]["metrics"][1];
    assert_eq!(spend["metric"], "spend");
    let mens = spend["variants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["variant"] == "mens")
        .unwrap();
    let p = mens["fixed"]["p_value"].as_f64().unwrap();
    let reference = want["sample"]["overall"]["metrics"]["spend"]["variants"]["mens"]["p_value"]
        .as_f64()
        .unwrap();
    assert!(
        (p - reference).abs() < 1e-4 * reference,
        "{p} against {reference}"
    );
    assert_eq!(got["segments"].as_array().unwrap().len(), 2);

    let text = String::from_utf8(analyze(&args).stdout).unwrap();
    let srm_at = text.find("sample ratio:").expect(&text);
    assert!(
        srm_at < text.find("visit (rate, primary)").expect(&text),
        "{text}"
    );
    assert!(text.contains("CUPED on history"), "{text}");
}

#[test]
fn a_broken_split_is_flagged_and_bad_input_fails_naming_it() {
    // A 1:1:2 split read as equal: the check flags it before any result.
    let out = analyze(&sample_args(&["visit"], &["--split", "1,1,2"]));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with(&format!("file://{SAMPLE}")), "{text}");
    assert!(text.contains("SAMPLE RATIO MISMATCH"), "{text}");

    let out = analyze(&sample_args(&["region"], &[]));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("\"region\"") && err.contains("not numbers"),
        "{err}"
    );

    let out = analyze(&[
        "--table",
        "no/such/file.csv",
        "--variant",
        "v",
        "--control",
        "c",
        "--metric",
        "m",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("no/such/file.csv"), "{err}");
}
