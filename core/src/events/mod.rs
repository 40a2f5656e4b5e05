//! The event log: exposures (a keyed prediction: which key saw which version) and
//! outcomes (`:feedback`: a metric's value for a key or version) of served models.
//!
//! Each node appends to a write-ahead log in its own folder under the data directory and
//! acknowledges an append once it is on disk (`fsync`; appends that arrive together share
//! one). Every [`ROTATE_EVERY`] the log moves to a new segment; a closed segment is
//! written to the object store as Parquet, one file per model and hour
//! ([`crate::store::events_file`], named after the node and segment, so a retried or
//! repeated flush rewrites the same file), then the node's checkpoint (the counts of
//! every flushed segment) is saved and the segment deleted. Counts per model, version and
//! metric are kept in memory, published to the coordinator every [`PUBLISH_EVERY`]
//! ([`crate::registry::NodeTally`]), and rebuilt at start from the checkpoint and the
//! segments not yet flushed.
//!
//! **Invariants.** An acknowledged event is in a synced segment or in a flushed Parquet
//! file and the checkpoint; it is counted once: a segment is either covered by the
//! checkpoint (then deleted, or deleted again at start) or replayed. A folder is used by
//! one process at a time (a lock on its `lock` file).

mod wal;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::coord::Coordinator;
use crate::error::{Error, Result};
use crate::registry::{NodeTally, VersionTally};
use crate::store::Store;

/// How long a segment takes appends before it is closed and flushed to Parquet (when it
/// holds any).
pub const ROTATE_EVERY: Duration = Duration::from_secs(2);
/// A segment is closed earlier at this size.
pub const SEGMENT_BYTES: u64 = 16 << 20;
/// How often a node publishes its counts to the coordinator.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(1);
/// Most events written by one `fsync`.
const BATCH_EVENTS: usize = 100_000;
/// The checkpoint's file in a log's folder.
const CHECKPOINT: &str = "checkpoint.json";

/// What an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A prediction served to a key.
    Exposure = 0,
    /// A metric's value fed back.
    Outcome = 1,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Exposure => "exposure",
            Kind::Outcome => "outcome",
        }
    }
}

/// One event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Exposure or outcome.
    pub kind: Kind,
    /// The model.
    pub model: String,
    /// The version that served (or was credited).
    pub version: u64,
    /// The request key (a customer id); empty when the caller named the version.
    pub key: String,
    /// The metric (`conversion`, `revenue`, …); empty for an exposure.
    pub metric: String,
    /// The metric's value (0 for an exposure).
    pub value: f64,
    /// When (ms since the epoch).
    pub time_ms: i64,
}

impl Event {
    /// `key` was served by `version` of `model`.
    pub fn exposure(model: &str, version: u64, key: &str, time_ms: i64) -> Event {
        Event {
            kind: Kind::Exposure,
            model: model.to_string(),
            version,
            key: key.to_string(),
            metric: String::new(),
            value: 0.0,
            time_ms,
        }
    }

    /// `metric` was `value` for `key` (or for the customer `version` served).
    pub fn outcome(
        model: &str,
        version: u64,
        key: &str,
        metric: &str,
        value: f64,
        time_ms: i64,
    ) -> Event {
        Event {
            kind: Kind::Outcome,
            model: model.to_string(),
            version,
            key: key.to_string(),
            metric: metric.to_string(),
            value,
            time_ms,
        }
    }
}

/// Counts per model and version.
type Counts = BTreeMap<String, BTreeMap<u64, VersionTally>>;

fn count(counts: &mut Counts, e: &Event) {
    let t = counts
        .entry(e.model.clone())
        .or_default()
        .entry(e.version)
        .or_default();
    match e.kind {
        Kind::Exposure => t.exposures += 1,
        Kind::Outcome => t.metrics.entry(e.metric.clone()).or_default().push(e.value),
    }
}

/// What the checkpoint file holds: the counts of every segment up to `upto`, flushed.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Checkpoint {
    upto: u64,
    counts: Counts,
}

/// One append on its way to the writer; `ack` (when someone waits) hears once it is on
/// disk, or why not.
struct Append {
    events: Vec<Event>,
    ack: Option<oneshot::Sender<std::result::Result<(), String>>>,
}

/// What the writer, the publisher and readers share.
struct Shared {
    node: String,
    dir: PathBuf,
    /// Counts of every acknowledged event.
    live: Mutex<Counts>,
    /// Models counted since the last publication.
    dirty: Mutex<BTreeSet<String>>,
}

