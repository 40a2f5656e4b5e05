//! The drift monitor's report: every executor's last whole window of a model's inputs,
//! merged per version, scored against the training data
//! ([`halyard_models::drift`]). `GET /v1/drift/{name}`, `ModelService/Drift` and
//! `halyard monitor NAME` show it.

use std::collections::BTreeMap;

use halyard_core::coord::Coordinator;
use halyard_models::drift::{self, ColumnDrift, Window};
use serde::Serialize;

use crate::api::ApiError;

/// One version's drift.
#[derive(Debug, Clone, Serialize)]
pub struct VersionDrift {
    /// The version.
    pub version: u64,
    /// Executors whose windows were merged.
    pub executors: Vec<String>,
    /// Records in the merged windows.
    pub rows: u64,
    /// When the newest of them closed, ms since the epoch.
    pub closed_ms: i64,
    /// Per input column, its score; the flagged ones first.
    pub features: Vec<ColumnDrift>,
}

/// A model's drift report.
#[derive(Debug, Clone, Serialize)]
pub struct DriftReport {
    /// The model.
    pub model: String,
    /// Records per executor window.
    pub window: u64,
    /// The score that flags drift.
    pub threshold: f64,
    /// Versions with at least one whole window.
    pub versions: Vec<VersionDrift>,
}

/// The report of model `name` from the windows in the coordinator.
pub async fn report(coord: &Coordinator, name: &str) -> Result<DriftReport, ApiError> {
    let mut merged: BTreeMap<u64, (Window, Vec<String>, i64)> = BTreeMap::new();
    for w in coord.drift_windows(name).await? {
        let window: Window = serde_json::from_value(w.window).map_err(|e| {
            ApiError::internal(format!(
                "executor {}'s drift window of {name} version {} does not decode: {e}",
                w.executor, w.version
            ))
        })?;
        match merged.get_mut(&w.version) {
            Some((into, executors, closed)) => {
                // Windows over another reference cannot be summed: the version was
                // published again under the same number, which the registry forbids.
                if into.merge(&window) {
                    executors.push(w.executor);
                    *closed = (*closed).max(w.closed_ms);
                }
            }
            None => {
                merged.insert(w.version, (window, vec![w.executor], w.closed_ms));
            }
        }
    }
    let versions = merged
        .into_iter()
        .map(|(version, (window, executors, closed_ms))| {
            let mut features = window.scores();
            features.sort_by(|a, b| b.drifted.cmp(&a.drifted).then(b.score.total_cmp(&a.score)));
            VersionDrift {
                version,
                executors,
                rows: window.rows,
                closed_ms,
                features,
            }
        })
        .collect();
    Ok(DriftReport {
        model: name.to_string(),
        window: drift::WINDOW,
        threshold: drift::THRESHOLD,
        versions,
    })
}
