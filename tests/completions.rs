//! The binary describes itself: `--version` names the commit it was built from, and the
//! completion scripts and the manual page are generated from the same command definitions
//! as `--help`, so they list every subcommand.

use std::process::Command;

fn halyard(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_halyard"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn version_names_the_commit() {
    let version = halyard(&["--version"]);
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match head {
        Some(commit) => assert!(version.contains(&format!("(commit {commit})")), "{version}"),
        // A copy of the tree without its .git folder.
        None => assert!(version.contains("(commit unknown)"), "{version}"),
    }
}

#[test]
fn completions_and_the_manual_cover_every_subcommand() {
    let bash = halyard(&["completions", "bash"]);
    assert!(bash.contains("complete -F _halyard"), "{bash}");
    let zsh = halyard(&["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef halyard"), "{zsh}");
    let fish = halyard(&["completions", "fish"]);
    let man = halyard(&["man"]);
    assert!(man.contains(".TH halyard 1"), "{man}");
    for sub in [
        "standalone",
        "submit",
        "doctor",
        "validate",
        "profile",
        "completions",
    ] {
        assert!(
            bash.contains(sub) && fish.contains(sub) && man.contains(sub),
            "{sub} missing"
        );
    }
}