/// A node's event log (see the module documentation).
pub struct EventLog {
    shared: Arc<Shared>,
    tx: Mutex<Option<Sender<Append>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    flusher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Held while this process uses the folder (the flusher holds it too, until it has
    /// flushed what it was given).
    _lock: File,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("node", &self.shared.node)
            .field("dir", &self.shared.dir)
            .finish()
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A folder name made of `name`'s letters, digits, `-`, `_` and `.`.
fn folder_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with('.') {
        format!("node{s}")
    } else {
        s
    }
}

/// Lock a log folder under `root`: `preferred`'s when it exists and is free, else another
/// existing one that is free (a node restarted under a new id takes over its old log),
/// else a new one.
fn claim(root: &Path, preferred: &str) -> Result<(PathBuf, File)> {
    std::fs::create_dir_all(root).map_err(io(root))?;
    let mine = root.join(folder_name(preferred));
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(io(root))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    candidates.sort_by_key(|p| (p != &mine, p.clone()));
    if !candidates.contains(&mine) {
        candidates.push(mine.clone());
    }
    let fresh = (2..)
        .map(|n| root.join(format!("{}-{n}", folder_name(preferred))))
        .find(|p| !p.exists())
        .expect("some name is free");
    candidates.push(fresh);
    for dir in candidates {
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        if lock.try_lock().is_ok() {
            return Ok((dir, lock));
        }
    }
    unreachable!("a fresh folder is always free")
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

fn read_checkpoint(dir: &Path) -> Result<Checkpoint> {
    let path = dir.join(CHECKPOINT);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
            key: path.display().to_string(),
            message: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Checkpoint::default()),
        Err(e) => Err(io(&path)(e)),
    }
}

/// Save the checkpoint whole or not at all (a file renamed into place, both synced).
fn write_checkpoint(dir: &Path, c: &Checkpoint) -> Result<()> {
    let tmp = dir.join(format!("{CHECKPOINT}.tmp"));
    let bytes = serde_json::to_vec(c).expect("counts serialise");
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(&bytes)
        .and_then(|_| f.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, dir.join(CHECKPOINT)).map_err(io(&tmp))?;
    sync_dir(dir)
}

/// The segments in `dir`, in order.
fn segments(dir: &Path) -> Result<Vec<u64>> {
    let mut out: Vec<u64> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok())
        .filter_map(|e| wal::segment_seq(e.file_name().to_str()?))
        .collect();
    out.sort_unstable();
    Ok(out)
}

/// A segment's intact events (a torn tail is cut off the file).
fn read_segment(dir: &Path, seq: u64) -> Result<Vec<Event>> {
    let path = wal::segment_path(dir, seq);
    let mut bytes = Vec::new();
    File::open(&path)
        .and_then(|f| {
            let len = f.metadata()?.len();
            std::io::Read::read_to_end(&mut std::io::Read::take(f, len), &mut bytes)
        })
        .map_err(io(&path))?;
    let (events, good) = wal::decode(&bytes);
    if good < bytes.len() {
        warn!(segment = %path.display(), bytes = bytes.len() - good, "cutting a torn tail off the event log (an append that was never acknowledged)");
        OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(good as u64).and_then(|_| f.sync_all()))
            .map_err(io(&path))?;
    }
    Ok(events)
}

