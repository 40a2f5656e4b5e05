//! etcd killed (-9) and started again on its data while jobs run: the leader's and the
//! executors' watches break, the executors open theirs again (the scheduler, which loses its
//! leadership with its lease, opens new ones when it leads again), and every
//! job submitted before and after the restart succeeds exactly once, with one model
//! version each. A private etcd (not `.ci/run`'s shared one), since this test kills it.

mod common;

use std::time::Duration;

use common::*;

/// A scheduler and two executors on the private etcd at `endpoint`, once both executors
/// are live: the cluster, the scheduler's address, the processes (the executors with
/// their addresses) and a client.
async fn scheduler_and_two_executors(
    dir: &std::path::Path,
    name: &str,
    endpoint: String,
) -> (
    EtcdCluster,
    String,
    Proc,
    [(Proc, String); 2],
    halyard_client::Client,
) {
    let mut cl = EtcdCluster::new(dir, name);
    cl.etcd = endpoint;
    let addr = format!("127.0.0.1:{}", free_port());
    let scheduler = cl.scheduler("sched-0", &addr);
    let executors = [cl.executor("exec-0"), cl.executor("exec-1")];
    let client = cl.connect(&addr).await;
    wait_for("two executors", Duration::from_secs(30), || async {
        (client.cluster().await.ok()?.executors.len() == 2).then_some(())
    })
    .await;
    (cl, addr, scheduler, executors, client)
}

