//! Model versions, audiences, deployments, serving advertisements, the SQL endpoint and
//! outcomes: the coordinator's methods over `models/`, `audiences/`, `deployments/`,
//! `serving/`, `sql/` and `outcomes/`.

use super::{Coordinator, Edit, Leadership, Versioned, decode, encode, put};
use crate::error::{Error, Result};
use crate::kv::{Compare, TxnOp};
use crate::records::{TaskAssignment, TaskProgress};
use crate::registry::{
    AudienceVersion, Change, Deployment, DriftWindow, ModelVersion, NodeTally, Outcomes,
    PRODUCTION, ServingInfo, StickyBatch, StickyRecord,
};
use crate::spec::ScoreSpec;

impl Coordinator {
    // ---- models ------------------------------------------------------------------------

    /// Allocate the next version number of a model (1, 2, …): never the same twice.
    pub async fn next_model_version(&self, name: &str) -> Result<u64> {
        self.next_number(self.model_counter_key(name)).await
    }

    /// How many version numbers of a model were ever issued (registered or not): the
    /// numbers 1 to this one.
    pub async fn issued_model_versions(&self, name: &str) -> Result<u64> {
        let key = self.model_counter_key(name);
        match self.kv.get(&key).await? {
            None => Ok(0),
            Some(e) => Ok(counter(&key, &e.value)?.saturating_sub(1)),
        }
    }

    /// Allocate the next number of the counter at `key` (1, 2, …).
    async fn next_number(&self, key: String) -> Result<u64> {
        loop {
            let (current, revision) = match self.kv.get(&key).await? {
                Some(e) => (counter(&key, &e.value)?, e.mod_revision),
                None => (1, 0),
            };
            let out = self
                .cas(
                    &key,
                    revision,
                    vec![put(key.clone(), (current + 1).to_string().into_bytes())],
                )
                .await?;
            if out.succeeded {
                return Ok(current);
            }
        }
    }

    /// Register a published version, only while the task's assignment read at
    /// `assignment` stands ([`Error::Conflict`] otherwise), and only as its job's first:
    /// a job registers one version. When the job registered one before (an earlier run
    /// of the same attempt, whose report was lost with the coordinator), nothing is
    /// registered and that version is returned. With `report`, the task's progress report
    /// is written in the same transaction (its last, when publishing ends the task), and
    /// only when the version is registered.
    pub async fn register_version(
        &self,
        assignment: &Versioned<TaskAssignment>,
        version: &ModelVersion,
        report: Option<&TaskProgress>,
    ) -> Result<Option<ModelVersion>> {
        let task_key = self.task_key(&assignment.value.executor, &assignment.value.job_id);
        let marker = self.job_version_key(&version.name, &version.job_id);
        let when = vec![
            Compare::ModRevision {
                key: task_key.clone(),
                revision: assignment.revision,
            },
            Compare::ModRevision {
                key: marker.clone(),
                revision: 0,
            },
        ];
        let mut then = vec![
            put(
                self.version_key(&version.name, version.version),
                encode(version),
            ),
            put(marker, version.version.to_string().into_bytes()),
        ];
        then.extend(report.map(|p| put(self.progress_key(&p.job_id), encode(p))));
        if self.kv.txn(when, then).await?.succeeded {
            return Ok(None);
        }
        let stands = self
            .kv
            .get(&task_key)
            .await?
            .is_some_and(|e| e.mod_revision == assignment.revision);
        match self.version_of_job(&version.name, &version.job_id).await? {
            Some(earlier) if stands => Ok(Some(earlier)),
            _ => Err(Error::Conflict { key: task_key }),
        }
    }

    /// The version job `job_id` registered of model `name`, if it did.
    pub async fn version_of_job(&self, name: &str, job_id: &str) -> Result<Option<ModelVersion>> {
        let Some(text) = self.get_text(&self.job_version_key(name, job_id)).await? else {
            return Ok(None);
        };
        let number = text.trim().parse::<u64>().map_err(|e| Error::Corrupt {
            key: self.job_version_key(name, job_id),
            message: format!("not a version number ({e})"),
        })?;
        self.model_version(name, number).await
    }

