//! The coordinator conformance suite: every test runs against the embedded backend and a
//! real etcd (`HALYARD_TEST_ETCD=HOST:PORT`, which `.ci/run` starts). Each test works under
//! its own key root, so tests share one etcd safely. The whole suite also runs against a
//! real etcd this test starts with TLS, `--client-cert-auth` and user authentication on.

use std::sync::Arc;
use std::time::Duration;

use halyard_core::Error;
use halyard_core::coord::{Coordinator, Leadership, OwnWrites, Versioned};
use halyard_core::kv::{EmbeddedKv, EtcdKv};
use halyard_core::records::{ExecutorInfo, JobRecord, JobState, TaskAssignment, TaskProgress};
use halyard_core::registry::{
    CONVERSION, Change, MetricSums, ModelVersion, NodeTally, ServingInfo, VersionTally,
};
use halyard_core::spec::JobSpec;

const TTL: Duration = Duration::from_secs(2);

fn root() -> String {
    format!("/halyard-test/{}", uuid::Uuid::new_v4().simple())
}

async fn embedded() -> Coordinator {
    Coordinator::new(Arc::new(EmbeddedKv::new()), &root())
}

/// An embedded store kept in a journal (a fresh file).
async fn journalled() -> Coordinator {
    let path = std::env::temp_dir()
        .join(format!("halyard-journal-{}", uuid::Uuid::new_v4().simple()))
        .join("coordinator.journal");
    Coordinator::new(Arc::new(EmbeddedKv::open(&path).unwrap()), &root())
}

async fn etcd() -> Coordinator {
    let endpoint = std::env::var("HALYARD_TEST_ETCD").expect(
        "HALYARD_TEST_ETCD is not set: these tests need a real etcd; run .ci/run, which starts one",
    );
    let kv = EtcdKv::connect(&[endpoint], &Default::default())
        .await
        .expect("etcd reachable");
    Coordinator::new(Arc::new(kv), &root())
}

fn spec() -> JobSpec {
    JobSpec::from_toml(
        "name = \"t\"\n[data]\nsource = \"file:///tmp/x.csv\"\nlabel = \"y\"\n",
        "test",
    )
    .unwrap()
}

fn executor(id: &str) -> ExecutorInfo {
    ExecutorInfo {
        id: id.into(),
        address: "127.0.0.1:1".into(),
        cpu_slots: 2,
        memory_mb: 1024,
        gpus: 0,
        version: "test".into(),
        started_ms: 0,
    }
}

async fn lease_keys_vanish_without_keep_alive(c: Coordinator) {
    let lease = c.grant_lease(TTL).await.unwrap();
    c.register_executor(&executor("e1"), lease).await.unwrap();
    assert_eq!(c.list_executors().await.unwrap().len(), 1);
    // Kept alive past its TTL, it stays.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        c.keep_alive(lease).await.unwrap();
    }
    assert_eq!(c.list_executors().await.unwrap().len(), 1);
    // Left alone, it expires with its key.
    let mut gone = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if c.list_executors().await.unwrap().is_empty() {
            gone = true;
            break;
        }
    }
    assert!(gone, "executor key outlived its lease");
    let err = c.keep_alive(lease).await;
    assert!(matches!(err, Err(Error::LeaseLost(_))), "{err:?}");
}

async fn duplicate_executor_id_is_refused(c: Coordinator) {
    let l1 = c.grant_lease(TTL).await.unwrap();
    let l2 = c.grant_lease(TTL).await.unwrap();
    c.register_executor(&executor("same"), l1).await.unwrap();
    let err = c
        .register_executor(&executor("same"), l2)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already registered"), "{err}");
    c.revoke(l1).await.unwrap();
    c.register_executor(&executor("same"), l2).await.unwrap();
}

async fn one_leader_and_a_deposed_leader_is_fenced(c: Coordinator) {
    let la = c.grant_lease(TTL).await.unwrap();
    let lb = c.grant_lease(TTL).await.unwrap();
    let a = c.campaign("a", la).await.unwrap().expect("a leads");
    assert!(c.campaign("b", lb).await.unwrap().is_none());
    assert_eq!(c.leader().await.unwrap().as_deref(), Some("a"));
    // Campaigning again with the same lease is idempotent.
    assert_eq!(c.campaign("a", la).await.unwrap(), Some(a.clone()));

    let job = JobRecord::new("j1".into(), spec());
    c.submit_job(&job).await.unwrap();
    let read = c.get_job("j1").await.unwrap().unwrap();
    let mut running = read.value.clone();
    running.state = JobState::Running;
    c.update_job(&a, &read, &running).await.unwrap();

    // a's lease ends (a crashed); b takes over.
    c.revoke(la).await.unwrap();
    let b = c.campaign("b", lb).await.unwrap().expect("b leads");
    assert!(!c.is_leader(&a).await.unwrap());
    let read = c.get_job("j1").await.unwrap().unwrap();
    let mut stale = read.value.clone();
    stale.state = JobState::Failed;
    // Even with the current revision of the job, the deposed leader is refused.
    assert!(matches!(
        c.update_job(&a, &read, &stale).await,
        Err(Error::Fenced)
    ));
    let mut done = read.value.clone();
    done.state = JobState::Succeeded;
    c.update_job(&b, &read, &done).await.unwrap();
    assert_eq!(
        c.get_job("j1").await.unwrap().unwrap().value.state,
        JobState::Succeeded
    );
}

