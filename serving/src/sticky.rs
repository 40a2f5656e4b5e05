//! Sticky assignments while a bandit runs: a key stays on the version it first got, though
//! the leader re-weighs the split.
//!
//! A key's first prediction under a bandit takes its variant by hashing into the current
//! weights (as any split does); the node remembers it and, within [`SYNC_EVERY`], records
//! it in the coordinator (`sticky/<model>/<versions>/<node>/<n>`, a batch per node and
//! interval; `<versions>` names the bandit's arms, `3-4-5`, so a bandit over other
//! versions starts afresh).
//! Every node serving or taking feedback for the model reads every node's records (woken
//! by a watch, and at least every [`SYNC_EVERY`]); a key recorded twice (two nodes took it
//! at once) keeps the version of the earlier record, by the coordinator's revision, on
//! every node. Outcomes fed back by key are credited to the key's sticky version. The
//! leader deletes a model's records once its bandit has ended; nodes then forget them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use halyard_core::coord::Coordinator;
use halyard_core::registry::{BanditPolicy, DeploymentState, StickyBatch, StickyRecord};
use tracing::warn;

/// Longest a new assignment waits to be recorded, and between two reads of the records.
pub const SYNC_EVERY: Duration = Duration::from_millis(500);

/// Revision of an assignment made here and not yet read back from the coordinator.
const UNRECORDED: i64 = i64::MAX;

/// One bandit's assignments as this node knows them.
#[derive(Debug, Default)]
struct Assignments {
    /// Key → (version, revision of the record that gave it).
    by_key: HashMap<String, (u64, i64)>,
    /// Records merged so far.
    merged: HashSet<String>,
    /// Assignments made here since the last record was written.
    pending: Vec<(String, u64)>,
}

impl Assignments {
    /// Merge `records` (every record of the model): the earlier record of a key wins. When
    /// a record merged before is gone (the bandit ended and the leader cleared them), start
    /// over from these.
    fn merge(&mut self, records: &[StickyRecord]) {
        let present: HashSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
        if self.merged.iter().any(|id| !present.contains(id.as_str())) {
            self.merged.clear();
            self.by_key
                .retain(|_, (_, revision)| *revision == UNRECORDED);
        }
        for r in records {
            if !self.merged.insert(r.id.clone()) {
                continue;
            }
            for (key, &version) in r.batch.keys.iter().zip(&r.batch.versions) {
                match self.by_key.get(key) {
                    Some((_, known)) if *known <= r.revision => {}
                    _ => {
                        self.by_key.insert(key.clone(), (version, r.revision));
                    }
                }
            }
        }
    }
}

/// Where a bandit's assignments live: the model and the bandit's versions (`offer/3-4-5`;
/// a model's name has no `/`, so the leader's clearing of `sticky/<model>/` takes them
/// all).
fn scope(model: &str, bandit: &BanditPolicy) -> String {
    let versions: Vec<String> = bandit.versions.iter().map(u64::to_string).collect();
    format!("{model}/{}", versions.join("-"))
}

/// A node's sticky assignments (see the module documentation).
#[derive(Debug)]
pub struct Sticky {
    node: String,
    coord: Coordinator,
    models: Mutex<HashMap<String, Assignments>>,
    /// Number of this node's next record.
    seq: AtomicU64,
}

impl Sticky {
    /// Node `node`'s assignments, recorded in `coord` and kept in step with every node's
    /// by a task that ends when they are dropped (call within a Tokio runtime).
    pub fn new(node: &str, coord: Coordinator) -> Arc<Sticky> {
        let sticky = Arc::new(Sticky {
            node: node.to_string(),
            coord,
            models: Mutex::new(HashMap::new()),
            // Numbers from the clock: a restarted node does not reuse its old records' names.
            seq: AtomicU64::new(halyard_core::records::now_ms().max(0) as u64 * 1000),
        });
        tokio::spawn(keep_in_step(Arc::downgrade(&sticky)));
        sticky
    }