impl EventLog {
    /// Open (or create) this node's log under `root` (`<data dir>/events`), rebuild its
    /// counts, and start flushing to `store` and publishing to `coord`. `preferred` (the
    /// node id) names the folder when it is free.
    pub fn open(
        root: &Path,
        preferred: &str,
        store: Store,
        coord: Coordinator,
    ) -> Result<Arc<EventLog>> {
        let (dir, lock) = claim(root, preferred)?;
        // The log's name is its folder's.
        let node = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let checkpoint = read_checkpoint(&dir)?;
        let mut live = checkpoint.counts.clone();
        let mut pending = Vec::new();
        let mut last = checkpoint.upto;
        for seq in segments(&dir)? {
            let path = wal::segment_path(&dir, seq);
            if seq <= checkpoint.upto {
                // Flushed and checkpointed; the delete did not happen.
                std::fs::remove_file(&path).map_err(io(&path))?;
                continue;
            }
            let events = read_segment(&dir, seq)?;
            for e in &events {
                count(&mut live, e);
            }
            pending.push(seq);
            last = last.max(seq);
        }
        info!(node = %node, dir = %dir.display(), replayed = pending.len(), "event log open");
        let dirty = live.keys().cloned().collect();
        let shared = Arc::new(Shared {
            node,
            dir: dir.clone(),
            live: Mutex::new(live),
            dirty: Mutex::new(dirty),
        });
        let (closed_tx, closed_rx) = mpsc::unbounded_channel();
        for seq in &pending {
            let _ = closed_tx.send(*seq);
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let writer = {
            let shared = shared.clone();
            let first = Segment::create(&dir, last + 1)?;
            std::thread::Builder::new()
                .name("event-log".into())
                .spawn(move || write_loop(shared, first, rx, closed_tx))
                .map_err(io(&dir))?
        };
        let held = lock.try_clone().map_err(io(&dir))?;
        let node = shared.node.clone();
        let flusher = tokio::spawn(async move {
            flush_loop(node, dir, store, checkpoint, closed_rx).await;
            drop(held);
        });
        tokio::spawn(publish_loop(Arc::downgrade(&shared), coord));
        Ok(Arc::new(EventLog {
            shared,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            flusher: Mutex::new(Some(flusher)),
            _lock: lock,
        }))
    }

    /// The log's name (its folder's), under which its counts are published.
    pub fn node(&self) -> &str {
        &self.shared.node
    }

    fn send(&self, a: Append) -> std::result::Result<(), String> {
        match &*self.tx.lock().expect("event log lock") {
            Some(tx) => tx
                .send(a)
                .map_err(|_| "the event log's writer stopped".to_string()),
            None => Err("the event log is closed".to_string()),
        }
    }

    /// Append `events` and return once they are on disk ([`Error::EventLog`] when they
    /// could not be written: nothing of them was kept, the caller may retry).
    pub async fn append(&self, events: Vec<Event>) -> Result<()> {
        let (ack, done) = oneshot::channel();
        let fail = |message: String| Error::EventLog {
            path: self.shared.dir.clone(),
            message,
        };
        self.send(Append {
            events,
            ack: Some(ack),
        })
        .map_err(fail)?;
        done.await
            .map_err(|_| fail("the event log's writer stopped".into()))?
            .map_err(fail)
    }

    /// Append `events` without waiting for the disk (exposures: the prediction does not
    /// wait; a crash may lose the last moment's).
    pub fn record(&self, events: Vec<Event>) {
        if let Err(e) = self.send(Append { events, ack: None }) {
            warn!(error = %e, "exposures not recorded");
        }
    }

    /// Count a prediction request that `version` of `model` answered (`ok`) or failed,
    /// and the time it took. Serving counts are kept in memory and published with the
    /// event counts, not logged: a restarted node counts them from zero.
    pub fn served(&self, model: &str, version: u64, ok: bool, took: Duration) {
        {
            let mut live = self.shared.live.lock().expect("counts lock");
            let t = match live.get_mut(model) {
                Some(versions) => versions.entry(version).or_default(),
                None => live
                    .entry(model.to_string())
                    .or_default()
                    .entry(version)
                    .or_default(),
            };
            t.requests += 1;
            t.errors += u64::from(!ok);
            t.latency
                .record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
        }
        let mut dirty = self.shared.dirty.lock().expect("dirty lock");
        if !dirty.contains(model) {
            dirty.insert(model.to_string());
        }
    }

    /// This node's counts for `model` as they stand (every acknowledged event).
    pub fn tally(&self, model: &str) -> Option<NodeTally> {
        tally_of(&self.shared, model)
    }

    /// Stop taking appends and wait until those taken are on disk.
    pub fn close(&self) {
        self.tx.lock().expect("event log lock").take();
        if let Some(w) = self.writer.lock().expect("event log lock").take() {
            let _ = w.join();
        }
    }

    /// [`close`](Self::close), then wait until every closed segment is flushed (the
    /// folder is free for another log once this returns).
    pub async fn shut_down(&self) {
        self.close();
        let flusher = self.flusher.lock().expect("event log lock").take();
        if let Some(f) = flusher {
            let _ = f.await;
        }
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        self.close();
    }
}

fn tally_of(shared: &Shared, model: &str) -> Option<NodeTally> {
    let live = shared.live.lock().expect("counts lock");
    live.get(model).map(|versions| NodeTally {
        node: shared.node.clone(),
        model: model.to_string(),
        updated_ms: crate::records::now_ms(),
        versions: versions.clone(),
    })
}

/// The open segment.
struct Segment {
    seq: u64,
    file: File,
    len: u64,
    opened: Instant,
}

impl Segment {
    fn create(dir: &Path, seq: u64) -> Result<Segment> {
        let path = wal::segment_path(dir, seq);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        let len = file.metadata().map_err(io(&path))?.len();
        sync_dir(dir)?;
        Ok(Segment {
            seq,
            file,
            len,
            opened: Instant::now(),
        })
    }
}

/// The writer thread: group commits until every sender is gone.
fn write_loop(
    shared: Arc<Shared>,
    mut seg: Segment,
    rx: Receiver<Append>,
    closed: mpsc::UnboundedSender<u64>,
) {
    let mut buf = Vec::new();
    loop {
        let first = match rx.recv_timeout(ROTATE_EVERY) {
            Ok(a) => Some(a),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if let Some(first) = first {
            let mut batch = vec![first];
            let mut n = batch[0].events.len();
            while n < BATCH_EVENTS {
                match rx.try_recv() {
                    Ok(a) => {
                        n += a.events.len();
                        batch.push(a);
                    }
                    Err(_) => break,
                }
            }
            commit(&shared, &mut seg, &mut buf, batch);
        }
        if seg.len > 0 && (seg.len >= SEGMENT_BYTES || seg.opened.elapsed() >= ROTATE_EVERY) {
            match Segment::create(&shared.dir, seg.seq + 1) {
                Ok(next) => {
                    let _ = closed.send(seg.seq);
                    seg = next;
                }
                Err(e) => {
                    warn!(error = %e, "cannot start a new event-log segment: appending to the old one")
                }
            }
        }
    }
    if seg.len > 0 {
        let _ = closed.send(seg.seq);
    }
}

/// Write one batch and sync it; count and acknowledge it, or cut it off again and say
/// why.
fn commit(shared: &Shared, seg: &mut Segment, buf: &mut Vec<u8>, batch: Vec<Append>) {
    buf.clear();
    for a in &batch {
        for e in &a.events {
            wal::encode(buf, e);
        }
    }
    let written = seg.file.write_all(buf).and_then(|_| seg.file.sync_data());
    let outcome = match written {
        Ok(()) => {
            seg.len += buf.len() as u64;
            let mut live = shared.live.lock().expect("counts lock");
            let mut dirty = shared.dirty.lock().expect("dirty lock");
            for a in &batch {
                for e in &a.events {
                    count(&mut live, e);
                    if !dirty.contains(&e.model) {
                        dirty.insert(e.model.clone());
                    }
                }
            }
            Ok(())
        }
        Err(e) => {
            // Nothing of a failed batch may stay: a replay would count what was refused.
            if let Err(cut) = seg.file.set_len(seg.len).and_then(|_| seg.file.sync_data()) {
                warn!(error = %cut, "cannot cut a failed append off the event log");
            }
            warn!(error = %e, events = batch.iter().map(|a| a.events.len()).sum::<usize>(), "event log append failed");
            Err(format!("cannot write the event log: {e}"))
        }
    };
    for a in batch {
        if let Some(ack) = a.ack {
            let _ = ack.send(outcome.clone());
        }
    }
}

/// Flush closed segments in order: Parquet files, then the checkpoint, then the delete.
/// A failed flush is retried (the same files are written again) until it succeeds.
async fn flush_loop(
    node: String,
    dir: PathBuf,
    store: Store,
    mut checkpoint: Checkpoint,
    mut closed: mpsc::UnboundedReceiver<u64>,
) {
    while let Some(seq) = closed.recv().await {
        let mut wait = Duration::from_millis(200);
        while let Err(e) = flush(&node, &dir, &store, seq, &mut checkpoint).await {
            warn!(segment = seq, error = %e, "event-log flush failed: retrying");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(30));
        }
    }
}

async fn flush(
    node: &str,
    dir: &Path,
    store: &Store,
    seq: u64,
    checkpoint: &mut Checkpoint,
) -> Result<()> {
    let path = wal::segment_path(dir, seq);
    if seq > checkpoint.upto {
        let events = read_segment(dir, seq)?;
        let mut files: BTreeMap<(String, String), Vec<&Event>> = BTreeMap::new();
        for e in &events {
            files
                .entry((e.model.clone(), hour_of(e.time_ms)))
                .or_default()
                .push(e);
        }
        for ((model, hour), events) in &files {
            let rel = crate::store::events_file(model, hour, node, seq);
            store.put(&rel, parquet_of(node, events, &rel)?).await?;
        }
        let mut next = Checkpoint {
            upto: seq,
            counts: checkpoint.counts.clone(),
        };
        for e in &events {
            count(&mut next.counts, e);
        }
        write_checkpoint(dir, &next)?;
        *checkpoint = next;
        tracing::debug!(
            segment = seq,
            events = events.len(),
            files = files.len(),
            "event-log segment flushed"
        );
    }
    std::fs::remove_file(&path).map_err(io(&path))
}

/// The hour an event belongs to, `YYYY-MM-DDTHH` (UTC).
fn hour_of(time_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(time_ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H")
        .to_string()
}

/// The Parquet columns of event files.
pub fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("kind", DataType::Utf8, false),
        Field::new("model", DataType::Utf8, false),
        Field::new("version", DataType::UInt64, false),
        Field::new("key", DataType::Utf8, true),
        Field::new("metric", DataType::Utf8, true),
        Field::new("value", DataType::Float64, true),
        Field::new(
            "time",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("node", DataType::Utf8, false),
    ]))
}

