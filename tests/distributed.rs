//! Data-parallel training on real executor processes over a real etcd, on the synthetic
//! campaign responses that `halyard datagen` writes (a logistic model with known effects):
//! groups of 1, 2 and 3 workers reach the same test AUC, close to the true model's, with
//! replicas equal bit for bit; a worker killed with SIGKILL, or stopped with SIGSTOP, fails
//! its group, and the job resumes from its last checkpoint and succeeds as well as an
//! uninterrupted run. Boosted trees trained by 1, 2 or 3 workers, and resumed after a
//! killed worker, have the same metrics exactly; a blend trains as its MLP part, then its
//! trees part. The bank-marketing example's own figure is checked when the reference
//! data is there (`HALYARD_REFERENCE_DATA`), and skipped with one line when it is not.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{EtcdCluster, Proc, data_parallel_spec as spec};
use halyard_cli::datagen::{self, Customer};
use halyard_client::Client;
use halyard_core::spec::JobSpec;

/// Rows of the generated data: as many as bank marketing, so steps and checkpoints come as
/// often as they did on it.
const ROWS: usize = 45_000;

/// The generated responses under `dir`, and the AUC of their true log-odds on the test rows
/// (row index % 5 == 4, the split of the specs below): the best any model can reach there.
fn responses(dir: &Path) -> (PathBuf, f64) {
    let generated = datagen::generate(&dir.join("data"), ROWS, 11).unwrap();
    let text = std::fs::read_to_string(&generated.responses).unwrap();
    let (scores, labels): (Vec<f32>, Vec<f32>) = text
        .lines()
        .skip(1)
        .enumerate()
        .filter(|(row, _)| row % 5 == 4)
        .map(|(_, line)| {
            let (customer, responded) = Customer::from_row(line).unwrap();
            (customer.log_odds() as f32, f32::from(u8::from(responded)))
        })
        .collect();
    let oracle = halyard_models::metrics::auc(&scores, &labels).unwrap();
    (generated.responses, oracle)
}

/// A scheduler and three one-slot executors; returns the client and the executors by id.
async fn cluster(dir: &Path, name: &str) -> (Proc, Vec<(String, Proc)>, Client) {
    cluster_reading(dir, name, None).await
}

/// [`cluster`], its jobs also allowed to read `data` (a folder outside `dir`).
async fn cluster_reading(
    dir: &Path,
    name: &str,
    data: Option<&Path>,
) -> (Proc, Vec<(String, Proc)>, Client) {
    let mut etcd = EtcdCluster::new(dir, name);
    etcd.data_roots
        .extend(data.map(|d| d.display().to_string()));
    let api = format!("127.0.0.1:{}", common::free_port());
    let scheduler = etcd.scheduler(&format!("{name}-scheduler"), &api);
    let executors: Vec<(String, Proc)> = (0..3)
        .map(|i| {
            let id = format!("{name}-exec-{i}");
            let (p, _) = etcd.executor(&id);
            (id, p)
        })
        .collect();
    let client = etcd.connect(&api).await;
    common::wait_for("three executors", Duration::from_secs(60), || async {
        (client.cluster().await.ok()?.executors.len() == 3).then_some(())
    })
    .await;
    (scheduler, executors, client)
}

/// The trees of the specs below (`bagging_fraction` on, so rows are drawn by number).
const TREES: &str = "trees = 120\nnum_leaves = 15\nmin_data_in_leaf = 50\nbagging_fraction = 0.8\nfeature_fraction = 0.9\nearly_stopping = 20\n";

/// [`spec`] with its `[model]` section's MLP lines replaced by `model` and `search` added.
fn spec_of_model(
    (dir, name, data): (&Path, &str, &Path),
    workers: u32,
    train: &str,
    search: &str,
    model: &str,
) -> JobSpec {
    // The MLP spec (checked), then its model section replaced and the search added.
    spec(dir, name, data, workers, train, "");
    let path = dir.join(format!("{name}.toml"));
    let text = std::fs::read_to_string(&path).unwrap() + search;
    let mlp = "type = \"mlp\"\nencoding = \"one_hot\"\nhidden = [32]\nmax_embedding = 8\n";
    assert!(text.contains(mlp), "the MLP section moved: {text}");
    std::fs::write(&path, text.replace(mlp, model)).unwrap();
    JobSpec::from_file(&path).unwrap()
}

