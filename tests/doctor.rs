//! `halyard doctor`, the real binary: with no scheduler it fails naming the address it
//! tried and where that address came from; against a running standalone cluster with its
//! key every check passes; a wrong key is reported as refused, not as unreachable.

mod common;

use std::process::{Command, Output};

use common::*;

fn doctor(dir: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_halyard"))
        .arg("doctor")
        .args(args)
        .current_dir(dir)
        .env_remove("HALYARD_KEY")
        .env("HALYARD_DATA_DIR", dir.join("state"))
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_what_is_wrong_and_passes_on_a_running_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let out = doctor(dir, &[("HALYARD_SCHEDULER", "127.0.0.1:9")], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL scheduler  127.0.0.1:9 (from HALYARD_SCHEDULER)"),
        "{text}"
    );
    assert!(text.contains("data dir"), "{text}");

    let (cluster, _client) = standalone(dir, 1).await;
    let addr = cluster.scheduler.addr.to_string();
    let out = doctor(
        dir,
        &[],
        &["--scheduler", &addr, "--key", &cluster.admin_key],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "ok   scheduler  {addr} (from --scheduler) answers"
        )),
        "{text}"
    );
    assert!(
        text.contains("ok   data dir") && text.contains("ok   disk"),
        "{text}"
    );
    assert!(
        !text.contains(&cluster.admin_key),
        "the key is never printed: {text}"
    );

    let out = doctor(dir, &[], &["--scheduler", &addr, "--key", "hk_nobody_x"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("refuses the key"), "{text}");
}