fn parquet_of(node: &str, events: &[&Event], origin: &str) -> Result<bytes::Bytes> {
    let text = |f: fn(&Event) -> Option<&str>| -> ArrayRef {
        Arc::new(events.iter().map(|e| f(e)).collect::<StringArray>())
    };
    let outcome = |e: &Event| e.kind == Kind::Outcome;
    let columns: Vec<ArrayRef> = vec![
        text(|e| Some(e.kind.as_str())),
        text(|e| Some(&e.model)),
        Arc::new(events.iter().map(|e| e.version).collect::<UInt64Array>()),
        text(|e| (!e.key.is_empty()).then_some(e.key.as_str())),
        text(|e| (e.kind == Kind::Outcome).then_some(e.metric.as_str())),
        Arc::new(
            events
                .iter()
                .map(|e| outcome(e).then_some(e.value))
                .collect::<Float64Array>(),
        ),
        Arc::new(
            TimestampMillisecondArray::from(events.iter().map(|e| e.time_ms).collect::<Vec<_>>())
                .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from(vec![node; events.len()])),
    ];
    let batch = RecordBatch::try_new(schema(), columns).map_err(|e| Error::Data {
        file: origin.to_string(),
        message: e.to_string(),
    })?;
    crate::data::write_parquet(schema(), &[batch], origin)
}

