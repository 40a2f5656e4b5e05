//! Records the commit the binary is built from (`halyard --version`): `git rev-parse` of
//! the checkout, or `unknown` outside one.

use std::process::Command;

fn main() {
    // Rebuilt when HEAD moves: a checkout (HEAD itself) or a commit (the branch's ref).
    println!("cargo:rerun-if-changed=.git/HEAD");
    if let Ok(head) = std::fs::read_to_string(".git/HEAD")
        && let Some(branch) = head.trim().strip_prefix("ref: ")
    {
        println!("cargo:rerun-if-changed=.git/{branch}");
    }
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=HALYARD_COMMIT={commit}");
}
