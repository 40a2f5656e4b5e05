//! `halyard validate` and `halyard submit` read and check a spec before any network call:
//! the real binary, no cluster running. A good spec is described; a spec naming columns
//! its data lacks gets every problem at once; a missing spec file is named, not reported
//! as an unreachable scheduler.

use std::process::{Command, Output};

fn halyard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_halyard"))
        .args(args)
        // Nothing listens here: a command that connected first would say so.
        .env("HALYARD_SCHEDULER", "127.0.0.1:9")
        .output()
        .unwrap()
}

#[test]
fn specs_are_checked_locally_with_every_problem_at_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("d.csv"),
        "customer_id,age,responded\n1,30,yes\n",
    )
    .unwrap();
    let spec = |name: &str, body: &str| {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!("name = \"{name}\"\n[data]\nsource = \"d.csv\"\n{body}"),
        )
        .unwrap();
        path.display().to_string()
    };
    let good = spec(
        "good",
        "label = \"responded\"\nexclude = [\"customer_id\"]\n",
    );
    let out = halyard(&["validate", &good]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("valid — job good") && text.contains("train"),
        "{text}"
    );

    let bad = spec("bad", "label = \"converted\"\nexclude = [\"id\"]\n");
    for args in [vec!["validate", bad.as_str()], vec!["submit", bad.as_str()]] {
        let out = halyard(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("\"converted\"") && err.contains("\"id\"") && err.contains("2 problem(s)"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("cannot reach"), "{err}");
    }

    // Every broken rule at once, each with its line.
    let rules = spec(
        "rules",
        "label = \"responded\"\n[train]\nepochs = 0\nbatch_size = 0\n",
    );
    let out = halyard(&["validate", &rules]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 6:") && err.contains("epochs = 0") && err.contains("line 7:"),
        "{err}"
    );
    assert!(err.contains("broken rule(s)"), "{err}");

    let out = halyard(&["submit", "nope.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nope.toml") && !err.contains("cannot reach"),
        "{err}"
    );
}
