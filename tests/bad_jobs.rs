//! Bad input at the cluster level: each bad job fails with an error that says what was
//! wrong and where, and the cluster keeps running (a good job succeeds afterwards).

mod common;

use std::time::Duration;

use halyard_core::spec::JobSpec;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_jobs_fail_clearly_and_the_cluster_keeps_running() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let settings = halyard_core::config::Settings {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(dir.join("state")),
        data_roots: Some(vec![dir.display().to_string()]),
        executors: Some(1),
        ..Default::default()
    };
    let cluster = halyard::start_standalone(settings).await.unwrap();
    let client = common::client_of(&cluster).await;

    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let mut csv = String::from("age,channel,responded\n");
    for i in 0..200 {
        csv.push_str(&format!(
            "{},{},{}\n",
            20 + i % 40,
            if i % 3 == 0 { "sms" } else { "email" },
            if i % 4 == 0 { "yes" } else { "no" }
        ));
    }
    write("good.csv", &csv);
    write("ragged.csv", &format!("{csv}33,sms\n"));
    write("one-class.csv", &csv.replace(",yes\n", ",no\n"));
    write("header-only.csv", "age,channel,responded\n");
    let job = |name: &str, data: &str, label: &str| {
        let p = write(
            &format!("{name}.toml"),
            &format!(
                "name = \"{name}\"\n[data]\nsource = \"{data}\"\nlabel = \"{label}\"\n[train]\nepochs = 2\n"
            ),
        );
        JobSpec::from_file(&p).unwrap()
    };

    let cases = [
        (
            job("missing", "nowhere.csv", "responded"),
            "nowhere.csv not found",
        ),
        (
            job("ragged", "ragged.csv", "responded"),
            "ragged.csv: line 202: wrong number of fields",
        ),
        (
            job("oneclass", "one-class.csv", "responded"),
            "single class",
        ),
        (job("empty", "header-only.csv", "responded"), "no rows"),
        (
            job("nolabel", "good.csv", "converted"),
            "column \"converted\" not found",
        ),
    ];
    for (spec, expected) in cases {
        let submitted = client.submit(&spec).await.unwrap();
        let done = common::wait_done(&client, &submitted.id, Duration::from_secs(60)).await;
        assert_eq!(done.state, "failed", "{} should fail: {done:?}", spec.name);
        assert!(
            done.error.contains(expected),
            "{}: expected {expected:?} in {:?}",
            spec.name,
            done.error
        );
        assert_eq!(done.attempt, 1, "bad input is not retried: {done:?}");
    }

    // A spec that breaks a rule is refused at submission, before anything runs.
    let mut bad = job("refused", "good.csv", "responded");
    bad.train.epochs = 0;
    let err = client.submit(&bad).await.unwrap_err().to_string();
    assert!(
        err.contains("[train] epochs = 0: must be at least 1"),
        "{err}"
    );

    // The cluster still works.
    let ok = client
        .submit(&job("fine", "good.csv", "responded"))
        .await
        .unwrap();
    let done = common::wait_done(&client, &ok.id, Duration::from_secs(60)).await;
    assert_eq!(done.state, "succeeded", "{done:?}");

    // A job can be cancelled; the cancel is final.
    let mut long = job("long", "good.csv", "responded");
    long.train.epochs = 100_000;
    let submitted = client.submit(&long).await.unwrap();
    common::wait_for("training to start", Duration::from_secs(30), || async {
        (client.job(&submitted.id).await.ok()?.epoch >= 1).then_some(())
    })
    .await;
    client.cancel(&submitted.id).await.unwrap();
    let done = common::wait_done(&client, &submitted.id, Duration::from_secs(30)).await;
    assert_eq!(done.state, "cancelled", "{done:?}");
    cluster.stop().await;
}
