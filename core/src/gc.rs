//! Garbage collection of the object store: folders no record references any more.
//!
//! | what | garbage when |
//! |---|---|
//! | `models/<name>/<version>/` | the coordinator issued that version number but never registered it (a publish whose job lost its task: the orphan a zombie executor leaves) |
//! | `jobs/<job>/checkpoint/` | the job ended and nothing can resume from it: it succeeded, or it failed or was cancelled and is not among the [`GcPolicy::keep_checkpoints`] newest such; no unfinished job resumes from it; its search (if it is a trial) ended |
//! | `jobs/<job>/features/` | the job ended more than [`GcPolicy::keep_features`] ago, no unfinished job reads it, and it is not a kept checkpoint's (a resumed job reads its table) |
//!
//! Nothing written within [`GcPolicy::grace`] is touched, whatever the records say, and
//! nothing the coordinator has no record of at all: a folder of a job it never knew, or a
//! version of a model whose counter never issued it, belongs to another cluster sharing
//! the store or to a coordinator that lost its state, and stays. Model versions, audiences,
//! scores and the event log are kept.
//!
//! [`plan`] decides from a listing and the records alone (unit-tested); [`find`] reads
//! them, [`collect`] deletes. The leader runs both periodically; `halyard gc` on demand.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;

use crate::coord::Coordinator;
use crate::error::Result;
use crate::records::{JobRecord, JobState};
use crate::store::{JOBS_DIR, Listed, MODELS_DIR, Owner, Store, owner_of};

/// What may be collected, and how young is too young.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GcPolicy {
    /// Nothing written more recently than this is collected.
    pub grace: Duration,
    /// Failed or cancelled jobs whose checkpoints (and feature tables) are kept for
    /// `halyard resume`, newest first.
    pub keep_checkpoints: usize,
    /// How long an ended job's feature table is kept; `None`: for ever.
    pub keep_features: Option<Duration>,
}

/// Default grace, minutes.
pub const DEFAULT_GC_GRACE_MINS: u64 = 60;
/// Default failed or cancelled jobs whose checkpoints are kept.
pub const DEFAULT_KEEP_CHECKPOINTS: u32 = 5;
/// Default days an ended job's feature table is kept.
pub const DEFAULT_KEEP_FEATURE_DAYS: u32 = 7;
/// Default hours between the leader's collections.
pub const DEFAULT_GC_HOURS: u64 = 1;

impl GcPolicy {
    /// The policy of the settings `gc_grace_mins`, `keep_checkpoints` and
    /// `keep_feature_days` (0: for ever).
    pub fn new(grace_mins: u64, keep_checkpoints: u32, keep_feature_days: u32) -> GcPolicy {
        GcPolicy {
            grace: Duration::from_secs(grace_mins * 60),
            keep_checkpoints: keep_checkpoints as usize,
            keep_features: (keep_feature_days > 0)
                .then(|| Duration::from_secs(u64::from(keep_feature_days) * 86_400)),
        }
    }
}

impl Default for GcPolicy {
    fn default() -> Self {
        GcPolicy::new(
            DEFAULT_GC_GRACE_MINS,
            DEFAULT_KEEP_CHECKPOINTS,
            DEFAULT_KEEP_FEATURE_DAYS,
        )
    }
}

/// Why a folder is garbage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GarbageKind {
    /// A model version folder whose number was issued but never registered.
    UnregisteredVersion,
    /// The checkpoint of a job nothing can resume any more.
    EndedJobCheckpoint,
    /// The feature table of a job that ended long enough ago.
    EndedJobFeatures,
}

impl GarbageKind {
    /// In words.
    pub fn as_str(self) -> &'static str {
        match self {
            GarbageKind::UnregisteredVersion => "unregistered version",
            GarbageKind::EndedJobCheckpoint => "checkpoint of an ended job",
            GarbageKind::EndedJobFeatures => "feature table of an ended job",
        }
    }
}

