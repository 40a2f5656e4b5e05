//! Scheduled runs on real processes over etcd: a schedule fires every interval, each due
//! time exactly once, also when the leader is killed (-9) between runs; a run still going
//! when the next is due is not started twice; pause and resume; bad timings are refused.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;

/// Interval of the schedule under test: longer than a failover (2 s leases).
const EVERY_MS: i64 = 4000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_fires_each_due_time_once_across_a_killed_leader() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cl = EtcdCluster::new(dir, "sched");
    let data = halyard_cli::datagen::generate(&dir.join("data"), 1200, 4).unwrap();
    let ports = [free_port(), free_port()];
    let addr = |i: usize| format!("127.0.0.1:{}", ports[i]);
    let mut sched_a = cl.scheduler("sched-0", &addr(0));
    let a = cl.connect(&addr(0)).await;
    wait_for("sched-0 to lead", Duration::from_secs(20), || async {
        (a.cluster().await.ok()?.leader == "sched-0").then_some(())
    })
    .await;
    let _sched_b = cl.scheduler("sched-1", &addr(1));
    let b = cl.connect(&addr(1)).await;
    let _exec = cl.executor("exec-0").0;
    wait_for("an executor", Duration::from_secs(20), || async {
        (a.cluster().await.ok()?.executors.len() == 1).then_some(())
    })
    .await;

    // Refused before anything is stored: bad timings, a second schedule of the same name.
    let quick = spec(dir, "quick", &data.responses, 1, 256);
    for (every, cron) in [(Some("0s"), None), (None, Some("0 3 * *")), (None, None)] {
        let err = a
            .create_schedule("bad", &quick, every, cron)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("schedule"), "{err}");
    }
    a.create_schedule("nightly", &quick, Some("4s"), None)
        .await
        .unwrap();
    let err = a
        .create_schedule("nightly", &quick, Some("4s"), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("exists"), "{err}");

    let runs_done = |c: &halyard_client::Client, n: usize| {
        let c = c.clone();
        async move {
            let s = c.schedules(Some("nightly")).await.ok()?.pop()?;
            (s.runs.iter().filter(|r| r.state == "succeeded").count() >= n).then_some(s)
        }
    };
    wait_for("two runs", Duration::from_secs(60), || runs_done(&a, 2)).await;
    // kill -9 the leader; the standby takes over and the schedule goes on.
    sched_a.kill();
    wait_for("sched-1 to lead", Duration::from_secs(20), || async {
        (b.cluster().await.ok()?.leader == "sched-1").then_some(())
    })
    .await;
    let s = wait_for("five runs", Duration::from_secs(90), || runs_done(&b, 5)).await;

    // Every due time fired once, on the grid: none missed, none doubled.
    let runs: Vec<_> = s.runs.iter().filter(|r| !r.job_id.is_empty()).collect();
    assert_eq!(runs.len(), s.runs.len(), "no run was skipped: {:?}", s.runs);
    for w in runs.windows(2) {
        assert_eq!(w[1].due_ms - w[0].due_ms, EVERY_MS, "runs {:?}", s.runs);
    }
    let ids: BTreeSet<&str> = runs.iter().map(|r| r.job_id.as_str()).collect();
    assert_eq!(ids.len(), runs.len());
    let jobs = b.jobs().await.unwrap();
    let of_schedule: Vec<_> = jobs.iter().filter(|j| j.schedule == "nightly").collect();
    assert_eq!(
        of_schedule.len(),
        runs.len() + usize::from(s.next_ms <= halyard_core::records::now_ms()),
        "every job of the schedule is one of its runs"
    );
    for r in &runs {
        assert_eq!(r.job_id, format!("nightly-{}", r.due_ms));
        assert!(of_schedule.iter().any(|j| j.id == r.job_id), "{}", r.job_id);
    }

    // Paused: nothing fires; resumed: it fires again.
    b.pause_schedule("nightly", true).await.unwrap();
    let paused_at = b.schedules(Some("nightly")).await.unwrap()[0].runs.len();
    tokio::time::sleep(Duration::from_millis(2 * EVERY_MS as u64)).await;
    let after = b.schedules(Some("nightly")).await.unwrap()[0].runs.len();
    assert!(
        after <= paused_at + 1,
        "{paused_at} runs when paused, {after} after"
    );
    b.pause_schedule("nightly", false).await.unwrap();
    wait_for("a run after resuming", Duration::from_secs(30), || async {
        let s = b.schedules(Some("nightly")).await.ok()?.pop()?;
        (s.runs.len() > after).then_some(())
    })
    .await;
    b.delete_schedule("nightly").await.unwrap();
    assert!(b.schedules(Some("nightly")).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_still_going_is_not_started_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_cluster, client) = standalone(dir, 2).await;
    let data = halyard_cli::datagen::generate(&dir.join("data"), 6000, 4).unwrap();
    // A run takes several seconds; the schedule is due every second.
    let slow = spec(dir, "slow", &data.responses, 100, 8);
    client
        .create_schedule("busy", &slow, Some("1s"), None)
        .await
        .unwrap();
    let most_at_once = std::sync::atomic::AtomicUsize::new(0);
    let s = wait_for(
        "a skipped due time and two runs",
        Duration::from_secs(180),
        || async {
            let active = client
                .jobs()
                .await
                .ok()?
                .iter()
                .filter(|j| {
                    j.schedule == "busy"
                        && !["succeeded", "failed", "cancelled"].contains(&j.state.as_str())
                })
                .count();
            most_at_once.fetch_max(active, std::sync::atomic::Ordering::Relaxed);
            let s = client.schedules(Some("busy")).await.ok()?.pop()?;
            let skipped = s.runs.iter().any(|r| r.job_id.is_empty());
            let ran = s.runs.iter().filter(|r| r.state == "succeeded").count();
            (skipped && ran >= 2).then_some(s)
        },
    )
    .await;
    assert_eq!(
        most_at_once.into_inner(),
        1,
        "two runs of one schedule at once"
    );
    let skip = s.runs.iter().find(|r| r.job_id.is_empty()).unwrap();
    assert!(skip.skipped.contains("still going"), "{skip:?}");
    client.delete_schedule("busy").await.unwrap();
}
