//! Where deployed models are served: each deployment on as many executors as its replica
//! count asks (every live executor when it asks none), each executor holding no more
//! models than its memory takes.
//!
//! The leader computes [`place`] on every pass from the deployments, the versions' sizes
//! and the live executors, and writes a [`Placement`] per deployed model when it changed;
//! an executor loads a deployed model only where a placement names it. An executor that
//! dies leaves its placements at its lease's end, and the next pass places its models on
//! others with room. Placement is per model (every version of its current traffic split
//! on the same executors), so a canary or a split is served wherever the model is.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A deployed model's place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The model.
    pub model: String,
    /// The executors that serve it, in the order they were chosen.
    pub executors: Vec<String>,
    /// The replicas it asked for (every live executor: their count then).
    pub wanted: u32,
    /// Memory its versions take on each executor, bytes.
    pub memory_bytes: u64,
}

impl Placement {
    /// Replicas it asked for and could not get (no executor with room).
    pub fn short(&self) -> u32 {
        self.wanted.saturating_sub(self.executors.len() as u32)
    }
}

/// What the leader places: a deployed model, its memory and replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demand {
    /// The model.
    pub model: String,
    /// Its current versions' memory together, bytes.
    pub memory_bytes: u64,
    /// Executors it should be served on; `None`: every one it fits on.
    pub replicas: Option<u32>,
}

/// A live executor and the memory it offers, bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Room {
    /// The executor.
    pub executor: String,
    /// Memory it offers models, bytes.
    pub memory_bytes: u64,
}

/// Place every demand: the largest first (so that small models fill what the large leave),
/// each on the executors with room that served it before, then on those with the most
/// room left (ties by id). Deterministic for the same inputs.
pub fn place(
    demands: &[Demand],
    executors: &[Room],
    before: &BTreeMap<String, Placement>,
) -> BTreeMap<String, Placement> {
    let mut free: BTreeMap<&str, u64> = executors
        .iter()
        .map(|e| (e.executor.as_str(), e.memory_bytes))
        .collect();
    let mut order: Vec<&Demand> = demands.iter().collect();
    order.sort_by(|a, b| {
        b.memory_bytes
            .cmp(&a.memory_bytes)
            .then_with(|| a.model.cmp(&b.model))
    });
    let mut out = BTreeMap::new();
    for d in order {
        let wanted = d
            .replicas
            .unwrap_or(executors.len() as u32)
            .min(executors.len() as u32);
        let held: Vec<&str> = before
            .get(&d.model)
            .map(|p| p.executors.iter().map(String::as_str).collect())
            .unwrap_or_default();
        let mut candidates: Vec<(&str, u64)> = free
            .iter()
            .filter(|(_, room)| **room >= d.memory_bytes)
            .map(|(id, room)| (*id, *room))
            .collect();
        candidates.sort_by(|a, b| {
            let (ha, hb) = (held.contains(&a.0), held.contains(&b.0));
            hb.cmp(&ha).then(b.1.cmp(&a.1)).then(a.0.cmp(b.0))
        });
        let chosen: Vec<String> = candidates
            .into_iter()
            .take(wanted as usize)
            .map(|(id, _)| id.to_string())
            .collect();
        for id in &chosen {
            if let Some(room) = free.get_mut(id.as_str()) {
                *room -= d.memory_bytes;
            }
        }
        out.insert(
            d.model.clone(),
            Placement {
                model: d.model.clone(),
                executors: chosen,
                wanted,
                memory_bytes: d.memory_bytes,
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn demand(model: &str, mib: u64, replicas: Option<u32>) -> Demand {
        Demand {
            model: model.into(),
            memory_bytes: mib * MIB,
            replicas,
        }
    }

    fn rooms(mib: &[(&str, u64)]) -> Vec<Room> {
        mib.iter()
            .map(|(id, m)| Room {
                executor: id.to_string(),
                memory_bytes: m * MIB,
            })
            .collect()
    }

    fn on(p: &BTreeMap<String, Placement>, model: &str) -> Vec<String> {
        p[model].executors.clone()
    }

    #[test]
    fn models_go_where_they_fit_as_many_times_as_asked() {
        let execs = rooms(&[("a", 1000), ("b", 1000), ("c", 300)]);
        let p = place(
            &[
                demand("big", 800, Some(2)),
                demand("small", 100, None),
                demand("huge", 5000, Some(1)),
            ],
            &execs,
            &BTreeMap::new(),
        );
        // The big model takes the two large executors; the small one fits on all three
        // (200 MiB left on a and b, 300 on c); the huge one fits nowhere.
        assert_eq!(on(&p, "big"), ["a", "b"]);
        let mut small = on(&p, "small");
        small.sort();
        assert_eq!(small, ["a", "b", "c"]);
        assert_eq!((p["small"].wanted, p["small"].short()), (3, 0));
        assert!(on(&p, "huge").is_empty());
        assert_eq!(p["huge"].short(), 1);
    }

    #[test]
    fn a_placement_stays_where_it_was_and_moves_when_its_executor_is_gone() {
        let demands = [demand("m", 100, Some(2))];
        let first = place(
            &demands,
            &rooms(&[("a", 500), ("b", 500), ("c", 900)]),
            &BTreeMap::new(),
        );
        // The most room first: c, then a (ties by id).
        assert_eq!(on(&first, "m"), ["c", "a"]);
        // Again with b now roomier: nothing moves.
        let again = place(
            &demands,
            &rooms(&[("a", 500), ("b", 2000), ("c", 900)]),
            &first,
        );
        assert_eq!(on(&again, "m"), ["c", "a"]);
        // a is gone: c stays, b takes a's replica.
        let after = place(&demands, &rooms(&[("b", 500), ("c", 900)]), &again);
        assert_eq!(on(&after, "m"), ["c", "b"]);
        // A model of unknown size (0 bytes) fits anywhere.
        let unknown = place(
            &[demand("old", 0, None)],
            &rooms(&[("a", 0), ("b", 10)]),
            &BTreeMap::new(),
        );
        assert_eq!(on(&unknown, "old").len(), 2);
    }
}