async fn job_writes_are_compare_and_swap(c: Coordinator) {
    let l = c.grant_lease(TTL).await.unwrap();
    let lead = c.campaign("s", l).await.unwrap().unwrap();
    let job = JobRecord::new("j".into(), spec());
    c.submit_job(&job).await.unwrap();
    assert!(matches!(
        c.submit_job(&job).await,
        Err(Error::Conflict { .. })
    ));
    let v1 = c.get_job("j").await.unwrap().unwrap();
    let mut first = v1.value.clone();
    first.attempt = 1;
    c.update_job(&lead, &v1, &first).await.unwrap();
    let mut second = v1.value.clone();
    second.attempt = 7;
    // Written against a stale read: refused, and the first write stands.
    assert!(matches!(
        c.update_job(&lead, &v1, &second).await,
        Err(Error::Conflict { .. })
    ));
    assert_eq!(c.get_job("j").await.unwrap().unwrap().value.attempt, 1);
    // A cancel request is recorded by anyone, once.
    let cancelled = c.request_cancel("j").await.unwrap();
    assert!(cancelled.cancel_requested);
    assert!(matches!(
        c.request_cancel("nope").await,
        Err(Error::NoSuchJob(_))
    ));
    let all = c.list_jobs().await.unwrap();
    assert_eq!(all.len(), 1);
    assert!(all[0].value.cancel_requested);
}

/// Lead, submit job `j` and place it on executor `e1`.
async fn lead_and_place(c: &Coordinator) -> Leadership {
    let l = c.grant_lease(TTL).await.unwrap();
    let lead = c.campaign("s", l).await.unwrap().unwrap();
    let job = JobRecord::new("j".into(), spec());
    c.submit_job(&job).await.unwrap();
    place(c, &lead, "j", "e1").await;
    lead
}

/// Place the submitted job `id` on `executor` (its first attempt); the write's revision.
async fn place(c: &Coordinator, lead: &Leadership, id: &str, executor: &str) -> i64 {
    let v = c.get_job(id).await.unwrap().unwrap();
    let mut placed = v.value.clone();
    placed.state = JobState::Running;
    placed.attempt = 1;
    placed.executor = Some(executor.into());
    let task = TaskAssignment {
        job_id: id.into(),
        attempt: 1,
        executor: executor.into(),
        spec: spec(),
        assigned_ms: 0,
        rank: 0,
        group: Vec::new(),
        stages: Vec::new(),
    };
    c.assign_task(lead, &v, &placed, &[task], None)
        .await
        .unwrap()
}

/// An ended job's release goes out in the next assignment's transaction: both at one
/// revision, or neither when either job moved since it was read.
async fn a_release_goes_out_with_the_next_assignment(c: Coordinator) {
    let lead = lead_and_place(&c).await;
    c.submit_job(&JobRecord::new("k".into(), spec()))
        .await
        .unwrap();
    let ended = |j: &Versioned<JobRecord>| {
        let mut e = j.value.clone();
        e.state = JobState::Succeeded;
        e
    };
    let k = c.get_job("k").await.unwrap().unwrap();
    let mut placed = k.value.clone();
    placed.state = JobState::Running;
    placed.attempt = 1;
    placed.executor = Some("e1".into());
    let task = TaskAssignment {
        job_id: "k".into(),
        attempt: 1,
        executor: "e1".into(),
        spec: spec(),
        assigned_ms: 0,
        rank: 0,
        group: Vec::new(),
        stages: Vec::new(),
    };
    let on_e1 = || async {
        c.tasks_for("e1")
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.value.job_id)
            .collect::<Vec<_>>()
    };

    // Job j moved after it was read (a cancel request): nothing of either is written.
    let j = c.get_job("j").await.unwrap().unwrap();
    let stale = c.release_write(&j, &ended(&j));
    c.request_cancel("j").await.unwrap();
    assert!(matches!(
        c.assign_task(
            &lead,
            &k,
            &placed,
            std::slice::from_ref(&task),
            Some(&stale)
        )
        .await,
        Err(Error::Conflict { .. })
    ));
    assert_eq!(on_e1().await, ["j"]);
    assert_eq!(
        c.get_job("k").await.unwrap().unwrap().value.state,
        JobState::Pending
    );

    // Read again: one transaction ends j, takes its task away and places k.
    let j = c.get_job("j").await.unwrap().unwrap();
    let release = c.release_write(&j, &ended(&j));
    let revision = c
        .assign_task(&lead, &k, &placed, &[task], Some(&release))
        .await
        .unwrap();
    let (j, k) = (
        c.get_job("j").await.unwrap().unwrap(),
        c.get_job("k").await.unwrap().unwrap(),
    );
    assert_eq!((j.value.state, j.revision), (JobState::Succeeded, revision));
    assert_eq!((k.value.state, k.revision), (JobState::Running, revision));
    assert_eq!(on_e1().await, ["k"]);
    let active: Vec<String> = c
        .list_active_jobs()
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.value.id)
        .collect();
    assert_eq!(active, ["k"]);

    // A release with nothing to go out with is sent alone.
    let k = c.get_job("k").await.unwrap().unwrap();
    let revision = c
        .commit_release(&lead, c.release_write(&k, &ended(&k)))
        .await
        .unwrap();
    assert_eq!(c.get_job("k").await.unwrap().unwrap().revision, revision);
    assert!(on_e1().await.is_empty());
}