    /// Allocate the next version number of an audience (1, 2, …).
    pub async fn next_audience_version(&self, name: &str) -> Result<u64> {
        self.next_number(self.key(&format!("audiences/{name}/next")))
            .await
    }

    /// Register an audience version, only while the task's assignment read at
    /// `assignment` stands ([`Error::Conflict`] otherwise).
    pub async fn register_audience(
        &self,
        assignment: &Versioned<TaskAssignment>,
        audience: &AudienceVersion,
    ) -> Result<()> {
        let key = self.key(&format!(
            "audiences/{}/versions/{:020}",
            audience.name, audience.version
        ));
        self.fenced_on_task(assignment, vec![put(key, encode(audience))])
            .await
    }

    /// An audience's versions, oldest first; every audience's with `name = None`.
    pub async fn audiences(&self, name: Option<&str>) -> Result<Vec<AudienceVersion>> {
        let prefix = match name {
            Some(n) => format!("audiences/{n}/versions/"),
            None => "audiences/".to_string(),
        };
        let mut out: Vec<AudienceVersion> = Vec::new();
        for e in self.kv.range(&self.key(&prefix)).await? {
            // (The counters sit beside the versions.)
            if e.key.contains("/versions/") {
                out.push(decode(&e)?.value);
            }
        }
        out.sort_by(|a, b| (&a.name, a.version).cmp(&(&b.name, b.version)));
        Ok(out)
    }

    /// The version a `[score]` section names: its `version`, the version behind its
    /// `alias`, or else production's, or else the latest. [`Error::Invalid`] names what
    /// is not registered.
    pub async fn resolve_model(&self, s: &ScoreSpec) -> Result<ModelVersion> {
        let name = &s.model;
        let not = |field: &str, value: String, rule: String| {
            Error::invalid("[score]", field, value, rule)
        };
        let by_alias = |d: &Option<Deployment>, a: &str| {
            d.as_ref().and_then(|d| d.current.aliases.get(a).copied())
        };
        let version = match (s.version, &s.alias) {
            (Some(v), _) => v,
            (None, Some(a)) => by_alias(&self.deployment(name).await?, a).ok_or_else(|| {
                not(
                    "alias",
                    format!("{a:?}"),
                    format!("model {name} has no version under that alias (halyard model {name} shows its aliases)"),
                )
            })?,
            (None, None) => match by_alias(&self.deployment(name).await?, PRODUCTION) {
                Some(v) => v,
                None => self
                    .model_versions(name)
                    .await?
                    .last()
                    .map(|v| v.version)
                    .ok_or_else(|| {
                        not(
                            "model",
                            format!("{name:?}"),
                            "no such model is registered (halyard models lists them)".into(),
                        )
                    })?,
            },
        };
        self.model_version(name, version).await?.ok_or_else(|| {
            not(
                "version",
                version.to_string(),
                format!("model {name} has no such version (halyard model {name} lists them)"),
            )
        })
    }

    /// A model's registered versions, oldest first.
    pub async fn model_versions(&self, name: &str) -> Result<Vec<ModelVersion>> {
        let mut out: Vec<ModelVersion> = self.values(&format!("models/{name}/versions/")).await?;
        out.sort_by_key(|v| v.version);
        Ok(out)
    }

    /// One registered version.
    pub async fn model_version(&self, name: &str, version: u64) -> Result<Option<ModelVersion>> {
        self.get_value(&self.version_key(name, version)).await
    }

    /// Names of the models with at least one registered version, sorted.
    pub async fn model_names(&self) -> Result<Vec<String>> {
        let prefix = self.key("models/");
        let mut names: Vec<String> = self
            .kv
            .range(&prefix)
            .await?
            .iter()
            .filter_map(|e| {
                let rest = &e.key[prefix.len()..];
                let (name, tail) = rest.split_once('/')?;
                tail.starts_with("versions/").then(|| name.to_string())
            })
            .collect();
        names.dedup();
        Ok(names)
    }

