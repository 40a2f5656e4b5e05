//! The README's "By hand" block works as written: its commands are read from README.md
//! itself (so the two cannot drift) and run by bash against a standalone cluster, with
//! only what a person does between them filled in — the binary instead of `cargo build`,
//! a free port instead of 7070, a job id for `ID`, and a wait for the model to load.

use std::path::Path;
use std::process::Command;

mod common;

/// The shell block under the README's `## By hand` heading.
fn by_hand_block(readme: &str) -> &str {
    let section = readme
        .split_once("## By hand")
        .expect("README.md has a `## By hand` section")
        .1;
    let body = section
        .split_once("```sh\n")
        .expect("the section has a ```sh block")
        .1;
    body.split_once("\n```").expect("the block ends").0
}

/// The block as a bash script (see the module's comment for what is filled in).
fn script(block: &str) -> String {
    let mut s = String::from(
        "set -euo pipefail\nhalyard() { \"$HALYARD_BIN\" \"$@\"; }\n\
         trap 'kill $standalone 2>/dev/null || true' EXIT\n",
    );
    let mut have_id = false;
    for line in block.lines() {
        if line.starts_with("cargo build") {
            continue;
        }
        if line.starts_with("halyard standalone") {
            s.push_str(
                "\"$HALYARD_BIN\" standalone > standalone.log 2>&1 &\nstandalone=$!\n\
                 for _ in $(seq 1 150); do halyard cluster >/dev/null 2>&1 && break; sleep 0.2; done\n",
            );
            continue;
        }
        let mut line = line.replace("localhost:7070", "$HALYARD_SCHEDULER");
        if line.contains(" ID") {
            if !have_id {
                s.push_str(
                    "ID=$(halyard jobs --json | python3 -c 'import json, sys; print(json.load(sys.stdin)[0][\"id\"])')\n",
                );
                have_id = true;
            }
            line = line.replace(" ID", " \"$ID\"");
        }
        s.push_str(&line);
        s.push('\n');
        if line.starts_with("halyard deploy") {
            // A person reads the answer before calling the model; the test waits until an
            // executor has loaded it.
            s.push_str(
                "for _ in $(seq 1 150); do curl -sf -H \"authorization: Bearer $(cat halyard-data/admin.key)\" \
                 \"$HALYARD_SCHEDULER/v1/models/campaign-response\" >/dev/null && break; sleep 0.2; done\n",
            );
        }
    }
    s
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn the_readme_by_hand_block_runs_as_written() {
    let block = by_hand_block(include_str!("../README.md"));
    let script = script(block);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"),
        &dir.join("examples"),
    );
    let addr = format!("127.0.0.1:{}", common::free_port());
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir)
        .env("HALYARD_BIN", env!("CARGO_BIN_EXE_halyard"))
        .env("HALYARD_LISTEN", &addr)
        .env("HALYARD_SCHEDULER", &addr)
        .env_remove("HALYARD_KEY")
        .env_remove("HALYARD_KEY_FILE")
        .env_remove("HALYARD_DATA_DIR")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let log = std::fs::read_to_string(dir.join("standalone.log")).unwrap_or_default();
    let shown = format!(
        "script:\n{script}\nstdout:\n{stdout}\nstderr:\n{stderr}\nstandalone log (tail):\n{}",
        log.lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );
    assert!(out.status.success(), "{shown}");
    // The job's metrics (submit --follow), its listing, the model's schema and a score.
    assert!(stdout.contains("test_auc"), "{shown}");
    assert!(stdout.contains("campaign-response"), "{shown}");
    assert!(stdout.contains("\"income\""), "{shown}");
    assert!(stdout.contains("\"predictions\""), "{shown}");
}