async fn a_worker_group_is_placed_and_released_whole(c: Coordinator) {
    let l = c.grant_lease(TTL).await.unwrap();
    let lead = c.campaign("s", l).await.unwrap().unwrap();
    c.submit_job(&JobRecord::new("g".into(), spec()))
        .await
        .unwrap();
    let v = c.get_job("g").await.unwrap().unwrap();
    let mut placed = v.value.clone();
    placed.state = JobState::Running;
    placed.attempt = 1;
    placed.executor = Some("e1".into());
    placed.workers = vec!["e1".into(), "e2".into(), "e3".into()];
    let peers: Vec<String> = vec!["h1:1".into(), "h2:2".into(), "h3:3".into()];
    let tasks: Vec<TaskAssignment> = placed
        .workers
        .iter()
        .enumerate()
        .map(|(rank, e)| TaskAssignment {
            job_id: "g".into(),
            attempt: 1,
            executor: e.clone(),
            spec: spec(),
            assigned_ms: 0,
            rank: rank as u32,
            group: peers.clone(),
            stages: Vec::new(),
        })
        .collect();
    c.assign_task(&lead, &v, &placed, &tasks, None)
        .await
        .unwrap();
    for (rank, e) in ["e1", "e2", "e3"].into_iter().enumerate() {
        let mine = c.tasks_for(e).await.unwrap();
        assert_eq!(mine.len(), 1, "{e}");
        assert_eq!(mine[0].value.rank, rank as u32);
        assert_eq!(mine[0].value.group, peers);
        assert_eq!(mine[0].value.group_id(), "g/1");
    }
    let v = c.get_job("g").await.unwrap().unwrap();
    let mut requeued = v.value.clone();
    requeued.state = JobState::Pending;
    requeued.workers.clear();
    c.release_task(&lead, &v, &requeued).await.unwrap();
    for e in ["e1", "e2", "e3"] {
        assert!(
            c.tasks_for(e).await.unwrap().is_empty(),
            "{e} kept its task"
        );
    }
}

async fn progress_is_fenced_on_the_assignment(c: Coordinator) {
    let lead = lead_and_place(&c).await;
    let assigned = c.tasks_for("e1").await.unwrap();
    assert_eq!(assigned.len(), 1);
    assert!(c.tasks_for("e2").await.unwrap().is_empty());
    let mut p = TaskProgress::started(&assigned[0].value);
    p.epoch = 3;
    c.report_progress(&assigned[0], &p).await.unwrap();
    assert_eq!(c.get_progress("j").await.unwrap().unwrap().epoch, 3);

    // The leader takes the task away (requeue): the executor's next report is refused.
    let v = c.get_job("j").await.unwrap().unwrap();
    let mut requeued = v.value.clone();
    requeued.state = JobState::Pending;
    c.release_task(&lead, &v, &requeued).await.unwrap();
    assert!(c.tasks_for("e1").await.unwrap().is_empty());
    assert!(c.get_progress("j").await.unwrap().is_none());
    assert!(matches!(
        c.report_progress(&assigned[0], &p).await,
        Err(Error::Conflict { .. })
    ));
}

async fn active_jobs_and_reports_are_read_in_batches(c: Coordinator) {
    let l = c.grant_lease(TTL).await.unwrap();
    let lead = c.campaign("s", l).await.unwrap().unwrap();
    c.register_executor(&executor("e1"), l).await.unwrap();
    // More jobs than one etcd transaction reads.
    let n = halyard_core::kv::MANY_KEYS * 2 + 3;
    for i in 0..n {
        c.submit_job(&JobRecord::new(format!("j{i:03}"), spec()))
            .await
            .unwrap();
    }
    // One ends (it leaves the active index); one is placed and reports.
    let v = c.get_job("j005").await.unwrap().unwrap();
    let mut ended = v.value.clone();
    ended.state = JobState::Succeeded;
    c.update_job(&lead, &v, &ended).await.unwrap();
    place(&c, &lead, "j200", "e1").await;
    let assigned = c.tasks_for("e1").await.unwrap();
    let mut p = TaskProgress::started(&assigned[0].value);
    p.epoch = 4;
    c.report_progress(&assigned[0], &p).await.unwrap();

    let active = c.list_active_jobs().await.unwrap();
    let ids: Vec<String> = active.iter().map(|j| j.value.id.clone()).collect();
    let expected: Vec<String> = (0..n)
        .filter(|&i| i != 5)
        .map(|i| format!("j{i:03}"))
        .collect();
    assert_eq!(ids, expected);
    let running = active.iter().find(|j| j.value.id == "j200").unwrap();
    assert_eq!(running.value.state, JobState::Running);
    assert_eq!(
        running.revision,
        c.get_job("j200").await.unwrap().unwrap().revision
    );

    // The leader's pass reads the same jobs, with the tasks and the running one's report.
    let view = c.leader_view().await.unwrap();
    let view_ids: Vec<&str> = view.jobs.iter().map(|j| j.value.id.as_str()).collect();
    assert_eq!(view_ids, ids);
    assert_eq!(
        view.jobs.iter().map(|j| j.revision).collect::<Vec<_>>(),
        active.iter().map(|j| j.revision).collect::<Vec<_>>()
    );
    let tasks: Vec<(&str, &str)> = view
        .tasks
        .iter()
        .map(|t| (t.value.executor.as_str(), t.value.job_id.as_str()))
        .collect();
    assert_eq!(tasks, [("e1", "j200")]);
    assert_eq!(view.tasks[0].revision, assigned[0].revision);
    let epochs: Vec<(&str, u32)> = view
        .reports
        .iter()
        .map(|(id, r)| (id.as_str(), r.epoch))
        .collect();
    assert_eq!(epochs, [("j200", 4)]);
    let executors: Vec<&str> = view.executors.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(executors, ["e1"]);
}