    /// The version that serves `key` of `model` under `state`: while a bandit runs, the
    /// one the key got first (while still one of the bandit's), else its variant by hash.
    pub fn assign(&self, model: &str, key: &str, state: &DeploymentState) -> Option<u64> {
        let Some(bandit) = &state.bandit else {
            return state.variant_for(key);
        };
        let mut models = self.models.lock().expect("sticky lock");
        let a = models.entry(scope(model, bandit)).or_default();
        if let Some((version, _)) = a.by_key.get(key)
            && bandit.versions.contains(version)
        {
            return Some(*version);
        }
        let version = state.variant_for(key)?;
        a.by_key.insert(key.to_string(), (version, UNRECORDED));
        a.pending.push((key.to_string(), version));
        Some(version)
    }

    /// The version `key` of `model` was given while a bandit runs under `state` (what an
    /// outcome fed back by key credits), else its variant by hash. A model this node
    /// has not followed yet is read from the records first.
    pub async fn credit(
        &self,
        model: &str,
        key: &str,
        state: &DeploymentState,
    ) -> halyard_core::Result<Option<u64>> {
        let Some(bandit) = &state.bandit else {
            return Ok(state.variant_for(key));
        };
        let scope = scope(model, bandit);
        let followed = self
            .models
            .lock()
            .expect("sticky lock")
            .contains_key(&scope);
        if !followed {
            let records = self.coord.sticky(&scope).await?;
            let mut models = self.models.lock().expect("sticky lock");
            models.entry(scope.clone()).or_default().merge(&records);
        }
        let models = self.models.lock().expect("sticky lock");
        Ok(models
            .get(&scope)
            .and_then(|a| a.by_key.get(key))
            .map(|(version, _)| *version)
            .or_else(|| state.variant_for(key)))
    }