/// One folder to collect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Garbage {
    /// Why.
    pub kind: GarbageKind,
    /// The folder, relative to the store's base.
    pub folder: String,
    /// Its objects.
    pub objects: Vec<String>,
    /// Their bytes.
    pub bytes: u64,
}

/// What the records say about the store's folders.
#[derive(Debug, Clone, Default)]
pub struct Refs {
    /// Per model name, the version numbers issued so far (1 to this) and those registered.
    pub models: BTreeMap<String, (u64, BTreeSet<u64>)>,
    /// Every job the coordinator knows.
    pub jobs: Vec<JobRecord>,
}

/// The folders of `objects` that are garbage under `policy` at `now_ms`, by kind and
/// folder.
pub fn plan(objects: &[Listed], refs: &Refs, policy: &GcPolicy, now_ms: i64) -> Vec<Garbage> {
    let grace_ms = policy.grace.as_millis() as i64;
    let jobs: BTreeMap<&str, &JobRecord> = refs.jobs.iter().map(|j| (j.id.as_str(), j)).collect();
    // Jobs whose checkpoint and feature table something may still read.
    let mut resumable: BTreeSet<&str> = BTreeSet::new();
    let mut tables_read: BTreeSet<&str> = BTreeSet::new();
    let mut ended_resumable: Vec<&JobRecord> = Vec::new();
    for j in &refs.jobs {
        if !j.state.is_terminal() {
            resumable.extend(j.spec.train.resume_from.as_deref());
            tables_read.extend(j.spec.features.as_ref().and_then(|f| f.table_of.as_deref()));
        } else if matches!(j.state, JobState::Failed | JobState::Cancelled) {
            ended_resumable.push(j);
        }
        // A trial's next rung resumes from it while its search runs.
        let search_runs = j
            .parent
            .as_deref()
            .and_then(|p| jobs.get(p))
            .is_some_and(|p| !p.state.is_terminal());
        if search_runs {
            resumable.insert(&j.id);
        }
    }
    ended_resumable.sort_by_key(|j| std::cmp::Reverse(j.updated_ms));
    for j in ended_resumable.iter().take(policy.keep_checkpoints) {
        resumable.insert(&j.id);
        tables_read.insert(
            j.spec
                .features
                .as_ref()
                .and_then(|f| f.table_of.as_deref())
                .unwrap_or(&j.id),
        );
    }

    // Objects by the folder they would be collected with.
    let mut folders: BTreeMap<(GarbageKind, String), Vec<&Listed>> = BTreeMap::new();
    for o in objects {
        let Some(owner) = owner_of(&o.rel) else {
            continue;
        };
        let kind = match owner {
            Owner::Version { name, version } => {
                let Some((issued, registered)) = refs.models.get(name) else {
                    continue;
                };
                if version > *issued || registered.contains(&version) {
                    continue;
                }
                GarbageKind::UnregisteredVersion
            }
            Owner::Checkpoint { job } | Owner::Features { job } => {
                let Some(j) = jobs.get(job) else { continue };
                if !j.state.is_terminal() || now_ms - j.updated_ms < grace_ms {
                    continue;
                }
                if let Owner::Checkpoint { .. } = owner {
                    if resumable.contains(job) {
                        continue;
                    }
                    GarbageKind::EndedJobCheckpoint
                } else {
                    let Some(keep) = policy.keep_features else {
                        continue;
                    };
                    if tables_read.contains(job) || now_ms - j.updated_ms < keep.as_millis() as i64
                    {
                        continue;
                    }
                    GarbageKind::EndedJobFeatures
                }
            }
        };
        let key = (kind, owner.folder());
        folders.entry(key).or_default().push(o);
    }
    folders
        .into_iter()
        .filter(|(_, objects)| objects.iter().all(|o| now_ms - o.modified_ms >= grace_ms))
        .map(|((kind, folder), objects)| Garbage {
            kind,
            folder,
            bytes: objects.iter().map(|o| o.size).sum(),
            objects: objects.iter().map(|o| o.rel.clone()).collect(),
        })
        .collect()
}