async fn model_versions_are_unique_under_contention(c: Coordinator) {
    assert_eq!(c.next_model_version("m").await.unwrap(), 1);
    assert_eq!(c.next_model_version("m").await.unwrap(), 2);
    assert_eq!(c.next_model_version("other").await.unwrap(), 1);
    let mut handles = Vec::new();
    for _ in 0..8 {
        let c = c.clone();
        handles.push(tokio::spawn(async move {
            c.next_model_version("m").await.unwrap()
        }));
    }
    let mut got = Vec::new();
    for h in handles {
        got.push(h.await.unwrap());
    }
    got.sort();
    assert_eq!(got, (3..=10).collect::<Vec<u64>>());
}

fn version(name: &str, v: u64) -> ModelVersion {
    ModelVersion {
        sealed_with: None,
        name: name.into(),
        version: v,
        artifact: format!("file:///store/models/{name}/{v}"),
        model_type: "mlp".into(),
        metrics: [("test_auc".to_string(), 0.8)].into(),
        job_id: "j".into(),
        data_source: "file:///x.csv".into(),
        data_digest: "sha256:00".into(),
        created_ms: 0,
        files: Default::default(),
        memory_bytes: 0,
        profile: None,
        evaluation: None,
    }
}

async fn registry_versions_deployments_outcomes_and_serving(c: Coordinator) {
    // A version registers only while its task's assignment stands.
    let lead = lead_and_place(&c).await;
    let assigned = c.tasks_for("e1").await.unwrap().remove(0);
    // The task's last report goes in the registration's transaction.
    let reporting = |v| {
        let mut p = TaskProgress::started(&assigned.value);
        p.model_version = Some(v);
        p
    };
    let reported = || async { c.get_progress("j").await.unwrap().unwrap().model_version };
    assert_eq!(
        c.register_version(&assigned, &version("m", 1), Some(&reporting(1)))
            .await
            .unwrap(),
        None
    );
    assert_eq!(reported().await, Some(1));
    // A job registers one version: a second run of the same attempt (its first run's
    // report lost) gets the first back and registers nothing, its report neither.
    assert_eq!(
        c.register_version(&assigned, &version("m", 2), Some(&reporting(2)))
            .await
            .unwrap(),
        Some(version("m", 1))
    );
    assert!(c.model_version("m", 2).await.unwrap().is_none());
    assert_eq!(reported().await, Some(1));
    assert_eq!(
        c.version_of_job("m", "j").await.unwrap(),
        Some(version("m", 1))
    );
    // Another job's version (registered under this assignment for the test).
    let other = ModelVersion {
        job_id: "j2".into(),
        ..version("m", 2)
    };
    assert_eq!(
        c.register_version(&assigned, &other, None).await.unwrap(),
        None
    );
    assert_eq!(c.model_names().await.unwrap(), vec!["m".to_string()]);
    let listed: Vec<u64> = c
        .model_versions("m")
        .await
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(listed, vec![1, 2]);
    assert_eq!(c.model_version("m", 2).await.unwrap().unwrap(), other);
    let v = c.get_job("j").await.unwrap().unwrap();
    c.release_task(&lead, &v, &v.value).await.unwrap();
    assert!(matches!(
        c.register_version(&assigned, &version("m", 3), None).await,
        Err(Error::Conflict { .. })
    ));
    assert!(c.model_version("m", 3).await.unwrap().is_none());

    // Deployments: changes name registered versions, and roll back.
    let deploy = |version, alias: &str, percent| Change::Deploy {
        version,
        alias: alias.into(),
        percent,
    };
    assert!(
        c.change_deployment("m", &deploy(9, "production", None))
            .await
            .is_err()
    );
    assert!(
        c.change_deployment("nope", &deploy(1, "production", None))
            .await
            .is_err()
    );
    c.change_deployment("m", &deploy(1, "production", None))
        .await
        .unwrap();
    let d = c
        .change_deployment("m", &deploy(2, "canary", Some(10)))
        .await
        .unwrap();
    assert_eq!(d.current.versions(), vec![1, 2]);
    assert_eq!(c.deployment("m").await.unwrap().unwrap(), d);
    let d = c.change_deployment("m", &Change::Rollback).await.unwrap();
    assert_eq!(d.current.versions(), vec![1]);
    assert_eq!(c.deployments().await.unwrap(), vec![d]);

    // Each node's published counts replace its last; the outcomes add up every node's.
    let tally = |node: &str, trials: u64, conversions: u64| {
        let mut conversion = MetricSums::default();
        for i in 0..trials {
            conversion.push(if i < conversions { 1.0 } else { 0.0 });
        }
        NodeTally {
            node: node.into(),
            model: "m".into(),
            updated_ms: 1,
            versions: [(
                1,
                VersionTally {
                    exposures: trials + 1,
                    metrics: [(CONVERSION.to_string(), conversion)].into(),
                    ..VersionTally::default()
                },
            )]
            .into(),
        }
    };
    c.publish_tally(&tally("a", 5, 1)).await.unwrap();
    c.publish_tally(&tally("a", 7, 2)).await.unwrap();
    c.publish_tally(&tally("b", 4, 3)).await.unwrap();
    assert_eq!(c.tallies("m").await.unwrap().len(), 2);
    let o = c.outcomes("m").await.unwrap();
    assert_eq!(o.len(), 1);
    assert_eq!((o[0].0, o[0].1.trials, o[0].1.conversions), (1, 11, 5));
    assert!(c.tallies("m2").await.unwrap().is_empty());

    // What an executor serves vanishes with its lease.
    let lease = c.grant_lease(TTL).await.unwrap();
    let info = ServingInfo {
        executor: "e1".into(),
        address: "127.0.0.1:1".into(),
        models: [("m".to_string(), vec![1])].into(),
    };
    c.advertise_serving(&info, lease).await.unwrap();
    assert_eq!(c.serving().await.unwrap(), vec![info]);
    c.revoke(lease).await.unwrap();
    assert!(c.serving().await.unwrap().is_empty());
}

