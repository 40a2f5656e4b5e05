//! The Watch stream behind `halyard submit --follow`: it starts with the job's state at the
//! call, sends changes in order, and ends with the final state.

mod common;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_changes_and_ends_with_the_final_state() {
    let tmp = tempfile::tempdir().unwrap();
    let (cluster, client) = common::standalone(tmp.path(), 1).await;
    let data = halyard_cli::datagen::generate(&tmp.path().join("data"), 3000, 9).unwrap();
    let spec = common::spec(tmp.path(), "watched", &data.responses, 60, 32);
    let job = client.submit(&spec).await.unwrap();
    let mut stream = client.watch(&job.id).await.unwrap();
    let mut events = Vec::new();
    let collected = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(e) = stream.message().await.unwrap() {
            events.push(e.job.unwrap());
        }
    })
    .await;
    assert!(collected.is_ok(), "the stream did not end: {events:?}");
    let states: Vec<&str> = events.iter().map(|e| e.state.as_str()).collect();
    // The state at the call: pending, or already running (a submission wakes the leader,
    // which may place the job before the watch starts).
    assert!(
        matches!(states.first(), Some(&"pending" | &"running")),
        "{states:?}"
    );
    assert_eq!(states.last(), Some(&"succeeded"), "{states:?}");
    assert!(states.contains(&"running"), "{states:?}");
    // No two consecutive events are the same, and epochs never go back.
    assert!(events.windows(2).all(|w| w[0] != w[1]), "{events:?}");
    assert!(
        events.windows(2).all(|w| w[0].epoch <= w[1].epoch),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.epoch > 0 && e.epoch < 60 && e.loss.is_finite()),
        "no progress seen: {events:?}"
    );
    assert!(!events.last().unwrap().artifact.is_empty());
    cluster.stop().await;
}
