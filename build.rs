//! Records the commit the binary is built from (`halyard --version`): `HALYARD_COMMIT` when
//! set (a container build, whose context has no `.git`), else `git rev-parse` of the
//! checkout, else `unknown`.

use std::process::Command;

fn main() {
    // Rebuilt when HEAD moves: a checkout (HEAD itself) or a commit (the branch's ref).
    println!("cargo:rerun-if-changed=.git/HEAD");
    if let Ok(head) = std::fs::read_to_string(".git/HEAD")
        && let Some(branch) = head.trim().strip_prefix("ref: ")
    {
        println!("cargo:rerun-if-changed=.git/{branch}");
    }
    println!("cargo:rerun-if-env-changed=HALYARD_COMMIT");
    let given = std::env::var("HALYARD_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty() && c != "unknown");
    let commit = given.unwrap_or_else(|| git_commit().unwrap_or_else(|| "unknown".into()));
    println!("cargo:rustc-env=HALYARD_COMMIT={commit}");
}

/// `git rev-parse --short=12 HEAD` of the checkout.
fn git_commit() -> Option<String> {
    Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}