/// The SQL endpoint is the leader's: fenced on its leadership, gone with its lease.
async fn sql_endpoint_follows_the_leader(c: Coordinator) {
    assert_eq!(c.sql_endpoint().await.unwrap(), None);
    let la = c.grant_lease(TTL).await.unwrap();
    let lb = c.grant_lease(TTL).await.unwrap();
    let a = c.campaign("a", la).await.unwrap().expect("a leads");
    c.advertise_sql_endpoint(&a, "10.0.0.1:5000").await.unwrap();
    assert_eq!(
        c.sql_endpoint().await.unwrap().as_deref(),
        Some("10.0.0.1:5000")
    );
    c.revoke(la).await.unwrap();
    assert_eq!(
        c.sql_endpoint().await.unwrap(),
        None,
        "gone with the leader's lease"
    );
    let b = c.campaign("b", lb).await.unwrap().expect("b leads");
    assert!(matches!(
        c.advertise_sql_endpoint(&a, "10.0.0.1:5000").await,
        Err(Error::Fenced)
    ));
    c.advertise_sql_endpoint(&b, "10.0.0.2:5000").await.unwrap();
    assert_eq!(
        c.sql_endpoint().await.unwrap().as_deref(),
        Some("10.0.0.2:5000")
    );
}

/// The audit log keeps what is newer than the cut and loses what is older, in batches
/// past etcd's limit of operations per transaction.
async fn the_audit_log_is_trimmed_by_time(c: Coordinator) {
    use halyard_core::coord::AuditEvent;
    let event = |t: i64| AuditEvent {
        time_ms: t,
        key_id: "k".into(),
        key_name: "admin".into(),
        role: "admin".into(),
        node: "n".into(),
        action: "submit".into(),
        target: format!("job-{t}"),
        outcome: "ok".into(),
    };
    for t in 1..=260 {
        c.record_audit(&event(t * 1000)).await.unwrap();
    }
    assert_eq!(c.trim_audit(0).await.unwrap(), 0);
    assert_eq!(c.trim_audit(250_500).await.unwrap(), 250);
    let left = c.audit_since(0).await.unwrap();
    assert_eq!(left.len(), 10);
    assert_eq!(left[0].target, "job-251000");
    assert_eq!(c.trim_audit(250_500).await.unwrap(), 0);
}

async fn sticky_assignments_are_kept_in_write_order_and_cleared_whole(c: Coordinator) {
    use halyard_core::registry::StickyBatch;
    let batch = |keys: &[&str], version: u64| StickyBatch {
        keys: keys.iter().map(|k| k.to_string()).collect(),
        versions: vec![version; keys.len()],
    };
    assert!(c.sticky("m").await.unwrap().is_empty());
    c.put_sticky("m", "node-b", 7, &batch(&["k1"], 2))
        .await
        .unwrap();
    c.put_sticky("m", "node-a", 9, &batch(&["k1", "k2"], 1))
        .await
        .unwrap();
    c.put_sticky("other", "node-a", 1, &batch(&["k1"], 3))
        .await
        .unwrap();
    let records = c.sticky("m").await.unwrap();
    // Oldest write first, whatever the names' order.
    assert_eq!(records.len(), 2);
    assert!(records[0].revision < records[1].revision);
    assert_eq!(records[0].batch, batch(&["k1"], 2));
    assert!(
        records[0].id.ends_with("m/node-b/000000000007"),
        "{}",
        records[0].id
    );
    // Each of etcd's transactions takes at most 128 deletes: 150 records go in two.
    for seq in 0..150 {
        c.put_sticky("m", "node-c", 100 + seq, &batch(&["k"], 1))
            .await
            .unwrap();
    }
    assert_eq!(c.clear_sticky("m").await.unwrap(), 152);
    assert!(c.sticky("m").await.unwrap().is_empty());
    assert_eq!(c.sticky("other").await.unwrap().len(), 1);
}

/// Whether `wake` fires within a second.
async fn woken(wake: &halyard_core::coord::Wake) -> bool {
    tokio::time::timeout(Duration::from_secs(1), wake.changed())
        .await
        .is_ok()
}

/// Whether `wake` stays quiet for a fifth of a second.
async fn quiet(wake: &halyard_core::coord::Wake) -> bool {
    tokio::time::timeout(Duration::from_millis(200), wake.changed())
        .await
        .is_err()
}

/// Take the wake-ups `wake` has pending until it stays quiet.
async fn settle(wake: &halyard_core::coord::Wake) {
    while !quiet(wake).await {}
}

