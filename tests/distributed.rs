//! Data-parallel training on real executor processes over a real etcd: groups of 1, 2 and 3
//! workers reach the same test AUC on bank marketing with replicas equal bit for bit; a
//! worker killed with SIGKILL, or stopped with SIGSTOP, fails its group, and the job
//! resumes from its last checkpoint and succeeds as well as an uninterrupted run.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{EtcdCluster, Proc};
use halyard_client::Client;
use halyard_core::spec::JobSpec;

fn bank() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/bank-full.csv")
}

/// The bank-marketing-distributed example without its search, made quick for a debug build
/// and pointed at the shared data, with `workers` workers and `extra` `[train]` lines.
fn spec(dir: &Path, name: &str, workers: u32, extra: &str) -> JobSpec {
    spec_with(dir, name, workers, extra, "")
}

/// The same with `search` (a `[search]` section and its space) instead of the example's.
fn spec_with(dir: &Path, name: &str, workers: u32, extra: &str, search: &str) -> JobSpec {
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/bank-marketing-distributed.toml"),
    )
    .unwrap();
    let replaced: Vec<&str> = extra
        .lines()
        .filter_map(|l| l.split(" = ").next())
        .collect();
    let mut text = String::new();
    for line in example.lines() {
        if line.starts_with("[search") || line.starts_with("# Hyperparameter search") {
            break;
        }
        let key = line.split(" = ").next().unwrap_or("");
        if replaced.contains(&key) {
            continue;
        }
        let line = match key {
            "name"
                if text.is_empty()
                    || !text.contains("\nname = ") && !text.starts_with("name = ") =>
            {
                format!("name = \"{name}\"")
            }
            "path" => format!("path = \"{}\"", bank().display()),
            "workers" => format!("workers = {workers}\n{extra}"),
            "hidden" => "hidden = [32]".into(),
            "ensemble" => "ensemble = 1".into(),
            "epochs" => "epochs = 6".into(),
            "max_embedding" => "max_embedding = 8".into(),
            _ => line.to_string(),
        };
        text.push_str(&line);
        text.push('\n');
    }
    text.push_str(search);
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    JobSpec::from_file(&path).unwrap()
}

/// A scheduler and three one-slot executors; returns the client and the executors by id.
async fn cluster(dir: &Path, name: &str) -> (Proc, Vec<(String, Proc)>, Client) {
    let etcd = EtcdCluster::new(dir, name);
    let api = format!("127.0.0.1:{}", common::free_port());
    let scheduler = etcd.scheduler(&format!("{name}-scheduler"), &api);
    let executors: Vec<(String, Proc)> = (0..3)
        .map(|i| {
            let id = format!("{name}-exec-{i}");
            let (p, _) = etcd.executor(&id);
            (id, p)
        })
        .collect();
    let client = common::connect(&api).await;
    common::wait_for("three executors", Duration::from_secs(60), || async {
        (client.cluster().await.ok()?.executors.len() == 3).then_some(())
    })
    .await;
    (scheduler, executors, client)
}

fn auc(job: &halyard_core::proto::JobInfo) -> f64 {
    job.metrics["test_auc"]
}