/// [`spec`] training boosted trees.
fn trees_spec(
    dir: &Path,
    name: &str,
    data: &Path,
    workers: u32,
    train: &str,
    search: &str,
) -> JobSpec {
    let model = format!("type = \"gbdt\"\n{TREES}");
    spec_of_model((dir, name, data), workers, train, search, &model)
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
    let tmp = tempfile::tempdir().unwrap();
    let (data, oracle) = responses(tmp.path());
    let (_scheduler, _executors, client) = cluster(tmp.path(), "dp-sizes").await;
    let mut aucs = Vec::new();
    for workers in [1u32, 2, 3] {
        let name = format!("resp-dp-{workers}");
        let (done, log) = run(&client, &spec(tmp.path(), &name, &data, workers, "", "")).await;
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
        // The model learnt the known effects: its ranking is close to the true log-odds'.
        assert!(
            auc(&done) > oracle - 0.02,
            "{workers} worker(s): test AUC {} against the true model's {oracle}",
            auc(&done)
        );
        eprintln!(
            "{workers} worker(s): test AUC {:.4} (true model {oracle:.4})",
            auc(&done)
        );
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

/// The reference data folder: `HALYARD_REFERENCE_DATA`, or `../shared/data` beside the
/// repository.
fn reference_data() -> PathBuf {
    std::env::var_os("HALYARD_REFERENCE_DATA").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"),
        PathBuf::from,
    )
}

/// The bank-marketing example's figure (a debug-sized model, two workers, test AUC above
/// 0.77 without the leaky `duration`), on the reference data alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_bank_marketing_example_trains_data_parallel_on_the_reference_data() {
    let bank = reference_data().join("bank-full.csv");
    if !bank.exists() {
        eprintln!("skipped: {} not found", bank.display());
        return;
    }
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/bank-marketing-distributed.toml"),
    )
    .unwrap();
    let example = &example[..example.find("\n# Hyperparameter search").unwrap()];
    let text: String = example
        .lines()
        .map(|line| match line.split(" = ").next().unwrap_or("") {
            "path" => format!("path = \"{}\"\n", bank.display()),
            "hidden" => "hidden = [32]\n".into(),
            "epochs" => "epochs = 6\n".into(),
            "max_embedding" => "max_embedding = 8\n".into(),
            _ => format!("{line}\n"),
        })
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bank.toml");
    std::fs::write(&path, text).unwrap();
    let (_scheduler, _executors, client) = cluster_reading(
        tmp.path(),
        "dp-bank",
        Some(&reference_data().canonicalize().unwrap()),
    )
    .await;
    let (done, log) = run(&client, &JobSpec::from_file(&path).unwrap()).await;
    assert!(log.contains("worker group formed: 2 worker(s)"), "{log}");
    assert!(auc(&done) > 0.77, "bank marketing: test AUC {}", auc(&done));
    eprintln!("bank marketing, 2 workers: test AUC {:.4}", auc(&done));
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
    let (data, _) = responses(tmp.path());
    let (_scheduler, mut executors, client) = cluster(tmp.path(), "dp-kill").await;
    let extra = "checkpoint_steps = 20\ncheckpoint_secs = 0\nstep_timeout_secs = 5\nepochs = 12";
    let spec_whole = spec(tmp.path(), "resp-dp-whole", &data, 2, extra, "");
    let (whole, _) = run(&client, &spec_whole).await;

    let spec_killed = spec(tmp.path(), "resp-dp-killed", &data, 2, extra, "");
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
    let (data, _) = responses(tmp.path());
    let (_scheduler, mut executors, client) = cluster(tmp.path(), "dp-stop").await;
    // A deadline shorter than the executors' 2 s lease: the step fails before the lease.
    let extra = "checkpoint_steps = 20\ncheckpoint_secs = 0\nstep_timeout_secs = 1\nepochs = 12";
    let id = client
        .submit(&spec(tmp.path(), "resp-dp-stopped", &data, 2, extra, ""))
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
    let (data, _) = responses(tmp.path());
    let (_scheduler, _executors, client) = cluster(tmp.path(), "dp-search").await;
    let search = "[search]\nstrategy = \"asha\"\ntrials = 8\nparallel = 3\nmin_epochs = 1\nreduction = 3\nseed = 2\n\
                  [search.space]\nlearning_rate = { log_uniform = [0.0005, 0.02] }\n\
                  hidden = { choice = [[16], [32], [32, 16]] }\nbatch_size = { choice = [256, 512] }\n";
    let s = spec(
        tmp.path(),
        "resp-search",
        &data,
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
async fn an_asha_search_over_trees_counts_its_rungs_in_trees_and_publishes_the_best() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, _) = responses(tmp.path());
    let (_scheduler, _executors, client) = cluster(tmp.path(), "dp-tree-search").await;
    let search = "[search]\nstrategy = \"asha\"\ntrials = 6\nparallel = 3\nmin_epochs = 10\nreduction = 3\nseed = 3\n\
                  [search.space]\nlearning_rate = { log_uniform = [0.02, 0.3] }\n\
                  num_leaves = { choice = [7, 15, 31] }\nlambda_l2 = { uniform = [0.0, 5.0] }\n";
    let s = trees_spec(tmp.path(), "trees-search", &data, 1, "seed = 1", search);
    let (done, log) = run(&client, &s).await;
    assert!(log.contains("rungs at trees [10, 30, 90, 120]"), "{log}");
    assert_eq!(done.trials.len(), 6, "{log}");
    // Early stopping needs 20 trees without a better loss: every trial paused at 10 trees.
    assert!(done.trials.iter().all(|t| !t.losses.is_empty()), "{log}");
    assert!(
        log.contains("paused after 10 trees: validation loss"),
        "{log}"
    );
    let went_on = done.trials.iter().filter(|t| t.losses.len() > 1).count();
    assert!((1..6).contains(&went_on), "{went_on} trials went on\n{log}");
    let best: Vec<_> = done.trials.iter().filter(|t| t.best).collect();
    assert_eq!(best.len(), 1, "{log}");
    let best = best[0];
    assert_eq!(best.state, "completed", "{log}");
    for t in done.trials.iter().filter(|t| t.state == "completed") {
        assert!(best.losses.last() <= t.losses.last(), "{log}");
    }
    // The published model is the best trial's trees (its checkpoint, nothing retrained).
    assert_eq!(done.metrics["test_auc"], best.metrics["test_auc"], "{log}");
    assert!(log.contains("publishes it from its checkpoint"), "{log}");

    // Trees fitting a number (squared error on the response as 0 or 1) search the same
    // way, their trials ranked by the objective's own validation loss.
    let numbers = search.replace("trials = 6", "trials = 3");
    trees_spec(
        tmp.path(),
        "trees-search-l2",
        &data,
        1,
        "seed = 1",
        &numbers,
    );
    let path = tmp.path().join("trees-search-l2.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("type = \"gbdt\"\n", "type = \"gbdt\"\nobjective = \"l2\"\n")
        .replace("positive = \"yes\"\n", "")
        .replace(
            "EXCLUDE (customer_id) FROM",
            "EXCLUDE (customer_id, responded), CASE WHEN responded = 'yes' THEN 1.0 ELSE 0.0 END AS responded FROM",
        );
    std::fs::write(&path, text).unwrap();
    let s = JobSpec::from_file(&path).unwrap();
    let (done, log) = run(&client, &s).await;
    assert_eq!(done.trials.len(), 3, "{log}");
    assert!(
        log.contains("paused after 10 trees: validation loss"),
        "{log}"
    );
    let best: Vec<_> = done.trials.iter().filter(|t| t.best).collect();
    assert_eq!(best.len(), 1, "{log}");
    for t in done.trials.iter().filter(|t| t.state == "completed") {
        assert!(best[0].losses.last() <= t.losses.last(), "{log}");
    }
    // A squared error on 0/1 labels is below the variance of a Bernoulli (at most 0.25).
    assert!(best[0].losses.last().is_some_and(|l| *l < 0.25), "{log}");
    assert_eq!(
        done.metrics["test_rmse"], best[0].metrics["test_rmse"],
        "{log}"
    );
    assert!(!done.metrics.contains_key("test_auc"), "{:?}", done.metrics);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_job_resumes_from_its_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, _) = responses(tmp.path());
    let (_scheduler, _executors, client) = cluster(tmp.path(), "dp-resume").await;
    let extra = "checkpoint_steps = 20\ncheckpoint_secs = 0\nepochs = 12";
    let id = client
        .submit(&spec(tmp.path(), "resp-dp-cancel", &data, 2, extra, ""))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trees_of_one_two_and_three_workers_are_the_same_and_a_killed_worker_resumes_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, oracle) = responses(tmp.path());
    let (_scheduler, mut executors, client) = cluster(tmp.path(), "dp-trees").await;
    let train =
        "learning_rate = 0.1\ncheckpoint_steps = 10\ncheckpoint_secs = 0\nstep_timeout_secs = 5";
    let mut runs = Vec::new();
    for workers in [1u32, 2, 3] {
        let name = format!("trees-dp-{workers}");
        let (done, log) = run(
            &client,
            &trees_spec(tmp.path(), &name, &data, workers, train, ""),
        )
        .await;
        assert!(
            log.contains(&format!("worker group formed: {workers} worker(s)")),
            "{log}"
        );
        assert!(log.contains("trees agreed bit for bit"), "{log}");
        assert!(
            auc(&done) > oracle - 0.02,
            "{workers} worker(s): test AUC {} against the true model's {oracle}",
            auc(&done)
        );
        eprintln!("trees, {workers} worker(s): test AUC {:.6}", auc(&done));
        runs.push(done);
    }
    // The same trees bit for bit: every metric equal, not merely close.
    for done in &runs[1..] {
        assert_eq!(done.metrics, runs[0].metrics);
    }
    // A worker killed after a checkpoint: the group forms again and resumes the trees.
    let id = client
        .submit(&trees_spec(
            tmp.path(),
            "trees-dp-killed",
            &data,
            2,
            train,
            "",
        ))
        .await
        .unwrap()
        .id;
    let victim = rank_one_after_a_checkpoint(&client, &id).await;
    proc_of(&mut executors, &victim).kill();
    let done = common::wait_done(&client, &id, Duration::from_secs(900)).await;
    let log = common::log_text(&client, &id).await;
    assert_eq!(done.state, "succeeded", "{}\n{log}", done.error);
    assert!(done.attempt >= 2, "{log}");
    assert!(!done.workers.contains(&victim), "{log}");
    assert!(
        log.contains("resumed from the checkpoint at member 1 after"),
        "{log}"
    );
    // The resumed trees are the uninterrupted ones, bit for bit.
    assert_eq!(done.metrics, runs[0].metrics, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blend_trains_data_parallel_as_its_mlp_then_its_trees() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, oracle) = responses(tmp.path());
    let (_scheduler, _executors, client) = cluster(tmp.path(), "dp-blend").await;
    let model = format!(
        "type = \"blend\"\nencoding = \"one_hot\"\nhidden = [32]\nmax_embedding = 8\n{TREES}"
    );
    let spec = spec_of_model((tmp.path(), "blend-dp", &data), 2, "", "", &model);
    let (done, log) = run(&client, &spec).await;
    // The group formed for each part; each part's progress is named in the log.
    assert_eq!(
        log.matches("worker group formed: 2 worker(s)").count(),
        2,
        "{log}"
    );
    for line in [
        "mlp part: epoch",
        "trees part: trees",
        "trees agreed bit for bit",
    ] {
        assert!(log.contains(line), "{line:?} not in {log}");
    }
    let weight = done.metrics["blend_trees_weight"];
    assert!((0.0..=1.0).contains(&weight), "{weight}");
    assert!(
        auc(&done) > oracle - 0.02,
        "test AUC {} against the true model's {oracle}",
        auc(&done)
    );

    // A random search over both parts' parameters: each trial trains the whole blend
    // (its one rung counts the trees), the best is published from its checkpoint.
    let search = "[search]\nstrategy = \"random\"\ntrials = 2\nparallel = 2\nseed = 4\n\
                  [search.space]\nnum_leaves = { choice = [7, 15] }\nhidden = { choice = [[16], [32]] }\n";
    let spec = spec_of_model((tmp.path(), "blend-search", &data), 1, "", search, &model);
    let (done, log) = run(&client, &spec).await;
    assert!(log.contains("rungs at trees [120]"), "{log}");
    assert_eq!(done.trials.len(), 2, "{log}");
    assert!(
        done.trials
            .iter()
            .all(|t| t.state == "completed" && t.losses.len() == 1),
        "{log}"
    );
    let best: Vec<_> = done.trials.iter().filter(|t| t.best).collect();
    assert_eq!(best.len(), 1, "{log}");
    for t in &done.trials {
        assert!(best[0].losses[0] <= t.losses[0], "{log}");
    }
    // The published blend is the best trial's (its checkpoint: nothing trained again).
    assert_eq!(
        done.metrics["test_auc"], best[0].metrics["test_auc"],
        "{log}"
    );
    assert_eq!(
        done.metrics["blend_trees_weight"], best[0].metrics["blend_trees_weight"],
        "{log}"
    );
    assert!(log.contains("publishes it from its checkpoint"), "{log}");
}