async fn wake_ups_follow_what_each_loop_acts_on(c: Coordinator) {
    let (leader, e1, e2) = (c.leader_wake(), c.task_wake("e1"), c.task_wake("e2"));
    // An opened watch wakes its loop once (for writes it may have missed): let every
    // watch open, then take that wake-up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for w in [&leader, &e1, &e2] {
        assert!(woken(w).await, "a watch opened");
    }
    assert!(quiet(&leader).await && quiet(&e1).await, "nothing changed");
    // A submission and its assignment to e1: the leader and e1 wake, e2 does not.
    let lead = lead_and_place(&c).await;
    assert!(woken(&leader).await, "the leader, on a submission");
    assert!(woken(&e1).await, "e1, on its assignment");
    assert!(quiet(&e2).await, "e2 has no task");
    // A task's report wakes the leader.
    let assigned = c.tasks_for("e1").await.unwrap().remove(0);
    settle(&leader).await;
    let p = TaskProgress::started(&assigned.value);
    c.report_progress(&assigned, &p).await.unwrap();
    assert!(woken(&leader).await, "the leader, on a task's report");
    // The task taken away wakes e1.
    let v = c.get_job("j").await.unwrap().unwrap();
    let mut requeued = v.value.clone();
    requeued.state = JobState::Pending;
    c.release_task(&lead, &v, &requeued).await.unwrap();
    assert!(woken(&e1).await, "e1, on its task taken away");
    // An executor joining, and its lease ending, wake the leader.
    settle(&leader).await;
    let l = c.grant_lease(TTL).await.unwrap();
    c.register_executor(&executor("e3"), l).await.unwrap();
    assert!(woken(&leader).await, "the leader, on an executor joining");
    c.revoke(l).await.unwrap();
    assert!(
        woken(&leader).await,
        "the leader, on an executor's lease ending"
    );
    // A placement wakes the serving executors; an advertisement wakes the gateway.
    let (serving, gateway) = (c.serving_wake(), c.gateway_wake());
    tokio::time::sleep(Duration::from_millis(300)).await;
    settle(&serving).await;
    settle(&gateway).await;
    let placed = halyard_core::placement::Placement {
        model: "m".into(),
        executors: vec!["e1".into()],
        wanted: 1,
        memory_bytes: 0,
    };
    c.set_placements(&lead, &[placed], &[]).await.unwrap();
    assert!(woken(&serving).await, "serving executors, on a placement");
    assert!(
        quiet(&gateway).await,
        "the gateway routes by advertisements only"
    );
    let l = c.grant_lease(TTL).await.unwrap();
    let info = ServingInfo {
        executor: "e1".into(),
        address: "127.0.0.1:1".into(),
        models: Default::default(),
    };
    c.advertise_serving(&info, l).await.unwrap();
    assert!(woken(&gateway).await, "the gateway, on an advertisement");
}

async fn the_leaders_own_writes_do_not_wake_it(c: Coordinator) {
    let own = Arc::new(OwnWrites::default());
    let leader = c.leader_wake_but(Some(own.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(woken(&leader).await, "the watches opened");
    let l = c.grant_lease(TTL).await.unwrap();
    let lead = c.campaign("s", l).await.unwrap().unwrap();
    c.submit_job(&JobRecord::new("j".into(), spec()))
        .await
        .unwrap();
    assert!(woken(&leader).await, "on a submission");
    settle(&leader).await;
    // Its assignment (the job and its report key written), told as its own: no wake-up.
    let writing = own.writing();
    writing.wrote(place(&c, &lead, "j", "e1").await);
    assert!(quiet(&leader).await, "woken by its own assignment");
    // The executor's report wakes it.
    let assigned = c.tasks_for("e1").await.unwrap();
    let p = TaskProgress::started(&assigned[0].value);
    c.report_progress(&assigned[0], &p).await.unwrap();
    assert!(woken(&leader).await, "on a report");
    settle(&leader).await;
    // A write in flight that fails (a stale read) leaves the next change to wake it.
    let stale = c.get_job("j").await.unwrap().unwrap();
    let writing = own.writing();
    c.request_cancel("j").await.unwrap();
    assert!(c.update_job(&lead, &stale, &stale.value).await.is_err());
    drop(writing);
    assert!(woken(&leader).await, "on a cancel request");
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod embedded_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::embedded().await).await;
                }
            )*
        }
        mod journalled_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::journalled().await).await;
                }
            )*
        }
        mod etcd_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::etcd().await).await;
                }
            )*
        }
    };
}

conformance!(
    lease_keys_vanish_without_keep_alive,
    duplicate_executor_id_is_refused,
    one_leader_and_a_deposed_leader_is_fenced,
    job_writes_are_compare_and_swap,
    progress_is_fenced_on_the_assignment,
    active_jobs_and_reports_are_read_in_batches,
    a_worker_group_is_placed_and_released_whole,
    a_release_goes_out_with_the_next_assignment,
    model_versions_are_unique_under_contention,
    registry_versions_deployments_outcomes_and_serving,
    sql_endpoint_follows_the_leader,
    the_audit_log_is_trimmed_by_time,
    wake_ups_follow_what_each_loop_acts_on,
    the_leaders_own_writes_do_not_wake_it,
    sticky_assignments_are_kept_in_write_order_and_cleared_whole,
);