async fn run(client: &Client, spec: &JobSpec) -> (halyard_core::proto::JobInfo, String) {
    let id = client.submit(spec).await.unwrap().id;
    let done = common::wait_done(client, &id, Duration::from_secs(900)).await;
    let log = common::log_text(client, &id).await;
    assert_eq!(done.state, "succeeded", "{}\n{log}", done.error);
    (done, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn groups_of_one_two_and_three_workers_agree() {
    if !bank().exists() {
        panic!(
            "{} is missing: the tests need ../shared beside the repository",
            bank().display()
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_scheduler, _executors, client) = cluster(tmp.path(), "dp-sizes").await;
    let mut aucs = Vec::new();
    for workers in [1u32, 2, 3] {
        let (done, log) = run(
            &client,
            &spec(tmp.path(), &format!("bank-dp-{workers}"), workers, ""),
        )
        .await;
        assert!(
            log.contains(&format!("worker group formed: {workers} worker(s)")),
            "{log}"
        );
        // Each step's all-reduce carried every rank's weights checksum: a difference fails
        // the step, so the job's success says they agreed; the log says it too.
        assert!(
            log.contains("the replicas' weights agreed bit for bit before every one of"),
            "{log}"
        );
        assert!(
            auc(&done) > 0.77,
            "{workers} worker(s): test AUC {}",
            auc(&done)
        );
        eprintln!("{workers} worker(s): test AUC {:.4}", auc(&done));
        aucs.push(auc(&done));
    }
    for (i, a) in aucs.iter().enumerate() {
        assert!(
            (a - aucs[0]).abs() <= 0.003,
            "{} worker(s): AUC {a} vs one worker's {}",
            i + 1,
            aucs[0]
        );
    }
}

/// Wait until the job's log shows a checkpoint, then return the id of its rank-1 executor.
async fn rank_one_after_a_checkpoint(client: &Client, id: &str) -> String {
    common::wait_for("a checkpoint", Duration::from_secs(300), || async {
        let log = common::log_text(client, id).await;
        let job = client.job(id).await.ok()?;
        (log.contains("checkpoint written") && job.workers.len() == 2)
            .then(|| job.workers[1].clone())
    })
    .await
}

fn proc_of<'a>(executors: &'a mut [(String, Proc)], id: &str) -> &'a mut Proc {
    &mut executors.iter_mut().find(|(e, _)| e == id).unwrap().1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_worker_is_replaced_and_training_resumes_from_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (_scheduler, mut executors, client) = cluster(tmp.path(), "dp-kill").await;
    let extra = "checkpoint_steps = 20\ncheckpoint_secs = 0\nstep_timeout_secs = 5\nepochs = 12";
    let spec_whole = spec(tmp.path(), "bank-dp-whole", 2, extra);
    let (whole, _) = run(&client, &spec_whole).await;

    let spec_killed = spec(tmp.path(), "bank-dp-killed", 2, extra);
    let id = client.submit(&spec_killed).await.unwrap().id;
    let victim = rank_one_after_a_checkpoint(&client, &id).await;
    let killed_at = Instant::now();
    proc_of(&mut executors, &victim).kill();
    common::wait_for("training to resume", Duration::from_secs(120), || async {
        common::log_text(&client, &id)
            .await
            .contains("resumed from the checkpoint at")
            .then_some(())
    })
    .await;
    eprintln!(
        "from kill -9 to training resumed: {:?}",
        killed_at.elapsed()
    );
    let done = common::wait_done(&client, &id, Duration::from_secs(900)).await;
    let log = common::log_text(&client, &id).await;
    assert_eq!(done.state, "succeeded", "{}\n{log}", done.error);
    assert!(done.attempt >= 2, "{log}");
    // The group that finished: two live workers, the victim not among them.
    assert_eq!(done.workers.len(), 2, "{log}");
    assert!(!done.workers.contains(&victim), "{log}");
    assert!(
        log.contains(&format!("executor {victim} lost")) || log.contains("worker group failed"),
        "{log}"
    );
    // The resumed run continues the same computation: as good as the whole one.
    assert!(
        (auc(&done) - auc(&whole)).abs() <= 0.005,
        "resumed AUC {} vs uninterrupted {}",
        auc(&done),
        auc(&whole)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_peer_fails_the_step_within_the_deadline_and_the_group_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let (_scheduler, mut executors, client) = cluster(tmp.path(), "dp-stop").await;
    // A deadline shorter than the executors' 2 s lease: the step fails before the lease.
    let extra = "checkpoint_steps = 20\ncheckpoint_secs = 0\nstep_timeout_secs = 1\nepochs = 12";
    let id = client
        .submit(&spec(tmp.path(), "bank-dp-stopped", 2, extra))
        .await
        .unwrap()
        .id;
    let victim = rank_one_after_a_checkpoint(&client, &id).await;
    let pid = proc_of(&mut executors, &victim).child.id();
    let stopped_at = Instant::now();
    let signal = |sig: &str| {
        std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
    };
    assert!(signal("-STOP").success());
    let failed = common::wait_for("the step to fail", Duration::from_secs(60), || async {
        let log = common::log_text(&client, &id).await;
        (log.contains("worker group failed") || log.contains(&format!("executor {victim} lost")))
            .then_some(log)
    })
    .await;
    let took = stopped_at.elapsed();
    eprintln!("from SIGSTOP to the group's failure: {took:?}");
    assert!(signal("-CONT").success());
    // The step deadline (1 s) or the lease (2 s), plus a report and a leader tick.
    assert!(took < Duration::from_secs(10), "took {took:?}\n{failed}");
    let done = common::wait_done(&client, &id, Duration::from_secs(900)).await;
    let log = common::log_text(&client, &id).await;
    assert_eq!(done.state, "succeeded", "{}\n{log}", done.error);
    assert!(log.contains("resumed from the checkpoint at"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_asha_search_of_eight_trials_publishes_the_best() {
    let tmp = tempfile::tempdir().unwrap();
    let (_scheduler, _executors, client) = cluster(tmp.path(), "dp-search").await;
    let search = "[search]\nstrategy = \"asha\"\ntrials = 8\nparallel = 3\nmin_epochs = 1\nreduction = 3\nseed = 2\n\
                  [search.space]\nlearning_rate = { log_uniform = [0.0005, 0.02] }\n\
                  hidden = { choice = [[16], [32], [32, 16]] }\nbatch_size = { choice = [256, 512] }\n";
    let s = spec_with(
        tmp.path(),
        "bank-search",
        1,
        "patience = 0\nepochs = 9",
        search,
    );
    let (done, log) = run(&client, &s).await;
    assert_eq!(done.trials.len(), 8, "{log}");
    let best: Vec<_> = done.trials.iter().filter(|t| t.best).collect();
    assert_eq!(best.len(), 1, "{log}");
    let best = best[0];
    assert_eq!(best.state, "completed");
    assert_eq!(done.metrics["best_trial"], f64::from(best.index));
    // Successive halving: every trial ran the first rung (1 epoch), fewer ran on, and the
    // weak ones were stopped early.
    assert!(done.trials.iter().all(|t| !t.losses.is_empty()), "{log}");
    let went_on = done.trials.iter().filter(|t| t.losses.len() > 1).count();
    assert!(
        (1..8).contains(&went_on),
        "{went_on} trials passed the first rung\n{log}"
    );
    assert!(done.trials.iter().any(|t| t.state == "stopped"), "{log}");
    // The best has the lowest final validation loss of the completed trials, and its
    // model is what the search published.
    for t in done.trials.iter().filter(|t| t.state == "completed") {
        assert!(best.losses.last() <= t.losses.last(), "{log}");
    }
    assert!(!done.artifact.is_empty());
    assert!(
        (done.metrics["test_auc"] - best.metrics["test_auc"]).abs() < 1e-9,
        "{log}"
    );
    assert!(log.contains("publishes it from its checkpoint"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_job_resumes_from_its_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (_scheduler, _executors, client) = cluster(tmp.path(), "dp-resume").await;
    let extra = "checkpoint_steps = 20\ncheckpoint_secs = 0\nepochs = 12";
    let id = client
        .submit(&spec(tmp.path(), "bank-dp-cancel", 2, extra))
        .await
        .unwrap()
        .id;
    rank_one_after_a_checkpoint(&client, &id).await;
    client.cancel(&id).await.unwrap();
    let cancelled = common::wait_done(&client, &id, Duration::from_secs(60)).await;
    assert_eq!(cancelled.state, "cancelled");
    let again = client.resume(&id).await.unwrap();
    assert_ne!(again.id, id);
    let done = common::wait_done(&client, &again.id, Duration::from_secs(900)).await;
    let log = common::log_text(&client, &again.id).await;
    assert_eq!(done.state, "succeeded", "{}\n{log}", done.error);
    assert!(log.contains(&format!("resume job {id}")), "{log}");
    assert!(log.contains("resumed from the checkpoint at"), "{log}");
    assert!(
        !log.contains("features: writing"),
        "the resumed job ran the feature stage again\n{log}"
    );
    // A job that succeeded cannot be resumed.
    let err = client.resume(&again.id).await.unwrap_err();
    assert!(
        err.to_string().contains("only a cancelled or failed job"),
        "{err}"
    );
}