/// The garbage in `store` under `policy`, from the coordinator's records.
pub async fn find(coord: &Coordinator, store: &Store, policy: &GcPolicy) -> Result<Vec<Garbage>> {
    let mut objects = store.list(MODELS_DIR).await?;
    let model_names: BTreeSet<String> = objects
        .iter()
        .filter_map(|o| match owner_of(&o.rel) {
            Some(Owner::Version { name, .. }) => Some(name.to_string()),
            _ => None,
        })
        .collect();
    let mut refs = Refs::default();
    for name in model_names {
        let issued = coord.issued_model_versions(&name).await?;
        let registered = coord
            .model_versions(&name)
            .await?
            .into_iter()
            .map(|v| v.version)
            .collect();
        refs.models.insert(name, (issued, registered));
    }
    refs.jobs = coord
        .list_jobs()
        .await?
        .into_iter()
        .map(|j| j.value)
        .collect();
    objects.extend(store.list(JOBS_DIR).await?);
    Ok(plan(&objects, &refs, policy, crate::records::now_ms()))
}

/// Find the garbage and, unless `dry_run`, delete it; returns what was found.
pub async fn run(
    coord: &Coordinator,
    store: &Store,
    policy: &GcPolicy,
    dry_run: bool,
) -> Result<Vec<Garbage>> {
    let garbage = find(coord, store, policy).await?;
    if !dry_run && !garbage.is_empty() {
        let done = collect(store, &garbage).await?;
        tracing::info!(
            folders = done.folders,
            objects = done.objects,
            bytes = done.bytes,
            store = %store.url(),
            "garbage collection done"
        );
    }
    Ok(garbage)
}

/// What a collection removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Collected {
    /// Folders.
    pub folders: usize,
    /// Objects.
    pub objects: usize,
    /// Bytes.
    pub bytes: u64,
}