    /// A model's deployment, if it was ever deployed.
    pub async fn deployment(&self, name: &str) -> Result<Option<Deployment>> {
        self.get_value(&self.deployment_key(name)).await
    }

    /// Every deployment, by name.
    pub async fn deployments(&self) -> Result<Vec<Deployment>> {
        self.values("deployments/").await
    }

    /// Change a model's deployment (any scheduler): compare-and-swap, retrying lost
    /// races. Versions named by the change must be registered.
    pub async fn change_deployment(&self, name: &str, change: &Change) -> Result<Deployment> {
        let versions: Vec<u64> = self
            .model_versions(name)
            .await?
            .iter()
            .map(|v| v.version)
            .collect();
        if versions.is_empty() {
            return Err(Error::invalid(
                "deployment",
                "model",
                name,
                "no version of this model is registered (see `halyard models`)",
            ));
        }
        self.update(&self.deployment_key(name), |old: Option<Deployment>| {
            let old = old.unwrap_or_else(|| Deployment {
                name: name.to_string(),
                ..Deployment::default()
            });
            Ok(Edit::Write(old.apply(change, |v| versions.contains(&v))?))
        })
        .await
    }

    /// Publish what an executor serves, bound to its lease (it vanishes with the executor).
    pub async fn advertise_serving(&self, info: &ServingInfo, lease: i64) -> Result<()> {
        self.kv
            .txn(
                Vec::new(),
                vec![TxnOp::Put {
                    key: self.serving_key(&info.executor),
                    value: encode(info),
                    lease: Some(lease),
                }],
            )
            .await?;
        Ok(())
    }

    /// Advertise the leader's SQL (Ballista) scheduler endpoint, under the leader's lease
    /// and fenced on its leadership: it vanishes with the leader.
    pub async fn advertise_sql_endpoint(
        &self,
        leadership: &Leadership,
        endpoint: &str,
    ) -> Result<()> {
        let when = vec![Compare::ModRevision {
            key: self.leader_key(),
            revision: leadership.revision,
        }];
        let then = vec![TxnOp::Put {
            key: self.sql_endpoint_key(),
            value: endpoint.as_bytes().to_vec(),
            lease: Some(leadership.lease),
        }];
        if self.kv.txn(when, then).await?.succeeded {
            Ok(())
        } else {
            Err(Error::Fenced)
        }
    }

    /// Where each deployed model is served ([`crate::placement`]).
    pub async fn placements(&self) -> Result<Vec<crate::placement::Placement>> {
        self.values("placements/").await
    }

    /// Where deployed model `name` is served, if the leader placed it.
    pub async fn placement(&self, name: &str) -> Result<Option<crate::placement::Placement>> {
        self.get_value(&self.placement_key(name)).await
    }

    /// Write the placements that changed and delete those of models no longer deployed,
    /// while `leadership` stands ([`Error::Fenced`] otherwise).
    pub async fn set_placements(
        &self,
        leadership: &Leadership,
        changed: &[crate::placement::Placement],
        gone: &[String],
    ) -> Result<()> {
        let when = vec![Compare::ModRevision {
            key: self.leader_key(),
            revision: leadership.revision,
        }];
        let then = changed
            .iter()
            .map(|p| put(self.placement_key(&p.model), encode(p)))
            .chain(gone.iter().map(|m| TxnOp::Delete {
                key: self.placement_key(m),
            }))
            .collect();
        if self.kv.txn(when, then).await?.succeeded {
            Ok(())
        } else {
            Err(Error::Fenced)
        }
    }

    /// The SQL scheduler endpoint (`HOST:PORT`) of the current leader, if it runs one.
    pub async fn sql_endpoint(&self) -> Result<Option<String>> {
        self.get_text(&self.sql_endpoint_key()).await
    }

