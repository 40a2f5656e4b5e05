//! The cluster with real processes: etcd (from `.ci/run`), two schedulers, two executors.
//! A job succeeds with its artifact in object storage; kill -9 of the executor running a
//! task requeues it and the job still succeeds; kill -9 of the leader hands over to the
//! standby, and no job is lost or completed twice.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_survive_killed_executor_and_killed_leader() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cl = EtcdCluster::new(dir, "it");
    let store = dir.join("store");
    let data = halyard_cli::datagen::generate(&dir.join("data"), 6000, 3).unwrap();

    let sched_ports = [free_port(), free_port()];
    let sched = |i: usize| {
        cl.scheduler(
            &format!("sched-{i}"),
            &format!("127.0.0.1:{}", sched_ports[i]),
        )
    };
    let exec = |i: usize| cl.executor(&format!("exec-{i}")).0;
    let mut sched_a = sched(0);
    let a = cl.connect(&format!("127.0.0.1:{}", sched_ports[0])).await;
    wait_for("sched-0 to lead", Duration::from_secs(20), || async {
        (a.cluster().await.ok()?.leader == "sched-0").then_some(())
    })
    .await;
    let _sched_b = sched(1);
    let b = cl.connect(&format!("127.0.0.1:{}", sched_ports[1])).await;
    let mut execs = [exec(0), exec(1)];
    wait_for("two executors", Duration::from_secs(20), || async {
        (a.cluster().await.ok()?.executors.len() == 2).then_some(())
    })
    .await;

    // 1. A job succeeds and its artifact is in the store, whole.
    let job = a
        .submit(&spec(dir, "quick", &data.responses, 3, 256))
        .await
        .unwrap();
    let done = wait_done(&a, &job.id, Duration::from_secs(120)).await;
    assert_eq!(done.state, "succeeded", "{done:?}");
    assert!(done.metrics["test_auc"] > 0.6, "{done:?}");
    let version_dir = store.join("models/quick/1");
    assert!(
        done.artifact.ends_with("models/quick/1"),
        "{}",
        done.artifact
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(version_dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["job_id"], job.id.as_str());
    assert!(
        manifest["data"]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    let weights = std::fs::read(version_dir.join("model.safetensors")).unwrap();
    halyard_models::runtime::LoadedModel::from_bytes(
        &weights,
        &serde_json::to_vec(&manifest).unwrap(),
    )
    .expect("the artifact loads");

    // 2. kill -9 the executor running a task: the task is requeued and the job succeeds.
    let job = a
        .submit(&spec(dir, "requeued", &data.responses, 60, 32))
        .await
        .unwrap();
    let running = wait_for(
        "job to train a few epochs",
        Duration::from_secs(60),
        || async {
            let j = a.job(&job.id).await.ok()?;
            (j.state == "running" && j.epoch >= 2).then_some(j)
        },
    )
    .await;
    let victim = execs
        .iter_mut()
        .find(|p| p.name == running.executor)
        .expect("a known executor");
    victim.kill();
    let done = wait_done(&a, &job.id, Duration::from_secs(180)).await;
    assert_eq!(done.state, "succeeded", "{done:?}");
    assert_eq!(done.attempt, 2, "{done:?}");
    assert_ne!(done.executor, running.executor);
    let logs = a.logs(&job.id).await.unwrap();
    assert!(
        logs.iter()
            .any(|l| l.message.contains("lost; task requeued")),
        "{logs:?}"
    );
    assert_eq!(published_versions(&store, "requeued"), vec![1]);

    // 3. kill -9 the leader mid-job: the standby takes over and the job succeeds, once.
    let job = a
        .submit(&spec(dir, "failover", &data.responses, 40, 32))
        .await
        .unwrap();
    wait_for("job to start training", Duration::from_secs(60), || async {
        let j = a.job(&job.id).await.ok()?;
        (j.state == "running" && j.epoch >= 1).then_some(())
    })
    .await;
    sched_a.kill();
    let killed = std::time::Instant::now();
    wait_for("standby to lead", Duration::from_secs(20), || async {
        (b.cluster().await.ok()?.leader == "sched-1").then_some(())
    })
    .await;
    let takeover = killed.elapsed();
    // The lease is 2 s; a standby polls at a quarter of it.
    assert!(
        takeover < Duration::from_secs(8),
        "takeover took {takeover:?}"
    );
    let done = wait_done(&b, &job.id, Duration::from_secs(180)).await;
    assert_eq!(done.state, "succeeded", "{done:?}");
    assert_eq!(
        done.attempt, 1,
        "the executor was not lost, so no retry: {done:?}"
    );
    assert_eq!(published_versions(&store, "failover"), vec![1]);
    // Every job is still there, each succeeded once.
    let jobs = b.jobs().await.unwrap();
    assert_eq!(jobs.len(), 3);
    assert!(jobs.iter().all(|j| j.state == "succeeded"), "{jobs:?}");

    // The new leader runs its own SQL scheduler; the executors follow it, and a query
    // runs on them.
    let endpoint = wait_for(
        "the new leader's sql endpoint",
        Duration::from_secs(20),
        || async {
            let c = b.cluster().await.ok()?;
            (!c.sql_endpoint.is_empty()).then_some(c.sql_endpoint)
        },
    )
    .await;
    let access = halyard_features::session::DataAccess::unconfined(
        &halyard_core::store::S3Config::default(),
    );
    let key = cl.admin_key().await;
    let ctx = halyard_features::session::remote_context(&endpoint, Some(&key), None, &access, 2)
        .await
        .unwrap();
    let csv = data.responses.to_str().unwrap();
    ctx.register_csv("responses", csv, Default::default())
        .await
        .unwrap();
    let rows = halyard_features::stage::collect_retrying(&ctx, "SELECT count(*) FROM responses")
        .await
        .unwrap();
    let n = arrow::compute::cast(rows[0].column(0), &arrow::datatypes::DataType::Int64).unwrap();
    let n = arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(&n).value(0);
    assert_eq!(
        n as usize, data.rows,
        "counted on the executors, through the new leader"
    );
    eprintln!("leader takeover after kill -9: {takeover:?}");
}