/// Delete every object of `garbage`.
pub async fn collect(store: &Store, garbage: &[Garbage]) -> Result<Collected> {
    let mut done = Collected::default();
    for g in garbage {
        for o in &g.objects {
            store.delete(o).await?;
            done.objects += 1;
        }
        done.folders += 1;
        done.bytes += g.bytes;
        tracing::info!(kind = g.kind.as_str(), folder = %g.folder, bytes = g.bytes, "garbage collected");
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::JobSpec;

    const HOUR: i64 = 3_600_000;
    const NOW: i64 = 1_000 * HOUR;

    fn job(id: &str, state: JobState, ended_hours_ago: i64) -> JobRecord {
        let spec = JobSpec::from_toml(
            "name = \"m\"\n[data]\nsource = \"x.csv\"\nlabel = \"y\"\n",
            id,
        )
        .unwrap();
        let mut j = JobRecord::new(id.to_string(), spec);
        j.state = state;
        j.updated_ms = NOW - ended_hours_ago * HOUR;
        j
    }

    fn object(rel: &str, written_hours_ago: i64) -> Listed {
        Listed {
            rel: rel.to_string(),
            size: 10,
            modified_ms: NOW - written_hours_ago * HOUR,
        }
    }

    fn folders(g: &[Garbage]) -> Vec<(GarbageKind, &str)> {
        g.iter().map(|g| (g.kind, g.folder.as_str())).collect()
    }

    #[test]
    fn unregistered_versions_go_when_old_and_issued_and_nothing_unknown_goes() {
        let mut refs = Refs::default();
        refs.models
            .insert("m".into(), (4, [1, 2, 4].into_iter().collect()));
        let objects = [
            object("models/m/1/manifest.json", 5),
            object("models/m/3/model.safetensors", 5), // issued, never registered: garbage
            object("models/m/4/model.safetensors", 5),
            object("models/m/5/model.safetensors", 5), // never issued: another cluster's
            object("models/other/1/model.safetensors", 5), // a model this one never had
            object("models/m/x/model.safetensors", 5),
        ];
        let g = plan(&objects, &refs, &GcPolicy::default(), NOW);
        assert_eq!(
            folders(&g),
            vec![(GarbageKind::UnregisteredVersion, "models/m/3")]
        );
        assert_eq!((g[0].bytes, g[0].objects.len()), (10, 1));
        // The same orphan written 30 minutes ago is within the grace.
        let young = [object("models/m/3/model.safetensors", 0)];
        assert!(plan(&young, &refs, &GcPolicy::default(), NOW).is_empty());
    }

    #[test]
    fn checkpoints_go_when_nothing_can_resume_from_them() {
        let policy = GcPolicy {
            keep_checkpoints: 1,
            ..GcPolicy::default()
        };
        let mut resumer = job("resumer", JobState::Running, 0);
        resumer.spec.train.resume_from = Some("failed-old".into());
        let mut trial = job("trial", JobState::Succeeded, 3);
        trial.parent = Some("search".into());
        let mut ended_trial = job("ended-trial", JobState::Succeeded, 3);
        ended_trial.parent = Some("ended-search".into());
        let refs = Refs {
            models: BTreeMap::new(),
            jobs: vec![
                job("done", JobState::Succeeded, 2),
                job("just-done", JobState::Succeeded, 0),
                job("failed-new", JobState::Failed, 2),
                job("failed-mid", JobState::Cancelled, 3),
                job("failed-old", JobState::Failed, 4),
                job("running", JobState::Running, 5),
                job("search", JobState::Running, 5),
                job("ended-search", JobState::Succeeded, 2),
                resumer,
                trial,
                ended_trial,
            ],
        };
        let ids = [
            "done",
            "just-done",
            "failed-new",
            "failed-mid",
            "failed-old",
            "running",
            "trial",
            "ended-trial",
            "unknown",
        ];
        let objects: Vec<Listed> = ids
            .iter()
            .map(|id| object(&format!("jobs/{id}/checkpoint/latest.ckpt"), 5))
            .collect();
        let g = plan(&objects, &refs, &policy, NOW);
        assert_eq!(
            folders(&g),
            vec![
                (GarbageKind::EndedJobCheckpoint, "jobs/done/checkpoint"),
                (
                    GarbageKind::EndedJobCheckpoint,
                    "jobs/ended-trial/checkpoint"
                ),
                (
                    GarbageKind::EndedJobCheckpoint,
                    "jobs/failed-mid/checkpoint"
                ),
            ],
            "kept: the one newest failed job, one an unfinished job resumes from, a running \
             search's trial, a job within the grace, a running job, a job never known"
        );
    }

    #[test]
    fn feature_tables_go_after_their_retention_unless_something_reads_them() {
        let mut reader = job("reader", JobState::Pending, 0);
        reader.spec.features =
            Some(toml::from_str("sources = []\nsql = \"SELECT 1\"\ntable_of = \"read\"").unwrap());
        let refs = Refs {
            models: BTreeMap::new(),
            jobs: vec![
                job("old", JobState::Succeeded, 24 * 8),
                job("recent", JobState::Succeeded, 24 * 6),
                job("read", JobState::Succeeded, 24 * 8),
                job("resumable", JobState::Failed, 24 * 8),
                reader,
            ],
        };
        let objects: Vec<Listed> = ["old", "recent", "read", "resumable"]
            .iter()
            .flat_map(|id| {
                [
                    object(&format!("jobs/{id}/features/part-00000.parquet"), 24 * 8),
                    object(&format!("jobs/{id}/features/features.json"), 24 * 8),
                    object(&format!("jobs/{id}/scores/part-00000.parquet"), 24 * 8),
                ]
            })
            .collect();
        let g = plan(&objects, &refs, &GcPolicy::default(), NOW);
        assert_eq!(
            folders(&g),
            vec![(GarbageKind::EndedJobFeatures, "jobs/old/features")]
        );
        assert_eq!(g[0].objects.len(), 2, "scores are output: kept");
        let forever = GcPolicy {
            keep_features: None,
            ..GcPolicy::default()
        };
        assert!(plan(&objects, &refs, &forever, NOW).is_empty());
    }
}