    /// Record this node's new assignments and read every node's.
    pub async fn sync(&self) -> halyard_core::Result<()> {
        let (pending, models): (Vec<(String, StickyBatch)>, Vec<String>) = {
            let mut models = self.models.lock().expect("sticky lock");
            let pending = models
                .iter_mut()
                .filter(|(_, a)| !a.pending.is_empty())
                .map(|(m, a)| {
                    let (keys, versions) = std::mem::take(&mut a.pending).into_iter().unzip();
                    (m.clone(), StickyBatch { keys, versions })
                })
                .collect();
            (pending, models.keys().cloned().collect())
        };
        let mut failed = None;
        for (model, batch) in pending {
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = self.coord.put_sticky(&model, &self.node, seq, &batch).await {
                // Kept for the next try.
                let mut models = self.models.lock().expect("sticky lock");
                let a = models.entry(model).or_default();
                a.pending.extend(batch.keys.into_iter().zip(batch.versions));
                failed = Some(e);
            }
        }
        for model in models {
            let records = self.coord.sticky(&model).await?;
            let mut models = self.models.lock().expect("sticky lock");
            let a = models.entry(model.clone()).or_default();
            a.merge(&records);
            if records.is_empty() && a.by_key.is_empty() {
                models.remove(&model);
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

/// Keep `sticky` in step while it lives: after every write to the records, and at least
/// every [`SYNC_EVERY`].
async fn keep_in_step(sticky: Weak<Sticky>) {
    let Some(wake) = sticky.upgrade().map(|s| s.coord.sticky_wake()) else {
        return;
    };
    loop {
        tokio::select! {
            _ = wake.changed() => {}
            _ = tokio::time::sleep(SYNC_EVERY) => {}
        }
        let Some(s) = sticky.upgrade() else { return };
        if let Err(e) = s.sync().await {
            warn!(node = %s.node, error = %e, "sticky assignments not in step; retrying");
        }
        drop(s);
        // Writes come in bursts: take them together.
        tokio::time::sleep(SYNC_EVERY / 5).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, revision: i64, pairs: &[(&str, u64)]) -> StickyRecord {
        StickyRecord {
            id: id.into(),
            revision,
            batch: StickyBatch {
                keys: pairs.iter().map(|(k, _)| k.to_string()).collect(),
                versions: pairs.iter().map(|(_, v)| *v).collect(),
            },
        }
    }

    /// A split of `versions`, equal weights, under a bandit over them.
    fn bandit(versions: &[u64]) -> DeploymentState {
        DeploymentState {
            variants: versions
                .iter()
                .map(|&version| halyard_core::registry::Variant { version, weight: 1 })
                .collect(),
            bandit: Some(BanditPolicy {
                versions: versions.to_vec(),
                floor_bp: 100,
                every_secs: 60,
            }),
            ..DeploymentState::default()
        }
    }

    #[tokio::test]
    async fn keys_keep_their_version_across_nodes_and_a_bandit_over_other_versions_starts_afresh() {
        let coord = Coordinator::new(
            Arc::new(halyard_core::kv::EmbeddedKv::new()),
            "/sticky-test",
        );
        let (a, b) = (
            Sticky::new("a", coord.clone()),
            Sticky::new("b", coord.clone()),
        );
        let keys: Vec<String> = (0..50).map(|i| format!("k{i}")).collect();
        let first: Vec<u64> = keys
            .iter()
            .map(|k| a.assign("m", k, &bandit(&[1, 2])).unwrap())
            .collect();
        a.sync().await.unwrap();
        // Node b, under weights that would send every key to version 2, keeps them.
        let mut moved = bandit(&[1, 2]);
        moved.variants[0].weight = 0;
        for (k, v) in keys.iter().zip(&first) {
            assert_eq!(b.credit("m", k, &moved).await.unwrap(), Some(*v));
            assert_eq!(b.assign("m", k, &moved), Some(*v));
        }
        // A bandit over versions 2 and 3: a key first on version 1 takes a new version
        // once, and keeps it after the records are read again (the old record does not
        // win it back).
        let other = bandit(&[2, 3]);
        let i = first.iter().position(|v| *v == 1).unwrap();
        let new = a.assign("m", &keys[i], &other).unwrap();
        assert!(new == 2 || new == 3);
        a.sync().await.unwrap();
        b.sync().await.unwrap();
        assert_eq!(a.assign("m", &keys[i], &other), Some(new));
        assert_eq!(b.assign("m", &keys[i], &other), Some(new));
        assert!(a.models.lock().unwrap()["m/2-3"].pending.is_empty());
    }

    #[test]
    fn the_earlier_record_of_a_key_wins_in_any_order_and_a_cleared_model_starts_over() {
        let (early, late) = (
            record("a/1", 5, &[("k1", 1), ("k2", 2)]),
            record("b/1", 9, &[("k1", 2), ("k3", 3)]),
        );
        let mut one = Assignments::default();
        one.merge(&[early.clone(), late.clone()]);
        let mut other = Assignments::default();
        other.merge(std::slice::from_ref(&late));
        other.merge(&[late.clone(), early.clone()]);
        for a in [&one, &other] {
            assert_eq!(a.by_key["k1"].0, 1);
            assert_eq!(a.by_key["k2"].0, 2);
            assert_eq!(a.by_key["k3"].0, 3);
        }
        // A local assignment not yet recorded gives way to any record of the key.
        let mut local = Assignments::default();
        local.by_key.insert("k1".into(), (3, UNRECORDED));
        local.merge(std::slice::from_ref(&late));
        assert_eq!(local.by_key["k1"], (2, 9));
        // The records cleared: what was read is forgotten, unrecorded ones stay.
        local.by_key.insert("k9".into(), (1, UNRECORDED));
        local.merge(&[]);
        assert_eq!(local.by_key.len(), 1);
        assert_eq!(local.by_key["k9"].0, 1);
    }
}