/// A node reaching etcd at `endpoints` with `access` stops waiting for it at once (within
/// 60 s of a 600 s wait), refused, and the refusal names `flag`.
async fn ends_the_wait(endpoints: &[String], access: halyard_core::kv::EtcdAccess, flag: &str) {
    let config = halyard_core::config::CoordinatorConfig::Etcd {
        endpoints: endpoints.to_vec(),
        root: root(),
        access,
    };
    let waited = tokio::time::timeout(
        Duration::from_secs(60),
        config.connect_waiting(Duration::from_secs(600)),
    )
    .await
    .unwrap_or_else(|_| panic!("refused ({flag}), yet still waiting for etcd"));
    match waited {
        Err(e @ Error::CoordinatorRefused(_)) => {
            assert!(e.to_string().contains(flag), "{e}")
        }
        other => panic!("refused ({flag}): {:?}", other.err()),
    }
}

/// A real etcd process, killed when dropped.
struct EtcdProcess(std::process::Child);

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_passes_against_etcd_with_tls_client_certificates_and_users() {
    use halyard_core::kv::EtcdAccess;
    let tmp = tempfile::tempdir().unwrap();
    let certs =
        halyard_core::certs::init(&tmp.path().join("certs"), &["etcd".into(), "node".into()])
            .unwrap();
    let rogue = halyard_core::certs::init(&tmp.path().join("rogue"), &["node".into()]).unwrap();
    let (client_port, peer_port) = (free_port(), free_port());
    let client_url = format!("https://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let (_, etcd_cert, etcd_key) = &certs.nodes[0];
    let _etcd = EtcdProcess(
        std::process::Command::new("etcd")
            .args(["--name", "tls", "--data-dir"])
            .arg(tmp.path().join("data"))
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("tls={peer_url}")])
            .arg("--cert-file")
            .arg(etcd_cert)
            .arg("--key-file")
            .arg(etcd_key)
            .arg("--trusted-ca-file")
            .arg(&certs.ca)
            .arg("--client-cert-auth")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("etcd is installed (.ci/run installs etcd-server)"),
    );
    let endpoint = vec![format!("127.0.0.1:{client_port}")];
    let (_, node_cert, node_key) = &certs.nodes[1];
    let mut access = EtcdAccess {
        ca: Some(certs.ca.clone()),
        cert: Some((node_cert.clone(), node_key.clone())),
        user: None,
    };
    // Up, then etcd's own users: a root user with a password, and authentication on.
    let mut admin = None;
    for _ in 0..100 {
        if EtcdKv::connect(&endpoint, &access).await.is_ok() {
            let tls = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(
                    std::fs::read(&certs.ca).unwrap(),
                ))
                .identity(etcd_client::Identity::from_pem(
                    std::fs::read(node_cert).unwrap(),
                    std::fs::read(node_key).unwrap(),
                ));
            let options = etcd_client::ConnectOptions::new().with_tls(tls);
            admin = Some(
                etcd_client::Client::connect(&endpoint, Some(options))
                    .await
                    .unwrap(),
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut admin = admin.expect("the TLS etcd starts");
    admin.user_add("root", "root-secret", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.auth_enable().await.unwrap();
    access.user = Some(("root".into(), "root-secret".into()));

    // Refused: plaintext, no client certificate, another CA's certificate, a wrong password.
    let refused = [
        EtcdAccess::default(),
        EtcdAccess {
            cert: None,
            ..access.clone()
        },
        EtcdAccess {
            cert: Some((rogue.nodes[0].1.clone(), rogue.nodes[0].2.clone())),
            ..access.clone()
        },
        EtcdAccess {
            user: Some(("root".into(), "wrong".into())),
            ..access.clone()
        },
    ];
    for (i, a) in refused.iter().enumerate() {
        assert!(
            EtcdKv::connect(&endpoint, a).await.is_err(),
            "case {i}: {a:?} was let in"
        );
    }
    // A wrong password is refused for good: a node waiting for etcd stops at once with
    // what to check, instead of retrying until its wait runs out.
    ends_the_wait(&endpoint, refused[3].clone(), "--etcd-password").await;
    // So is etcd's certificate when the CA this node trusts did not sign it (the handshake
    // fails the same way every time). This node's certificate signed by a CA etcd does not
    // trust is not told apart: etcd closes the connection, as a restarting etcd would.
    let untrusted = EtcdAccess {
        ca: Some(rogue.ca.clone()),
        ..access.clone()
    };
    ends_the_wait(&endpoint, untrusted, "--etcd-ca").await;

    // The whole conformance suite, over TLS with a client certificate and a user.
    let coord = || async {
        let kv = EtcdKv::connect(&endpoint, &access).await.unwrap();
        Coordinator::new(Arc::new(kv), &root())
    };
    lease_keys_vanish_without_keep_alive(coord().await).await;
    duplicate_executor_id_is_refused(coord().await).await;
    one_leader_and_a_deposed_leader_is_fenced(coord().await).await;
    job_writes_are_compare_and_swap(coord().await).await;
    progress_is_fenced_on_the_assignment(coord().await).await;
    active_jobs_and_reports_are_read_in_batches(coord().await).await;
    a_worker_group_is_placed_and_released_whole(coord().await).await;
    a_release_goes_out_with_the_next_assignment(coord().await).await;
    model_versions_are_unique_under_contention(coord().await).await;
    registry_versions_deployments_outcomes_and_serving(coord().await).await;
    sql_endpoint_follows_the_leader(coord().await).await;
    the_audit_log_is_trimmed_by_time(coord().await).await;
    wake_ups_follow_what_each_loop_acts_on(coord().await).await;
    the_leaders_own_writes_do_not_wake_it(coord().await).await;
    sticky_assignments_are_kept_in_write_order_and_cleared_whole(coord().await).await;
}

/// One job record that cannot be read does not stop the leader's view of the others: it
/// is quarantined with the reason, once, and left as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_job_is_quarantined_and_the_others_go_on() {
    use halyard_core::kv::{KvBackend, TxnOp};
    let kv = Arc::new(EmbeddedKv::new());
    let root = root();
    let c = Coordinator::new(kv.clone(), &root);
    c.submit_job(&JobRecord::new("good".into(), spec()))
        .await
        .unwrap();
    let put = |key: String, value: &[u8]| TxnOp::Put {
        key,
        value: value.to_vec(),
        lease: None,
    };
    kv.txn(
        Vec::new(),
        vec![
            put(
                format!("{root}/jobs/bad"),
                b"{\"id\": \"bad\", \"format\": 99",
            ),
            put(format!("{root}/active/bad"), b""),
        ],
    )
    .await
    .unwrap();
    let active = c.list_active_jobs().await.unwrap();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].value.id, "good");
    let q = c.quarantined_jobs().await.unwrap();
    assert_eq!(q.len(), 1);
    assert!(
        q[0].0 == "bad" && q[0].1.contains("corrupt record"),
        "{q:?}"
    );
    // Once: the index no longer names it; the record is kept for inspection.
    assert_eq!(c.list_active_jobs().await.unwrap().len(), 1);
    assert!(
        kv.get(&format!("{root}/active/bad"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(kv.get(&format!("{root}/jobs/bad")).await.unwrap().is_some());
    // A record of a newer format is refused the same way, saying so.
    let mut newer = serde_json::to_value(JobRecord::new("newer".into(), spec())).unwrap();
    newer["format"] = serde_json::json!(halyard_core::records::JOB_FORMAT + 1);
    kv.txn(
        Vec::new(),
        vec![
            put(format!("{root}/jobs/newer"), newer.to_string().as_bytes()),
            put(format!("{root}/active/newer"), b""),
        ],
    )
    .await
    .unwrap();
    assert_eq!(c.list_active_jobs().await.unwrap().len(), 1);
    let q = c.quarantined_jobs().await.unwrap();
    assert!(
        q.iter()
            .any(|(id, why)| id == "newer" && why.contains("written by a newer Halyard")),
        "{q:?}"
    );
    // The full listing leaves them out too; asking for one by id says what is wrong.
    let all = c.list_jobs().await.unwrap();
    assert_eq!(all.len(), 1);
    assert!(
        c.get_job("bad")
            .await
            .unwrap_err()
            .to_string()
            .contains("corrupt record")
    );
}

/// A journalled store read again after its process ended keeps every write not bound to a
/// lease, at its revision (compare-and-swap on it still works), and none bound to one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journalled_store_keeps_what_outlives_leases_across_a_restart() {
    use halyard_core::kv::{KvBackend, TxnOp};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("coordinator.journal");
    let root = root();
    let (job_revision, deployment) = {
        let kv = Arc::new(EmbeddedKv::open(&path).unwrap());
        let c = Coordinator::new(kv.clone(), &root);
        let _lead = lead_and_place(&c).await;
        let assigned = c.tasks_for("e1").await.unwrap().remove(0);
        c.next_model_version("m").await.unwrap();
        c.register_version(&assigned, &version("m", 1), None)
            .await
            .unwrap();
        let production = Change::Deploy {
            version: 1,
            alias: "production".into(),
            percent: None,
        };
        let d = c.change_deployment("m", &production).await.unwrap();
        // On a lease: gone after the restart.
        let lease = c.grant_lease(TTL).await.unwrap();
        c.advertise_serving(
            &ServingInfo {
                executor: "e1".into(),
                address: "127.0.0.1:1".into(),
                models: [("m".to_string(), vec![1])].into(),
            },
            lease,
        )
        .await
        .unwrap();
        // Written, then deleted: gone too.
        kv.txn(
            Vec::new(),
            vec![TxnOp::Put {
                key: format!("{root}/scratch"),
                value: b"x".to_vec(),
                lease: None,
            }],
        )
        .await
        .unwrap();
        kv.txn(
            Vec::new(),
            vec![TxnOp::Delete {
                key: format!("{root}/scratch"),
            }],
        )
        .await
        .unwrap();
        let j = c.list_jobs().await.unwrap().remove(0);
        (j.revision, d)
    };
    let kv = Arc::new(EmbeddedKv::open(&path).unwrap());
    let c = Coordinator::new(kv.clone(), &root);
    let j = c.list_jobs().await.unwrap().remove(0);
    assert_eq!(j.revision, job_revision);
    assert_eq!(c.list_active_jobs().await.unwrap().len(), 1);
    assert_eq!(c.model_versions("m").await.unwrap().len(), 1);
    assert_eq!(c.deployment("m").await.unwrap(), Some(deployment));
    assert!(
        c.serving().await.unwrap().is_empty(),
        "leased keys end with the process"
    );
    assert!(kv.get(&format!("{root}/scratch")).await.unwrap().is_none());
    // Revisions go on from where they were: a new write is newer than every old one.
    assert_eq!(c.next_model_version("m").await.unwrap(), 2);
    let d = c.change_deployment("m", &Change::Rollback).await;
    assert!(d.is_ok(), "{d:?}");
}