    /// What every live executor serves.
    pub async fn serving(&self) -> Result<Vec<ServingInfo>> {
        self.values("serving/").await
    }

    /// Publish an executor's last window of a version's inputs, under the executor's
    /// lease: it vanishes with the executor.
    pub async fn put_drift(&self, w: &DriftWindow, lease: i64) -> Result<()> {
        self.kv
            .txn(
                Vec::new(),
                vec![TxnOp::Put {
                    key: self.drift_key(&w.model, w.version, &w.executor),
                    value: encode(w),
                    lease: Some(lease),
                }],
            )
            .await?;
        Ok(())
    }

    /// Every executor's last window of every version of model `name`.
    pub async fn drift_windows(&self, name: &str) -> Result<Vec<DriftWindow>> {
        self.values(&format!("drift/{name}/")).await
    }

    /// Publish one node's event-log counts for a model (replacing its last; not on a
    /// lease: a node that died still counted what it acknowledged).
    pub async fn publish_tally(&self, t: &NodeTally) -> Result<()> {
        self.kv
            .txn(
                Vec::new(),
                vec![put(self.tally_key(&t.model, &t.node), encode(t))],
            )
            .await?;
        Ok(())
    }

    /// Every node's published counts for model `name`.
    pub async fn tallies(&self, name: &str) -> Result<Vec<NodeTally>> {
        self.values(&format!("tallies/{name}/")).await
    }

    /// Record batch `seq` of node `node`'s sticky assignments under `name` (a model, and
    /// for one bandit `model/versions`; not on a lease: they outlive the node).
    pub async fn put_sticky(
        &self,
        name: &str,
        node: &str,
        seq: u64,
        batch: &StickyBatch,
    ) -> Result<()> {
        let key = self.key(&format!("sticky/{name}/{node}/{seq:012}"));
        self.kv
            .txn(Vec::new(), vec![put(key, encode(batch))])
            .await?;
        Ok(())
    }

    /// Every node's sticky assignments under `name` (a model's, or one bandit's), oldest
    /// record first.
    pub async fn sticky(&self, name: &str) -> Result<Vec<StickyRecord>> {
        let mut out: Vec<StickyRecord> = self
            .kv
            .range(&self.key(&format!("sticky/{name}/")))
            .await?
            .iter()
            .map(|e| {
                decode::<StickyBatch>(e).map(|v| StickyRecord {
                    id: e.key.clone(),
                    revision: v.revision,
                    batch: v.value,
                })
            })
            .collect::<Result<_>>()?;
        out.sort_by_key(|r| r.revision);
        Ok(out)
    }

    /// Delete every sticky assignment under `name` (a model's bandit ended); how many
    /// records.
    pub async fn clear_sticky(&self, name: &str) -> Result<usize> {
        let keys: Vec<String> = self
            .kv
            .range(&self.key(&format!("sticky/{name}/")))
            .await?
            .into_iter()
            .map(|e| e.key)
            .collect();
        // etcd takes at most 128 operations per transaction.
        for chunk in keys.chunks(100) {
            let ops = chunk
                .iter()
                .map(|key| TxnOp::Delete { key: key.clone() })
                .collect();
            self.kv.txn(Vec::new(), ops).await?;
        }
        Ok(keys.len())
    }

    /// The `conversion` outcomes of each version of a model, summed over every node.
    pub async fn outcomes(&self, name: &str) -> Result<Vec<(u64, Outcomes)>> {
        let totals = crate::registry::total(&self.tallies(name).await?);
        Ok(crate::registry::outcomes_of(&totals))
    }
}

/// The next number a counter at `key` holds.
fn counter(key: &str, value: &[u8]) -> Result<u64> {
    let text = String::from_utf8_lossy(value);
    text.parse().map_err(|_| Error::Corrupt {
        key: key.to_string(),
        message: format!("not a number: {text:?}"),
    })
}
