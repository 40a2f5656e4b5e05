//! `halyard doctor`, the real binary: with no scheduler it fails naming the address it
//! tried and where that address came from, and says whether its port is free or taken by
//! something else; a real etcd answers with its version and a file store takes a probe;
//! against a running standalone cluster with its key every check passes; a wrong key is
//! reported as refused, not as unreachable.

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
    let nobody = format!("127.0.0.1:{}", free_port());
    let out = doctor(dir, &[("HALYARD_SCHEDULER", &nobody)], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "FAIL scheduler  {nobody} (from HALYARD_SCHEDULER)"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("warn port       nothing listens on {nobody}")),
        "{text}"
    );
    assert!(text.contains("data dir"), "{text}");
    // Not given, etcd and the store are not checked.
    assert!(
        text.contains("-    etcd       not checked")
            && text.contains("-    store      not checked"),
        "{text}"
    );

    // A port held by something that is not a Halyard scheduler.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap().to_string();
    let out = doctor(dir, &[("HALYARD_SCHEDULER", &taken)], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("FAIL port       {taken} is taken")),
        "{text}"
    );
    drop(squatter);

    // etcd and the store, given: the real etcd answers with its version, a file store is
    // written, read back and left as it was; an etcd port where none listens fails.
    let store = dir.join("store");
    let store_url = format!("file://{}", store.display());
    let out = doctor(
        dir,
        &[
            ("HALYARD_ETCD", &etcd_endpoint()),
            ("HALYARD_STORE", &store_url),
        ],
        &[],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "ok   etcd       {} answers: etcd 3.",
            etcd_endpoint()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("ok   store      {store_url}: writable")),
        "{text}"
    );
    assert_eq!(
        std::fs::read_dir(&store).unwrap().count(),
        0,
        "the probe is deleted"
    );
    let out = doctor(dir, &[], &["--etcd", &nobody]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("FAIL etcd") && text.contains(&nobody),
        "{text}"
    );

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
