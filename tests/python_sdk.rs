//! The Python client (`python/`, package `halyard`) through its own pytest suite
//! (`python/tests`) against a real `halyard standalone` that the suite starts from this
//! build's binary: submit and follow, read jobs, versions and events, deploy, canary,
//! promote and roll back, predict from dicts and a DataFrame, feed outcomes back, read the
//! experiment, and the errors of a bad spec, a wrong key and no cluster. Skipped with one
//! line where the Python (`HALYARD_PYTHON`, else `python3`) has no pytest; `.ci/run`
//! installs it (with pandas and the package) in a virtual environment.

mod common;

use std::process::Command;

#[test]
fn the_python_client_passes_its_suite_against_a_real_standalone() {
    let Some(python) = common::python_with("pytest, pandas", "pip install pytest pandas") else {
        return;
    };
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(&python)
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "python/tests",
        ])
        .current_dir(root)
        // The working tree's package, not an installed copy.
        .env("PYTHONPATH", format!("{root}/python"))
        .env("HALYARD_BIN", env!("CARGO_BIN_EXE_halyard"))
        .env_remove("HALYARD_KEY")
        .env_remove("HALYARD_SCHEDULER")
        .env_remove("HALYARD_KEY_FILE")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    // Every test ran: none skipped for a missing piece (pandas is installed beside pytest).
    assert!(
        text.contains("9 passed") && !text.contains("skipped"),
        "{text}"
    );
}
