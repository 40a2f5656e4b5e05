//! `halyard standalone` keeps its state across `kill -9`: the embedded coordinator's
//! journal brings back every job, version, deployment and key, and the model serves again.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_standalone_comes_back_with_its_jobs_models_and_deployments() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = halyard_cli::datagen::generate(&dir.join("data"), 800, 3).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let state = dir.join("state");
    let start = || {
        Proc::spawn(
            "standalone",
            dir,
            &[
                "standalone",
                "--listen",
                &addr,
                "--executors",
                "1",
                "--data-dir",
                state.to_str().unwrap(),
            ],
        )
    };
    let mut first = start();
    let key_file = state.join("admin.key");
    let key = wait_for("the admin key", Duration::from_secs(30), || async {
        std::fs::read_to_string(&key_file)
            .ok()
            .filter(|k| !k.is_empty())
    })
    .await;
    let client = connect(&addr, key.trim()).await;
    let spec = spec(dir, "kept", &data.responses, 1, 256);
    train_and_deploy(&client, &spec, 1).await;
    let jobs_before = client.jobs().await.unwrap();
    let model_before = client.model("kept").await.unwrap();

    first.kill();
    let second = start();
    let client = connect(&addr, key.trim()).await;
    let jobs = client.jobs().await.unwrap();
    assert_eq!(
        jobs.iter().map(|j| (&j.id, &j.state)).collect::<Vec<_>>(),
        jobs_before
            .iter()
            .map(|j| (&j.id, &j.state))
            .collect::<Vec<_>>(),
        "the jobs and their states"
    );
    let model = client.model("kept").await.unwrap();
    assert_eq!(model.versions.len(), 1);
    assert_eq!(model.versions, model_before.versions);
    // The deployment as it was set (where it is placed and served is the cluster's now).
    let set = |m: &halyard_core::proto::GetModelResponse| {
        m.deployment.as_ref().map(|d| {
            (
                d.variants.clone(),
                d.aliases.clone(),
                d.history,
                d.updated_ms,
                d.replicas,
            )
        })
    };
    assert_eq!(set(&model), set(&model_before), "the deployment");
    // The deployed version serves again, from the artifact in the store.
    let http = http_client(key.trim());
    let bytes = bytes::Bytes::from(std::fs::read(&data.responses).unwrap());
    let table = halyard_core::data::read_table(&bytes, &spec.data, "responses.csv").unwrap();
    let rows = halyard_cli::load::records(&table.batches, &["responded"]).unwrap();
    let body = serde_json::json!({ "record": rows[0] }).to_string();
    wait_for(
        "the model to serve again",
        Duration::from_secs(60),
        || async {
            let r = http
                .post(format!("http://{addr}/v1/models/kept:predict"))
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .ok()?;
            r.status().is_success().then_some(())
        },
    )
    .await;
    // A new job gets the next version: the counters came back too.
    train_and_deploy(&client, &spec, 2).await;

    // A job killed while it trains is requeued after the restart, as after an executor
    // loss, and publishes once.
    let big = halyard_cli::datagen::generate(&dir.join("big"), 20_000, 4).unwrap();
    let path = dir.join("long.toml");
    std::fs::write(
        &path,
        format!(
            "name = \"long\"\n[data]\nsource = \"{}\"\nlabel = \"responded\"\nexclude = [\"customer_id\"]\n[model]\ntype = \"mlp\"\n[train]\nepochs = 300\nbatch_size = 64\n",
            big.responses.display()
        ),
    )
    .unwrap();
    let long = client
        .submit(&halyard_core::spec::JobSpec::from_file(&path).unwrap())
        .await
        .unwrap();
    wait_for("the long job to train", Duration::from_secs(60), || async {
        let j = client.job(&long.id).await.ok()?;
        (j.state == "running" && j.epoch >= 1).then_some(())
    })
    .await;
    let mut second = second;
    second.kill();
    let _third = start();
    let client = connect(&addr, key.trim()).await;
    let done = wait_done(&client, &long.id, Duration::from_secs(300)).await;
    assert_eq!(
        (done.state.as_str(), done.attempt),
        ("succeeded", 2),
        "{done:?}"
    );
    assert_eq!(client.model("long").await.unwrap().versions.len(), 1);
}