/// Publish the counts of models that changed, every [`PUBLISH_EVERY`], while the log
/// lives.
async fn publish_loop(shared: Weak<Shared>, coord: Coordinator) {
    loop {
        tokio::time::sleep(PUBLISH_EVERY).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let models = std::mem::take(&mut *shared.dirty.lock().expect("dirty lock"));
        for model in models {
            let Some(t) = tally_of(&shared, &model) else {
                continue;
            };
            if let Err(e) = coord.publish_tally(&t).await {
                warn!(model = %model, error = %e, "cannot publish event counts: retrying");
                shared.dirty.lock().expect("dirty lock").insert(model);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_append_is_refused_whole_and_counts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let shared = Shared {
            node: "n".into(),
            dir: dir.path().to_path_buf(),
            live: Mutex::default(),
            dirty: Mutex::default(),
        };
        // A full disk: every write fails with ENOSPC.
        let mut seg = Segment {
            seq: 1,
            file: OpenOptions::new().append(true).open("/dev/full").unwrap(),
            len: 0,
            opened: Instant::now(),
        };
        let (ack, mut heard) = oneshot::channel();
        let batch = vec![Append {
            events: vec![Event::outcome("m", 1, "k", "conversion", 1.0, 0)],
            ack: Some(ack),
        }];
        commit(&shared, &mut seg, &mut Vec::new(), batch);
        let err = heard.try_recv().unwrap().unwrap_err();
        assert!(err.contains("cannot write the event log"), "{err}");
        assert!(shared.live.lock().unwrap().is_empty());
        assert!(shared.dirty.lock().unwrap().is_empty());
        assert_eq!(seg.len, 0);
        let e = Error::EventLog {
            path: dir.path().into(),
            message: err,
        };
        assert!(e.failure().is_retryable(), "a full disk answers 503: {e}");
    }

    #[test]
    fn hours_are_utc() {
        assert_eq!(hour_of(1_700_000_000_000), "2023-11-14T22");
        assert_eq!(hour_of(0), "1970-01-01T00");
    }
}