/// A prediction of `body` at each of `doors` every 200 ms for `span`: how many were
/// answered, and each failure (ms into the span, door, status).
async fn probe(
    http: &reqwest::Client,
    doors: &[&str],
    body: &str,
    span: Duration,
) -> (usize, Vec<(u128, String, u16)>) {
    let started = std::time::Instant::now();
    let (mut answered, mut failed) = (0, Vec::new());
    while started.elapsed() < span {
        for at in doors {
            match predict_status(http, at, "steady", body).await {
                200 => answered += 1,
                code => failed.push((started.elapsed().as_millis(), at.to_string(), code)),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (answered, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_survive_an_etcd_restart_and_the_watches_come_back() {
    if missing(&["etcd"], "etcd-server") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut etcd, endpoint, client_port, peer_port) = private_etcd(dir).await;
    let (_cl, _addr, scheduler, executors, client) =
        scheduler_and_two_executors(dir, "etcd-restart", endpoint).await;
    let executors = executors.map(|(p, _)| p);
    let data = halyard_cli::datagen::generate(&dir.join("data"), 1500, 4).unwrap();
    let job = |i: usize| spec(dir, &format!("restart-{i}"), &data.responses, 3, 256);

    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(client.submit(&job(i)).await.unwrap().id);
    }
    // kill -9 etcd while those run, and start it again on the same data.
    etcd.0.kill().unwrap();
    etcd.0.wait().unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    etcd = Etcd(start_etcd(dir, client_port, peer_port));
    for i in 4..8 {
        let id = wait_for(
            "a submission after the restart",
            Duration::from_secs(60),
            || async { client.submit(&job(i)).await.ok().map(|j| j.id) },
        )
        .await;
        ids.push(id);
    }
    for (i, id) in ids.iter().enumerate() {
        let done = wait_done(&client, id, Duration::from_secs(240)).await;
        assert_eq!(done.state, "succeeded", "job {i}: {done:?}");
        // Exactly once: the job's model has one version, published by this job.
        let model = client.model(&format!("restart-{i}")).await.unwrap();
        let versions: Vec<(u64, &str)> = model
            .versions
            .iter()
            .map(|v| (v.version, v.job_id.as_str()))
            .collect();
        assert_eq!(versions, [(1, id.as_str())], "job {i}");
    }
    // The watches broke with etcd: each executor opened its watch again (the scheduler
    // lost its leadership with its lease and opened new ones when it led again).
    let log = |p: &Proc| std::fs::read_to_string(&p.log).unwrap();
    assert!(
        log(&scheduler).contains("watch broke"),
        "sched-0 did not notice"
    );
    for e in &executors {
        let text = log(e);
        assert!(
            text.contains("watch broke") && text.contains("watch open again"),
            "{}'s watch was not opened again after the restart",
            e.name
        );
    }
    drop(etcd);
}

/// etcd stopped for `HALYARD_ETCD_OUTAGE_SECS` (default 20; the two minutes by
/// setting it to 120), much longer than the nodes' 2 s leases: a deployed model answers
/// every prediction throughout and for 10 s after etcd is back (while the nodes register
/// and lead again), through the scheduler's gateway (routing from the last state it read)
/// and at an executor directly; a job training when etcd went away succeeds exactly once
/// after it is back (its delay printed); then a job submitted succeeds once and the model
/// still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_goes_on_through_an_etcd_outage() {
    if missing(&["etcd"], "etcd-server") {
        return;
    }
    let outage = Duration::from_secs(
        std::env::var("HALYARD_ETCD_OUTAGE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20),
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut etcd, endpoint, client_port, peer_port) = private_etcd(dir).await;
    let (cl, addr, _scheduler, executors, client) =
        scheduler_and_two_executors(dir, "etcd-outage", endpoint).await;
    let exec0_addr = executors[0].1.clone();
    let data = halyard_cli::datagen::generate(&dir.join("data"), 1500, 4).unwrap();
    let served = spec(dir, "steady", &data.responses, 2, 256);
    train_and_deploy(&client, &served, 1).await;
    let key = cl.admin_key().await;
    let http = http_client(&key);
    let body = first_record_body(&served, &data.responses);
    let doors = [addr.as_str(), exec0_addr.as_str()];
    for at in doors {
        wait_for("both doors to answer", Duration::from_secs(60), || async {
            (predict_status(&http, at, "steady", &body).await == 200).then_some(())
        })
        .await;
    }

    // A job in flight: training (past its first epoch, far from its last) when etcd goes.
    let mut long = spec(dir, "in-flight", &data.responses, 2000, 256);
    long.train.patience = 0;
    let in_flight = client.submit(&long).await.unwrap().id;
    wait_for("the job to train", Duration::from_secs(120), || async {
        let j = client.job(&in_flight).await.ok()?;
        (j.state == "running" && j.epoch >= 1).then_some(())
    })
    .await;

    etcd.0.kill().unwrap();
    etcd.0.wait().unwrap();
    let (answered, failed) = probe(&http, &doors, &body, outage).await;
    etcd = Etcd(start_etcd(dir, client_port, peer_port));
    let back = halyard_core::records::now_ms();
    // And while the cluster comes back (leases lapsed: executors register again, the
    // leader leads again and places the models): the loaded models keep answering.
    let (answered_after, failed_after) = probe(&http, &doors, &body, Duration::from_secs(10)).await;
    assert!(
        failed.is_empty() && failed_after.is_empty(),
        "predictions failed during a {} s etcd outage (ms, door, status): {failed:?}; and in the 10 s after: {failed_after:?}",
        outage.as_secs()
    );
    println!(
        "{answered} predictions answered during a {} s etcd outage, {answered_after} in the 10 s after",
        outage.as_secs()
    );

    // The job in flight ends once, with one version, however many attempts it took.
    let done = wait_done(&client, &in_flight, Duration::from_secs(600)).await;
    assert_eq!(done.state, "succeeded", "{done:?}");
    assert_eq!(client.model("in-flight").await.unwrap().versions.len(), 1);
    // Its last write (the end) against etcd's return.
    println!(
        "the job training when etcd went away for {} s succeeded at attempt {}, {:.1} s after etcd was back (it had been submitted {:.1} s before the outage)",
        outage.as_secs(),
        done.attempt,
        (done.updated_ms - back) as f64 / 1000.0,
        (back - outage.as_millis() as i64 - done.created_ms) as f64 / 1000.0
    );

    // The cluster resumes: a job submitted now succeeds once; the model still answers.
    let after = spec(dir, "after-outage", &data.responses, 2, 256);
    let id = wait_for(
        "a submission after the outage",
        Duration::from_secs(60),
        || async { client.submit(&after).await.ok().map(|j| j.id) },
    )
    .await;
    let done = wait_done(&client, &id, Duration::from_secs(240)).await;
    assert_eq!(done.state, "succeeded", "{done:?}");
    assert_eq!(
        client.model("after-outage").await.unwrap().versions.len(),
        1
    );
    assert_eq!(predict_status(&http, &addr, "steady", &body).await, 200);
    drop(etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_started_before_etcd_wait_for_it_and_join_when_it_comes() {
    if missing(&["etcd"], "etcd-server") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (client_port, peer_port) = (free_port(), free_port());
    let mut cl = EtcdCluster::new(dir, "etcd-late");
    cl.etcd = format!("127.0.0.1:{client_port}");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut scheduler = cl.scheduler("sched-0", &addr);
    let (mut executor, _) = cl.executor("exec-0");
    // A node told to wait 2 s gives up, saying why.
    let mut brief = EtcdCluster::new(dir, "etcd-late");
    brief.etcd = cl.etcd.clone();
    brief.flags = vec!["--etcd-wait-secs".into(), "2".into()];
    let (mut impatient, _) = brief.executor("exec-impatient");
    // Nothing answers at the etcd address yet: the others keep trying instead of exiting.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for p in [&mut scheduler, &mut executor] {
        let log = std::fs::read_to_string(&p.log).unwrap();
        assert!(
            p.child.try_wait().unwrap().is_none(),
            "{} exited: {log}",
            p.name
        );
        assert!(log.contains("etcd cannot be reached yet"), "{log}");
    }
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = impatient.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "an executor told to wait 2 s for etcd still runs"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = std::fs::read_to_string(&impatient.log).unwrap();
    assert!(!status.success(), "{log}");
    assert!(log.contains(&format!("etcd at {}", cl.etcd)), "{log}");
    // etcd comes: both join, and the cluster works.
    let _etcd = Etcd(start_etcd(dir, client_port, peer_port));
    let client = cl.connect(&addr).await;
    wait_for("the executor to join", Duration::from_secs(60), || async {
        (client.cluster().await.ok()?.executors.len() == 1).then_some(())
    })
    .await;
    let data = halyard_cli::datagen::generate(&dir.join("data"), 600, 4).unwrap();
    let id = client
        .submit(&spec(dir, "late", &data.responses, 2, 256))
        .await
        .unwrap()
        .id;
    let done = wait_done(&client, &id, Duration::from_secs(240)).await;
    assert_eq!(done.state, "succeeded", "{done:?}");
}
