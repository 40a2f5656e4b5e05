//! The event log on a real filesystem: acknowledged events are counted, published,
//! flushed to Parquet once, and rebuilt after a restart.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use halyard_core::coord::Coordinator;
use halyard_core::events::{Event, EventLog};
use halyard_core::kv::EmbeddedKv;
use halyard_core::registry::{CONVERSION, NodeTally};
use halyard_core::store::Store;

fn coord() -> Coordinator {
    Coordinator::new(Arc::new(EmbeddedKv::new()), "/events-test")
}

fn store(root: &Path) -> Store {
    let url = halyard_core::config::file_url(&root.join("store")).unwrap();
    Store::open(&url, &Default::default()).unwrap()
}

/// Rows and `(kind, metric)` counts of every Parquet file under the model's folder.
fn parquet_rows(root: &Path, model: &str) -> (usize, Vec<String>) {
    let mut rows = 0;
    let mut files = Vec::new();
    let dir = root.join("store/events").join(model);
    let mut stack = vec![dir];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                let f = std::fs::File::open(&p).unwrap();
                let reader =
                    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
                        .unwrap()
                        .build()
                        .unwrap();
                rows += reader.map(|b| b.unwrap().num_rows()).sum::<usize>();
                files.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    files.sort();
    (rows, files)
}

fn segments_left(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("wal-"))
                .filter(|e| e.metadata().map(|m| m.len() > 0).unwrap_or(false))
                .count()
        })
        .unwrap_or(0)
}

async fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn outcomes(t: &NodeTally, version: u64) -> (u64, f64) {
    let m = t.versions[&version].metrics[CONVERSION];
    (m.n, m.sum)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_are_counted_flushed_once_and_rebuilt_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let c = coord();
    let log = EventLog::open(&root.join("events"), "node-1", store(root), c.clone()).unwrap();
    let exposures: Vec<Event> = (0..300)
        .map(|i| Event::exposure("offer", 1 + i % 2, &format!("c{i}"), 1_700_000_000_000))
        .collect();
    log.record(exposures);
    for chunk in 0..10 {
        let batch = (0..100)
            .map(|i| {
                let n = chunk * 100 + i;
                Event::outcome(
                    "offer",
                    1 + n % 2,
                    &format!("c{n}"),
                    CONVERSION,
                    f64::from(u8::from(n % 5 == 0)),
                    1_700_000_000_000 + i64::from(n as u32) * 3_600,
                )
            })
            .collect();
        log.append(batch).await.unwrap();
    }
    let revenue: Vec<Event> = (0..500)
        .map(|i| Event::outcome("offer", 2, "", "revenue", f64::from(i), 1_700_000_000_000))
        .collect();
    log.append(revenue).await.unwrap();

    // Counted as acknowledged.
    let t = log.tally("offer").unwrap();
    assert_eq!(t.node, "node-1");
    assert_eq!(outcomes(&t, 1), (500, 100.0));
    assert_eq!(outcomes(&t, 2), (500, 100.0));
    assert_eq!(t.versions[&1].exposures + t.versions[&2].exposures, 300);
    let r = t.versions[&2].metrics["revenue"];
    assert_eq!((r.n, r.sum), (500, 124_750.0));
    // Variance of 0..500 (n - 1 in the denominator) is 20,875.
    assert!((r.m2 / 499.0 - 20_875.0).abs() < 1e-6, "{}", r.m2);

    // Published to the coordinator within seconds.
    let published = wait_for("the counts to be published", || {
        futures::executor::block_on(c.tallies("offer"))
            .ok()
            .filter(|t| t.len() == 1 && outcomes(&t[0], 1).0 == 500)
    })
    .await;
    assert_eq!(published[0].versions, t.versions);

    // Flushed as Parquet, partitioned by hour (the outcomes span two), once.
    let dir = root.join("events/node-1");
    wait_for("the segments to be flushed", || {
        (segments_left(&dir) == 0 && parquet_rows(root, "offer").0 == 1_800).then_some(())
    })
    .await;
    let (_, files) = parquet_rows(root, "offer");
    assert!(
        files
            .iter()
            .any(|f| f.contains("hour=2023-11-14T22/node-1-"))
            && files
                .iter()
                .any(|f| f.contains("hour=2023-11-14T23/node-1-")),
        "{files:?}"
    );

    // A restart (under another id: the node takes over its old log) rebuilds the
    // counts; a torn segment left by a crash counts nothing.
    log.shut_down().await;
    drop(log);
    std::fs::write(dir.join("wal-000000000999.log"), [7, 0, 0, 0, 1, 2]).unwrap();
    let log = EventLog::open(&root.join("events"), "node-9", store(root), c.clone()).unwrap();
    assert_eq!(log.node(), "node-1");
    let again = log.tally("offer").unwrap();
    assert_eq!(again.versions, t.versions);
    log.append(vec![Event::outcome(
        "offer",
        1,
        "",
        CONVERSION,
        1.0,
        1_700_000_000_000,
    )])
    .await
    .unwrap();
    assert_eq!(outcomes(&log.tally("offer").unwrap(), 1), (501, 101.0));
    wait_for("the new event to be flushed", || {
        (segments_left(&dir) == 0 && parquet_rows(root, "offer").0 == 1_801).then_some(())
    })
    .await;

    // A second log under the same folder in the same process takes another folder.
    let other = EventLog::open(&root.join("events"), "node-1", store(root), c).unwrap();
    assert_ne!(other.node(), "node-1");
    assert!(other.tally("offer").is_none());
}
