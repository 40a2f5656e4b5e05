//! Garbage collection on a real cluster (etcd, a scheduler, two executors, a `file://`
//! store): `halyard gc --dry-run` lists and `halyard gc` deletes exactly what no record
//! needs (the checkpoint of a data-parallel job that succeeded, a version folder whose
//! number was issued but never registered, as an executor that lost its task leaves), and
//! keeps the rest (the registered version, which still serves, its job's feature table, a
//! folder the coordinator never issued).

mod common;

use std::time::Duration;

use common::*;

fn gc(addr: &str, key: &str, dry_run: bool) -> serde_json::Value {
    let mut args = vec!["gc", "--scheduler", addr, "--key", key, "--json"];
    if dry_run {
        args.push("--dry-run");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_halyard"))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "halyard gc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn folders(answer: &serde_json::Value) -> Vec<(String, String)> {
    let mut f: Vec<(String, String)> = answer["folders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_string(),
                f["folder"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    f.sort();
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_deletes_what_no_record_needs_and_keeps_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = halyard_cli::datagen::generate(&dir.join("data"), 3_000, 7).unwrap();
    let mut cl = EtcdCluster::new(dir, "gc");
    // Collected only when asked, and with no grace: the test's objects are seconds old.
    cl.flags = ["--gc-hours", "0", "--gc-grace-mins", "0"]
        .map(String::from)
        .to_vec();
    let addr = format!("127.0.0.1:{}", free_port());
    let _scheduler = cl.scheduler("gc-scheduler", &addr);
    let _executors = [cl.executor("gc-exec-0").0, cl.executor("gc-exec-1").0];
    let client = cl.connect(&addr).await;
    let key = cl.admin_key().await;
    // (60 s as the other suites wait: a clean-clone CI run once saw 30 s pass without both.)
    wait_for("two executors", Duration::from_secs(60), || async {
        (client.cluster().await.ok()?.executors.len() == 2).then_some(())
    })
    .await;

    let spec = data_parallel_spec(
        dir,
        "kept",
        &data.responses,
        2,
        "epochs = 2\ncheckpoint_steps = 2\ncheckpoint_secs = 0",
        "",
    );
    let job = client.submit(&spec).await.unwrap();
    let done = wait_done(&client, &job.id, Duration::from_secs(300)).await;
    assert_eq!(done.state, "succeeded", "{done:?}");
    let store = dir.join("store");
    let checkpoint = store.join(format!("jobs/{}/checkpoint/latest.ckpt", job.id));
    let features = store.join(format!("jobs/{}/features", job.id));
    assert!(checkpoint.exists() && features.exists());

    // An executor that lost its task after drawing version 2 and writing its weights: the
    // number is issued, the folder written, the version never registered.
    let kv = halyard_core::kv::EtcdKv::connect(std::slice::from_ref(&cl.etcd), &Default::default())
        .await
        .unwrap();
    let coord = halyard_core::coord::Coordinator::new(std::sync::Arc::new(kv), &cl.root);
    assert_eq!(coord.next_model_version("kept").await.unwrap(), 2);
    let orphan = store.join("models/kept/2");
    std::fs::create_dir_all(&orphan).unwrap();
    std::fs::write(orphan.join("model.safetensors"), vec![7u8; 4096]).unwrap();
    // A folder whose number was never issued here (another cluster's?): kept.
    let foreign = store.join("models/kept/9");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("model.safetensors"), b"x").unwrap();

    let want = vec![
        (
            "checkpoint of an ended job".to_string(),
            format!("jobs/{}/checkpoint", job.id),
        ),
        (
            "unregistered version".to_string(),
            "models/kept/2".to_string(),
        ),
    ];
    let listed = gc(&addr, &key, true);
    assert_eq!(folders(&listed), want, "{listed}");
    assert_eq!(listed["dry_run"], true);
    assert!(listed["bytes"].as_u64().unwrap() >= 4096, "{listed}");
    assert!(
        checkpoint.exists() && orphan.exists(),
        "a dry run deletes nothing"
    );

    let deleted = gc(&addr, &key, false);
    assert_eq!(folders(&deleted), want, "{deleted}");
    assert!(!checkpoint.exists() && !orphan.exists());
    assert!(
        !store.join(format!("jobs/{}/checkpoint", job.id)).exists(),
        "the emptied folder goes too"
    );
    assert!(foreign.join("model.safetensors").exists());
    assert!(
        !files_under(&features).is_empty(),
        "the feature table is kept"
    );
    assert!(store.join("models/kept/1/manifest.json").exists());
    let model = client.model("kept").await.unwrap();
    assert_eq!(model.versions.len(), 1);

    // Nothing is left to collect, and the collection is in the audit log.
    assert_eq!(folders(&gc(&addr, &key, false)), Vec::new());
    let audit = client.audit(0).await.unwrap();
    assert!(
        audit.iter().any(|e| e.action == "gc" && e.outcome == "ok"),
        "{audit:?}"
    );
}
