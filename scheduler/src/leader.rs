//! Leader election and the leader's duties: placement, supervision, completion.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use halyard_core::auth::Verifier;
use halyard_core::config::SchedulerConfig;
use halyard_core::coord::{
    Auditor, Coordinator, LeaderView, Leadership, OwnWrites, Release, Versioned,
};
use halyard_core::metrics::Metrics;
use halyard_core::placement::{Demand, Placement, Room, place};
use halyard_core::records::{
    ExecutorInfo, JobRecord, JobState, TaskAssignment, TaskProgress, append_lines, now_ms,
};
use halyard_core::registry::{CANARY, Change, Deployment, Outcomes, PRODUCTION, total};
use halyard_core::schedule::Run;
use halyard_core::search::{Next, SearchState, TrialState, best_trial, next_step};
use halyard_core::spec::{ResourceSpec, Stage};
use halyard_core::store::Store;
use halyard_core::{Error, Result};
use halyard_features::cluster::SqlScheduler;
use halyard_features::session::DataAccess;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::decide::{
    Free, Verdict, attempts_in_step, choose_executors, free_capacity, requeue_wait, supervise,
};

/// How often the leader trims the audit log.
const AUDIT_TRIM_EVERY: Duration = Duration::from_secs(3600);
/// How long after a bandit ended the leader goes on deleting its sticky assignments
/// (well beyond the time a node takes to record the last it made).
const STICKY_GRACE: Duration = Duration::from_secs(10);

/// Campaign, lead until leadership is lost or shutdown, campaign again.
pub(crate) async fn run(
    cfg: SchedulerConfig,
    coord: Coordinator,
    store: Store,
    door: SqlDoor,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if *shutdown.borrow() {
            return;
        }
        let leadership = tokio::select! {
            l = campaign(&cfg, &coord) => l,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        info!(id = %cfg.id, revision = leadership.revision, "became leader");
        metrics.leader.set(1);
        metrics.leader_changes.inc();
        let reason = lead(
            &cfg,
            &coord,
            &store,
            &door,
            &metrics,
            &leadership,
            &mut shutdown,
        )
        .await;
        metrics.leader.set(0);
        match reason {
            Ok(()) => {
                if let Err(e) = coord.resign(&leadership).await {
                    warn!(error = %e, "resign failed; the lease will expire");
                }
                info!(id = %cfg.id, "resigned leadership");
                return;
            }
            Err(e) => warn!(id = %cfg.id, error = %e, "lost leadership"),
        }
    }
}

/// Wait until this scheduler is leader. A standby keeps its lease alive while it waits.
async fn campaign(cfg: &SchedulerConfig, coord: &Coordinator) -> Leadership {
    let poll = (cfg.lease_ttl / 4).max(Duration::from_millis(200));
    let mut announced = false;
    loop {
        let lease = match coord.grant_lease(cfg.lease_ttl).await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "cannot grant a lease; retrying");
                tokio::time::sleep(poll).await;
                continue;
            }
        };
        loop {
            match coord.campaign(&cfg.id, lease).await {
                Ok(Some(l)) => return l,
                Ok(None) => {
                    if !announced {
                        let leader = coord.leader().await.ok().flatten().unwrap_or_default();
                        info!(id = %cfg.id, %leader, "standing by");
                        announced = true;
                    }
                }
                Err(e) => warn!(error = %e, "campaign failed; retrying"),
            }
            tokio::time::sleep(poll).await;
            if coord.keep_alive(lease).await.is_err() {
                break;
            }
        }
    }
}

/// Lead: keep the lease alive and run ticks. `Ok` on shutdown, `Err` when leadership is lost.
async fn lead(
    cfg: &SchedulerConfig,
    coord: &Coordinator,
    store: &Store,
    door: &SqlDoor,
    metrics: &Metrics,
    leadership: &Leadership,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<()> {
    let renew_every = cfg.lease_ttl / 3;
    let mut renewed = Instant::now();
    let mut leader = Leader {
        cfg,
        coord,
        store,
        door,
        metrics,
        leadership,
        source: format!("scheduler/{}", cfg.id),
        sql: None,
        sql_executors: BTreeSet::new(),
        bandits_weighed: HashMap::new(),
        sticky_cleared: HashMap::new(),
        audit_trimmed: None,
        collected: None,
        version_memory: HashMap::new(),
        placements: None,
        own: Arc::new(OwnWrites::default()),
    };
    let result = leader.run(shutdown, renew_every, &mut renewed).await;
    if let Some(sql) = leader.sql.take() {
        sql.stop().await;
        info!(id = %cfg.id, "sql scheduler stopped");
    }
    result
}

impl Leader<'_> {
    async fn run(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
        renew_every: Duration,
        renewed: &mut Instant,
    ) -> Result<()> {
        let (cfg, coord, leadership) = (self.cfg, self.coord, self.leadership);
        // A submission, a task's report or an executor coming or going wakes the next pass
        // at once; the periodic pass stays for time-driven duties and a broken watch.
        let wake = coord.leader_wake_but(Some(self.own.clone()));
        let mut last_timed: Option<Instant> = None;
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            if renewed.elapsed() >= renew_every {
                coord.keep_alive(leadership.lease).await?;
                *renewed = Instant::now();
            }
            // One read (two round trips) serves the pass: the live executors, the active
            // jobs, the tasks and their reports.
            let view = match coord.leader_view().await {
                Ok(v) => v,
                Err(e) => {
                    warn!(error = %e, "cannot read the jobs and executors; retrying");
                    tokio::time::sleep(cfg.tick).await;
                    continue;
                }
            };
            self.sql_tick(&view.executors).await?;
            let timed = last_timed.is_none_or(|t| t.elapsed() >= cfg.tick);
            if timed {
                last_timed = Some(Instant::now());
            }
            let failed = match self.tick(view, timed).await {
                Ok(()) => false,
                Err(Error::Fenced) => return Err(Error::Fenced),
                Err(Error::LeaseLost(l)) => return Err(Error::LeaseLost(l)),
                Err(e) => {
                    warn!(error = %e, "tick failed; retrying");
                    true
                }
            };
            // After a failed pass, the next waits its period whatever changes.
            tokio::select! {
                _ = tokio::time::sleep(cfg.tick) => {}
                () = wake.changed(), if !failed => {}
                _ = shutdown.wait_for(|s| *s) => return Ok(()),
            }
        }
    }

    /// Run the SQL (Ballista) scheduler while leading and advertise it; tell it at once
    /// about executors whose lease expired.
    async fn sql_tick(&mut self, executors: &[ExecutorInfo]) -> Result<()> {
        if self.sql.is_none() {
            let access = DataAccess::node(
                &self.cfg.s3,
                &self.cfg.roots,
                &self.cfg.store_url,
                self.cfg.sealer.as_ref(),
            )?;
            let started = match halyard_core::bind(&self.cfg.sql_listen).await {
                Ok((listener, _)) => SqlScheduler::start(
                    listener,
                    &access,
                    self.door.verifier.clone(),
                    Some(Auditor::new(self.coord.clone(), &self.cfg.id)),
                    &self.door.token,
                    self.door.tls.as_ref(),
                )
                .await
                .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match started {
                Ok(sql) => {
                    let endpoint = format!("{}:{}", self.cfg.advertise_host, sql.addr.port());
                    self.coord
                        .advertise_sql_endpoint(self.leadership, &endpoint)
                        .await?;
                    info!(%endpoint, "sql scheduler advertised");
                    self.sql = Some(sql);
                }
                Err(e) => {
                    warn!(error = %e, listen = %self.cfg.sql_listen, "cannot start the sql scheduler; retrying");
                    return Ok(());
                }
            }
        }
        let Some(sql) = &self.sql else { return Ok(()) };
        let live: BTreeSet<String> = executors.iter().map(|e| e.id.clone()).collect();
        for gone in self.sql_executors.difference(&live) {
            info!(executor = %gone, "executor lease expired; its sql tasks run again elsewhere");
            if let Err(e) = sql
                .executor_lost(gone, "halyard executor lease expired")
                .await
            {
                warn!(executor = %gone, error = %e, "cannot tell the sql scheduler");
            }
        }
        self.sql_executors = live;
        Ok(())
    }
}

/// How the SQL scheduler checks its callers, and the node's own key.
pub(crate) struct SqlDoor {
    /// Checks callers' keys.
    pub(crate) verifier: Verifier,
    /// The node's key.
    pub(crate) token: String,
    /// The node's TLS: the SQL port serves it too.
    pub(crate) tls: Option<halyard_core::tls::Tls>,
}

struct Leader<'a> {
    cfg: &'a SchedulerConfig,
    coord: &'a Coordinator,
    store: &'a Store,
    door: &'a SqlDoor,
    metrics: &'a Metrics,
    leadership: &'a Leadership,
    source: String,
    /// The SQL (Ballista) scheduler, run while leading.
    sql: Option<SqlScheduler>,
    /// Executors the SQL scheduler was last told about.
    sql_executors: BTreeSet<String>,
    /// Per running bandit, the deployment change and the outcomes its weights were last
    /// computed from: the same inputs give the same weights, so they are not drawn again.
    bandits_weighed: HashMap<String, (i64, Vec<(u64, Outcomes)>)>,
    /// Deployments without a bandit, since when this leader deletes their sticky
    /// assignments.
    sticky_cleared: HashMap<String, Instant>,
    /// When this leader last trimmed the audit log.
    audit_trimmed: Option<Instant>,
    /// When this leader last started a garbage collection, and the collection.
    collected: Option<(Instant, tokio::task::JoinHandle<()>)>,
    /// Each registered version's memory (a record never changes it).
    version_memory: HashMap<(String, u64), u64>,
    /// The placements as this leader last read or wrote them.
    placements: Option<BTreeMap<String, Placement>>,
    /// This leader's assignments and job ends, which need not wake it.
    own: Arc<OwnWrites>,
}

impl Leader<'_> {
    /// Delete audit events older than the retention: when leadership begins, then hourly.
    async fn trim_audit(&mut self) {
        let Some(keep) = self.cfg.audit_retention else {
            return;
        };
        if self
            .audit_trimmed
            .is_some_and(|t| t.elapsed() < AUDIT_TRIM_EVERY)
        {
            return;
        }
        self.audit_trimmed = Some(Instant::now());
        let before = halyard_core::records::now_ms() - keep.as_millis() as i64;
        match self.coord.trim_audit(before).await {
            Ok(0) => {}
            Ok(n) => info!(
                deleted = n,
                days = keep.as_secs() / 86_400,
                "audit log trimmed"
            ),
            Err(e) => warn!(error = %e, "cannot trim the audit log: next hour"),
        }
    }

    /// Collect the object store's garbage when leadership begins, then every `gc_every`,
    /// in the background (a large store takes a while to list): one collection at a time.
    fn collect_garbage(&mut self) {
        let Some(every) = self.cfg.gc_every else {
            return;
        };
        if let Some((started, task)) = &self.collected
            && (started.elapsed() < every || !task.is_finished())
        {
            return;
        }
        let (coord, store, policy) = (self.coord.clone(), self.store.clone(), self.cfg.gc);
        let task = tokio::spawn(async move {
            if let Err(e) = halyard_core::gc::run(&coord, &store, &policy, false).await {
                warn!(error = %e, "garbage collection failed: next period");
            }
        });
        self.collected = Some((Instant::now(), task));
    }

    /// Place the deployed models on the live executors by memory and replicas
    /// ([`halyard_core::placement`]); write what changed.
    async fn place_models(
        &mut self,
        executors: &[ExecutorInfo],
        deployments: &[Deployment],
    ) -> Result<()> {
        // No live executor: the coordinator is coming back (leases lapsed in an outage)
        // or the cluster is starting; the placements stand until executors register.
        if executors.is_empty() {
            return Ok(());
        }
        let mut demands = Vec::new();
        for d in deployments {
            let versions = d.current.versions();
            if versions.is_empty() {
                continue;
            }
            let mut memory_bytes = 0;
            for v in versions {
                let key = (d.name.clone(), v);
                let bytes = match self.version_memory.get(&key) {
                    Some(b) => *b,
                    None => {
                        let Some(record) = self.coord.model_version(&d.name, v).await? else {
                            continue;
                        };
                        self.version_memory.insert(key, record.memory_bytes);
                        record.memory_bytes
                    }
                };
                memory_bytes += bytes;
            }
            demands.push(Demand {
                model: d.name.clone(),
                memory_bytes,
                replicas: d.replicas,
            });
        }
        let rooms: Vec<Room> = executors
            .iter()
            .map(|e| Room {
                executor: e.id.clone(),
                memory_bytes: e.memory_mb << 20,
            })
            .collect();
        // Only the leader writes placements: read them once per leadership, then keep
        // what was written.
        let before = match self.placements.take() {
            Some(p) => p,
            None => self
                .coord
                .placements()
                .await?
                .into_iter()
                .map(|p| (p.model.clone(), p))
                .collect(),
        };
        let now = place(&demands, &rooms, &before);
        let changed: Vec<Placement> = now
            .values()
            .filter(|p| before.get(&p.model) != Some(*p))
            .cloned()
            .collect();
        let gone: Vec<String> = before
            .keys()
            .filter(|m| !now.contains_key(*m))
            .cloned()
            .collect();
        if changed.is_empty() && gone.is_empty() {
            self.placements = Some(before);
            return Ok(());
        }
        for p in &changed {
            if p.short() > 0 {
                warn!(model = %p.model, wanted = p.wanted, placed = p.executors.len(), memory_bytes = p.memory_bytes, "not every replica fits: no executor with room for the rest");
            }
            info!(model = %p.model, executors = ?p.executors, "model placed");
        }
        // A failed write leaves `placements` unset: the next pass reads them again.
        self.coord
            .set_placements(self.leadership, &changed, &gone)
            .await?;
        self.placements = Some(now);
        Ok(())
    }

    /// One pass: the jobs (placement, supervision, searches), and with `timed` also the
    /// duties driven by time rather than by writes (schedules, bandits, ramps, the audit
    /// log), which a wake-up between two periods skips.
    async fn tick(&mut self, view: LeaderView, timed: bool) -> Result<()> {
        let LeaderView {
            executors,
            jobs,
            tasks,
            mut reports,
        } = view;
        let executors = &executors[..];
        if timed {
            self.trim_audit().await;
            self.collect_garbage();
            self.fire_schedules().await?;
            let deployments = self.coord.deployments().await?;
            self.rebalance_bandits(&deployments).await?;
            self.advance_ramps(&deployments).await?;
            self.place_models(executors, &deployments).await?;
        }
        let tasks: Vec<TaskAssignment> = tasks.into_iter().map(|t| t.value).collect();
        let mut free = free_capacity(executors, &tasks);
        self.gauge(&jobs, executors, &free);
        if jobs.is_empty() {
            return Ok(());
        }
        let addresses: HashMap<&str, &str> = executors
            .iter()
            .map(|e| (e.id.as_str(), e.address.as_str()))
            .collect();
        // An ended job's release waits for the next placement of this pass, to go out in
        // its transaction (one write, and one wake-up of an executor that ends one task
        // and starts the next), or alone at the end of the pass.
        let mut held: Option<Ended> = None;
        for job in jobs {
            let result = match job.value.state {
                _ if job.value.spec.search.is_some() => self.search(&job).await,
                JobState::Pending => self.place(&job, &mut free, &addresses, &mut held).await,
                JobState::Running => {
                    let report = reports.remove(&job.value.id);
                    // A released task's slots are free for the jobs after it in this
                    // pass (the next pass would count them free from the assignments).
                    match self.supervise(&job, &free, report, &tasks).await {
                        Ok(Released::No) => Ok(()),
                        Ok(Released::Requeued(slots)) => {
                            slots.give(&mut free);
                            Ok(())
                        }
                        Ok(Released::Ended(end)) => {
                            end.slots.give(&mut free);
                            match held.replace(*end) {
                                Some(earlier) => self.end_alone(earlier, &mut free).await,
                                None => Ok(()),
                            }
                        }
                        Err(e) => Err(e),
                    }
                }
                _ => Ok(()),
            };
            match result {
                // Another writer moved the job since it was read: next tick re-reads it.
                Err(Error::Conflict { .. }) => {}
                other => other?,
            }
        }
        if let Some(end) = held {
            match self.end_alone(end, &mut free).await {
                Err(Error::Conflict { .. }) => {}
                other => other?,
            }
        }
        Ok(())
    }

    /// Send an ended job's release on its own; when it fails, its slots are taken again.
    async fn end_alone(&self, end: Ended, free: &mut HashMap<String, Free>) -> Result<()> {
        let written = self
            .own_write(
                self.coord
                    .commit_release(self.leadership, end.release.clone()),
            )
            .await;
        match written {
            Ok(_) => end.log(),
            Err(_) => end.slots.take(free),
        }
        written.map(|_| ())
    }

    /// Set the cluster's gauges from what this tick read.
    fn gauge(
        &self,
        jobs: &[Versioned<JobRecord>],
        executors: &[ExecutorInfo],
        free: &HashMap<String, Free>,
    ) {
        let m = self.metrics;
        for state in [JobState::Pending, JobState::Running] {
            let n = jobs.iter().filter(|j| j.value.state == state).count();
            m.jobs.with_label_values(&[state.as_str()]).set(n as i64);
        }
        m.executors.set(executors.len() as i64);
        let total: u64 = executors.iter().map(|e| u64::from(e.cpu_slots)).sum();
        let unused: u64 = free.values().map(|f| u64::from(f.cpus)).sum();
        let slots = &m.cluster_slots;
        slots.with_label_values(&["free"]).set(unused as i64);
        slots
            .with_label_values(&["used"])
            .set(total.saturating_sub(unused) as i64);
    }

    async fn place(
        &self,
        job: &Versioned<JobRecord>,
        free: &mut HashMap<String, Free>,
        addresses: &HashMap<&str, &str>,
        held: &mut Option<Ended>,
    ) -> Result<()> {
        let mut new = job.value.clone();
        if new.cancel_requested {
            new.state = JobState::Cancelled;
            new.log(&self.source, "cancelled before it started");
            self.own_write(self.coord.update_job(self.leadership, job, &new))
                .await?;
            return Ok(());
        }
        if now_ms() < job.value.not_before_ms {
            return Ok(());
        }
        let need = &job.value.spec.resources;
        let steps = job.value.spec.steps();
        let stages = steps
            .get(job.value.step as usize)
            .cloned()
            .unwrap_or_default();
        // The feature stage drives the SQL cluster from one executor; the main step runs
        // on the job's workers.
        let workers = if stages == [Stage::Features] {
            None
        } else {
            job.value.spec.workers()
        };
        // The executors with the most free slots that fit: one, or one per worker of a
        // group (all of them or none).
        let wanted = workers.unwrap_or(1) as usize;
        let Some(chosen) = choose_executors(free, need, wanted) else {
            return Ok(());
        };
        let executor = chosen[0].clone();
        new.state = JobState::Running;
        new.attempt += 1;
        new.executor = Some(executor.clone());
        let group: Vec<String> = match workers {
            Some(_) => {
                new.workers = chosen.clone();
                chosen
                    .iter()
                    .map(|id| {
                        addresses
                            .get(id.as_str())
                            .copied()
                            .unwrap_or_default()
                            .to_string()
                    })
                    .collect()
            }
            None => Vec::new(),
        };
        let what = stages
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" → ");
        new.log(
            &self.source,
            match workers {
                Some(n) => format!(
                    "{what}: attempt {} placed on {n} worker(s): {} (rank 0 first)",
                    new.attempt,
                    chosen.join(", ")
                ),
                None => format!(
                    "{what}: attempt {} placed on executor {executor}",
                    new.attempt
                ),
            },
        );
        let tasks: Vec<TaskAssignment> = chosen
            .iter()
            .enumerate()
            .map(|(rank, e)| TaskAssignment {
                job_id: new.id.clone(),
                attempt: new.attempt,
                executor: e.clone(),
                spec: new.spec.clone(),
                assigned_ms: now_ms(),
                rank: rank as u32,
                group: group.clone(),
                stages: stages.clone(),
            })
            .collect();
        let with = held.take();
        let placed = self
            .own_write(self.coord.assign_task(
                self.leadership,
                job,
                &new,
                &tasks,
                with.as_ref().map(|e| &e.release),
            ))
            .await;
        match (placed, with) {
            (Ok(_), with) => with.iter().for_each(Ended::log),
            // One of the two jobs moved: the release alone, then the placement alone.
            (Err(Error::Conflict { .. }), Some(end)) => {
                self.end_alone(end, free).await?;
                self.own_write(
                    self.coord
                        .assign_task(self.leadership, job, &new, &tasks, None),
                )
                .await?;
            }
            (Err(e), _) => return Err(e),
        }
        for e in &chosen {
            if let Some(slot) = free.get_mut(e) {
                slot.take(need);
            }
        }
        info!(job = %new.id, executors = ?chosen, attempt = new.attempt, "task placed");
        Ok(())
    }

    /// Send `write`, one of the leader's own that need not wake it (its pass goes on from
    /// what it wrote).
    async fn own_write(
        &self,
        write: impl std::future::Future<Output = Result<i64>>,
    ) -> Result<i64> {
        let writing = self.own.writing();
        let revision = write.await?;
        writing.wrote(revision);
        Ok(revision)
    }

    /// Follow a running job from its task's latest report (`report`, read this pass);
    /// whether its task was released (ended, requeued or cancelled).
    async fn supervise(
        &self,
        job: &Versioned<JobRecord>,
        free: &HashMap<String, Free>,
        report: Option<TaskProgress>,
        tasks: &[TaskAssignment],
    ) -> Result<Released> {
        let mut new = job.value.clone();
        let executor = new.executor.clone().unwrap_or_default();
        let progress = report.filter(|p| p.attempt == new.attempt);
        let live = |e: &str| free.contains_key(e);
        match supervise(&new, progress.as_ref(), &live, self.cfg.max_attempts) {
            Verdict::RunsOn => return Ok(Released::No),
            Verdict::Cancel => {
                new.state = JobState::Cancelled;
                new.log(&self.source, "cancelled");
            }
            Verdict::Succeed if (new.step as usize) + 1 < new.spec.steps().len() => {
                // A step ended; the next is placed like a new task (attempts counted anew).
                let p = progress.as_ref().expect("success came from a report");
                new.metrics.extend(p.metrics.clone());
                new.executor = None;
                new.workers.clear();
                new.state = JobState::Pending;
                new.step += 1;
                new.step_from = new.attempt;
                let next = new.spec.steps()[new.step as usize]
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" → ");
                new.log(&self.source, format!("step done; next: {next}"));
            }
            Verdict::Succeed => {
                let p = progress.as_ref().expect("success came from a report");
                new.metrics.extend(p.metrics.clone());
                new.state = JobState::Succeeded;
                new.artifact = p.artifact.clone();
                new.model_version = p.model_version;
                new.log(&self.source, "succeeded");
            }
            Verdict::Fail => {
                new.state = JobState::Failed;
                new.error = progress.as_ref().and_then(|p| p.error.clone());
                new.log(&self.source, "failed");
            }
            Verdict::GiveUp(lost) => {
                new.executor = None;
                new.workers.clear();
                new.state = JobState::Failed;
                new.error = Some(format!("{lost} ({} attempts); giving up", new.attempt));
                new.log(&self.source, format!("{lost}; attempts exhausted"));
            }
            Verdict::Requeue(lost) => {
                // An executor's lease expired (its key is gone), or the task failed with a
                // retryable failure: requeue it (a group resumes from its last checkpoint).
                new.executor = None;
                new.workers.clear();
                new.state = JobState::Pending;
                // Each retry of the step waits longer; a group at least a lease period (a
                // dead peer's lease must end before the group is formed again).
                let group = new.spec.workers().is_some();
                let wait = requeue_wait(group, attempts_in_step(&new), self.cfg.lease_ttl);
                new.not_before_ms = now_ms() + wait.as_millis() as i64;
                new.log(&self.source, format!("{lost}; task requeued"));
            }
        }
        // The executor's log lines join the job's before its progress key goes.
        if let Some(p) = &progress {
            append_lines(&mut new.events, p.lines.iter().cloned());
        }
        let slots = Slots(
            tasks
                .iter()
                .filter(|t| t.job_id == new.id)
                .map(|t| (t.executor.clone(), t.spec.resources.clone()))
                .collect(),
        );
        // A job back to pending (its next step, a requeue) needs the pass it wakes; an
        // ended job's release is the caller's to send.
        if new.state != JobState::Pending {
            return Ok(Released::Ended(Box::new(Ended {
                release: self.coord.release_write(job, &new),
                job: new,
                slots,
            })));
        }
        self.coord.release_task(self.leadership, job, &new).await?;
        if new.step == job.value.step {
            warn!(job = %new.id, %executor, "task requeued");
        } else {
            info!(job = %new.id, %executor, step = new.step, "step done; next step queued");
        }
        Ok(Released::Requeued(slots))
    }
}

/// What supervising a running job did to its task.
enum Released {
    /// Nothing: it runs on.
    No,
    /// Taken away and the job sent back to pending (written); the slots it held.
    Requeued(Slots),
    /// The job ended: its release, not yet written.
    Ended(Box<Ended>),
}

/// The slots a job's tasks held: executor, resources.
struct Slots(Vec<(String, ResourceSpec)>);

impl Slots {
    /// Count them free in `free`.
    fn give(&self, free: &mut HashMap<String, Free>) {
        self.each(free, Free::give);
    }

    /// Count them used again.
    fn take(&self, free: &mut HashMap<String, Free>) {
        self.each(free, Free::take);
    }

    fn each(&self, free: &mut HashMap<String, Free>, f: fn(&mut Free, &ResourceSpec)) {
        for (executor, need) in &self.0 {
            if let Some(slot) = free.get_mut(executor) {
                f(slot, need);
            }
        }
    }
}

/// An ended job's release, held to go out with the next placement.
struct Ended {
    release: Release,
    /// The record as it ends.
    job: JobRecord,
    /// The slots its tasks held.
    slots: Slots,
}

impl Ended {
    /// Log the end once it is written.
    fn log(&self) {
        let j = &self.job;
        info!(job = %j.id, state = j.state.as_str(), artifact = ?j.artifact, error = ?j.error, "job ended");
    }
}

impl Leader<'_> {
    /// A search job: no task of its own; it runs each rung of each trial as a job (placed
    /// like any other), follows them, and ends with a job that publishes the best trial.
    async fn search(&self, job: &Versioned<JobRecord>) -> Result<()> {
        let mut new = job.value.clone();
        let Some(spec) = new.spec.search.clone() else {
            return Ok(());
        };
        let mut state = match new.search.take() {
            Some(s) => s,
            None => {
                let (budget, unit) = new.spec.rung_budget();
                let s = SearchState::new(&spec, budget);
                new.state = JobState::Running;
                new.log(
                    &self.source,
                    format!(
                        "search: {} trial(s), {:?} strategy, rungs at {unit} {:?}, {} at once",
                        s.trials.len(),
                        spec.strategy,
                        s.rungs,
                        spec.parallel
                    ),
                );
                s
            }
        };
        let mut changed = new.state != job.value.state;
        let children: Vec<String> = state
            .trials
            .iter()
            .filter(|t| t.state == TrialState::Running)
            .filter_map(|t| t.job.clone())
            .chain(state.publish_job.clone())
            .collect();
        if new.cancel_requested {
            for child in &children {
                self.coord.request_cancel(child).await?;
            }
            new.state = JobState::Cancelled;
            new.log(
                &self.source,
                format!("cancelled with {} running job(s)", children.len()),
            );
            new.search = Some(state);
            self.coord.update_job(self.leadership, job, &new).await?;
            return Ok(());
        }
        // Trials whose rung ended.
        for t in state
            .trials
            .iter_mut()
            .filter(|t| t.state == TrialState::Running)
        {
            let Some(child) = self
                .coord
                .get_job(t.job.as_deref().unwrap_or_default())
                .await?
            else {
                continue;
            };
            let c = &child.value;
            match c.state {
                JobState::Succeeded => {
                    let Some(loss) = c
                        .metrics
                        .get("valid_loss")
                        // (a job an executor of before 2026-12-03 finished)
                        .or_else(|| c.metrics.get("valid_log_loss"))
                        .copied()
                        .filter(|l| l.is_finite())
                    else {
                        // (Records hold finite numbers only: JSON has no infinity.)
                        t.state = TrialState::Failed;
                        t.error = Some("its job reported no validation loss".into());
                        new.log(
                            &self.source,
                            format!("trial {} failed: no validation loss", t.index),
                        );
                        changed = true;
                        continue;
                    };
                    t.losses.push(loss);
                    t.epochs = c
                        .metrics
                        .get("epochs_trained")
                        .map_or(t.epochs, |e| *e as u32);
                    t.metrics = c.metrics.clone();
                    // A trial trained to its end has test metrics (`test_auc`, or `test_rmse`
                    // for trees fitting numbers); a paused one has not.
                    t.state = if c.metrics.keys().any(|k| k.starts_with("test_")) {
                        TrialState::Completed
                    } else {
                        TrialState::Paused
                    };
                    new.log(
                        &self.source,
                        format!(
                            "trial {} {} after {}: validation loss {loss:.5}",
                            t.index,
                            t.state.as_str(),
                            match new.spec.rung_budget().1 {
                                "trees" => format!("{} trees", t.epochs),
                                _ => format!("epoch {}", t.epochs),
                            }
                        ),
                    );
                }
                JobState::Failed | JobState::Cancelled => {
                    t.state = TrialState::Failed;
                    t.error = c.error.clone().or(Some(c.state.as_str().into()));
                    new.log(
                        &self.source,
                        format!(
                            "trial {} failed: {}",
                            t.index,
                            t.error.as_deref().unwrap_or("")
                        ),
                    );
                }
                _ => continue,
            }
            changed = true;
        }
        if let Some(publish) = state.publish_job.clone() {
            if let Some(child) = self.coord.get_job(&publish).await? {
                let c = &child.value;
                match c.state {
                    JobState::Succeeded => {
                        new.state = JobState::Succeeded;
                        new.metrics = c.metrics.clone();
                        if let Some(best) = state.best {
                            new.metrics.insert("best_trial".into(), best as f64);
                        }
                        new.artifact = c.artifact.clone();
                        new.model_version = c.model_version;
                        new.log(
                            &self.source,
                            format!("succeeded: job {publish} published the best trial"),
                        );
                        changed = true;
                    }
                    JobState::Failed | JobState::Cancelled => {
                        new.state = JobState::Failed;
                        new.error = Some(format!(
                            "publishing the best trial (job {publish}) failed: {}",
                            c.error.as_deref().unwrap_or(c.state.as_str())
                        ));
                        new.log(&self.source, "failed");
                        changed = true;
                    }
                    _ => {}
                }
            }
        } else {
            loop {
                match next_step(&state, spec.reduction, spec.parallel) {
                    Next::Wait => break,
                    Next::Run(i) => {
                        let t = &state.trials[i];
                        let rung = t.losses.len();
                        let id = format!("{}-t{i}-r{rung}", new.id);
                        let child = match trial_spec(
                            &new,
                            &t.params,
                            state.rungs[rung],
                            t.job.clone(),
                            false,
                        ) {
                            Ok(c) => c,
                            Err(e) => {
                                new.log(&self.source, format!("trial {i} failed: {e}"));
                                let t = &mut state.trials[i];
                                t.state = TrialState::Failed;
                                t.error = Some(e);
                                changed = true;
                                continue;
                            }
                        };
                        self.submit_child(&new.id, &id, child).await?;
                        new.log(
                            &self.source,
                            format!(
                                "trial {i} {} to epoch {} as job {id}: {}",
                                if rung == 0 { "starts" } else { "promoted" },
                                state.rungs[rung],
                                serde_json::to_string(&t.params).unwrap_or_default()
                            ),
                        );
                        let t = &mut state.trials[i];
                        t.state = TrialState::Running;
                        t.job = Some(id);
                        changed = true;
                    }
                    Next::Finish => {
                        for t in state
                            .trials
                            .iter_mut()
                            .filter(|t| t.state == TrialState::Paused)
                        {
                            t.state = TrialState::Stopped;
                        }
                        match best_trial(&state) {
                            None => {
                                new.state = JobState::Failed;
                                new.error =
                                    Some("no trial completed: see the trials' errors".into());
                                new.log(&self.source, "failed: no trial completed");
                            }
                            Some(best) => {
                                let t = &state.trials[best];
                                let id = format!("{}-best", new.id);
                                let last = *state.rungs.last().unwrap_or(&new.spec.rung_budget().0);
                                let child = trial_spec(&new, &t.params, last, t.job.clone(), true)
                                    .map_err(|e| {
                                        Error::invalid(
                                            format!("search {}", new.id),
                                            "trial",
                                            best,
                                            e,
                                        )
                                    })?;
                                self.submit_child(&new.id, &id, child).await?;
                                new.log(
                                    &self.source,
                                    format!(
                                        "best: trial {best} (validation loss {:.5}); job {id} publishes it from its checkpoint",
                                        t.losses.last().copied().unwrap_or(f64::NAN)
                                    ),
                                );
                                state.best = Some(best);
                                state.publish_job = Some(id);
                            }
                        }
                        changed = true;
                        break;
                    }
                }
            }
        }
        if changed {
            new.search = Some(state);
            self.coord.update_job(self.leadership, job, &new).await?;
        }
        Ok(())
    }
}

impl Leader<'_> {
    /// Submit the run of every schedule that is due (one per schedule: due times missed
    /// while no leader ran are coalesced), unless its last run is still going.
    async fn fire_schedules(&self) -> Result<()> {
        let now = now_ms();
        for s in self.coord.schedules().await? {
            if s.value.paused || s.value.next_ms > now {
                continue;
            }
            let mut new = s.value.clone();
            let due = new.next_ms;
            let last = new.runs.iter().rev().find_map(|r| r.job.clone());
            let going = match &last {
                Some(id) => self
                    .coord
                    .get_job(id)
                    .await?
                    .is_some_and(|j| !j.value.state.is_terminal()),
                None => false,
            };
            let result = if going {
                let why = format!("run {} was still going", last.unwrap_or_default());
                new.record(
                    Run {
                        due_ms: due,
                        job: None,
                        skipped: Some(why.clone()),
                    },
                    now,
                );
                warn!(schedule = %new.name, due_ms = due, reason = %why, "scheduled run skipped");
                self.coord.skip_schedule(self.leadership, &s, &new).await
            } else {
                let id = new.run_id(due);
                let mut job = JobRecord::new(id.clone(), new.spec.clone());
                job.owner = new.owner.clone();
                job.schedule = Some(new.name.clone());
                job.log(
                    &self.source,
                    format!(
                        "run of schedule {} ({}) due at {due} ms",
                        new.name, new.timing
                    ),
                );
                new.record(
                    Run {
                        due_ms: due,
                        job: Some(id.clone()),
                        skipped: None,
                    },
                    now,
                );
                info!(schedule = %new.name, job = %id, due_ms = due, "scheduled run submitted");
                self.coord
                    .fire_schedule(self.leadership, &s, &new, &job)
                    .await
            };
            match result {
                // Another writer changed the schedule (paused, deleted): next tick re-reads.
                Err(Error::Conflict { .. }) => {}
                other => {
                    other?;
                }
            }
        }
        Ok(())
    }

    /// Re-weigh every running bandit whose interval has passed since its deployment last
    /// changed: a `Rebalance` change through the registry (so it is in the deployment's
    /// history and rollback restores the weights before it). Unchanged weights are not
    /// written; the draws are seeded by the deployment's last change, so the same change
    /// and outcomes give the same weights, and they are drawn once.
    async fn rebalance_bandits(&mut self, deployments: &[Deployment]) -> Result<()> {
        let now = now_ms();
        // A bandit's sticky assignments go once it has ended: deleted on every pass for
        // a while after (a node may still record the last ones it made), then left.
        for d in deployments {
            if d.current.bandit.is_some() {
                self.sticky_cleared.remove(&d.name);
                continue;
            }
            let since = *self
                .sticky_cleared
                .entry(d.name.clone())
                .or_insert_with(Instant::now);
            if since.elapsed() < STICKY_GRACE {
                let n = self.coord.clear_sticky(&d.name).await?;
                if n > 0 {
                    info!(model = %d.name, records = n, "a bandit's sticky assignments deleted");
                }
            }
        }
        self.bandits_weighed.retain(|name, _| {
            deployments
                .iter()
                .any(|d| &d.name == name && d.current.bandit.is_some())
        });
        for d in deployments {
            let Some(policy) = &d.current.bandit else {
                continue;
            };
            if now - d.updated_ms < policy.every_secs as i64 * 1000 {
                continue;
            }
            let outcomes = self.coord.outcomes(&d.name).await?;
            if self
                .bandits_weighed
                .get(&d.name)
                .is_some_and(|(at, seen)| *at == d.updated_ms && *seen == outcomes)
            {
                continue;
            }
            let weights = match halyard_serving::experiment::bandit_weights(
                policy,
                &outcomes,
                d.updated_ms as u64,
            ) {
                Ok(w) => w,
                Err(e) => {
                    warn!(model = %d.name, error = %e, "bandit not re-weighed");
                    continue;
                }
            };
            self.bandits_weighed
                .insert(d.name.clone(), (d.updated_ms, outcomes));
            if weights == d.current.variants {
                continue;
            }
            let why = format!("weights {weights:?} from the outcomes so far");
            self.change_deployment(&d.name, Change::Rebalance(weights), "bandit-rebalance", why)
                .await?;
        }
        Ok(())
    }

    /// Move every running ramp on: roll the canary back when its guardrail broke, else,
    /// once its step has lasted `step_secs`, step it up, or promote it after the last.
    async fn advance_ramps(&self, deployments: &[Deployment]) -> Result<()> {
        let now = now_ms();
        for d in deployments {
            let Some(ramp) = &d.current.ramp else {
                continue;
            };
            if ramp.guard_conversion
                || ramp.guard_errors
                || ramp.guard_latency
                || ramp.guard_metrics
            {
                let totals = total(&self.coord.tallies(&d.name).await?);
                let of =
                    |v: Option<u64>| v.and_then(|v| totals.get(&v)).cloned().unwrap_or_default();
                let production = of(d.current.aliases.get(PRODUCTION).copied());
                if let Some(why) = halyard_serving::experiment::ramp_breach(
                    ramp,
                    &d.metrics,
                    &production,
                    &of(Some(ramp.canary)),
                ) {
                    warn!(model = %d.name, canary = ramp.canary, reason = %why, "ramp rolled back");
                    self.change_deployment(&d.name, Change::RampAbort, "ramp-rollback", why)
                        .await?;
                    continue;
                }
            }
            if now - d.updated_ms < ramp.step_secs as i64 * 1000 {
                continue;
            }
            let (change, action, why) = if ramp.step + 1 < ramp.steps.len() {
                let share = ramp.steps[ramp.step + 1];
                (
                    Change::RampStep,
                    "ramp-step",
                    format!("canary version {} to {share}%", ramp.canary),
                )
            } else {
                (
                    Change::Promote {
                        alias: CANARY.into(),
                    },
                    "ramp-promote",
                    format!(
                        "canary version {} held its guardrail through every step",
                        ramp.canary
                    ),
                )
            };
            info!(model = %d.name, action, reason = %why, "ramp moved on");
            self.change_deployment(&d.name, change, action, why).await?;
        }
        Ok(())
    }

    /// A change the leader makes to a deployment on its own, recorded in the audit log
    /// as `action` by the leader with `why`. A conflict or a refusal (the deployment was
    /// changed by hand meanwhile, ending the policy) is left for the next tick.
    async fn change_deployment(
        &self,
        name: &str,
        change: Change,
        action: &str,
        why: String,
    ) -> Result<()> {
        match self.coord.change_deployment(name, &change).await {
            Ok(_) => {}
            Err(Error::Conflict { .. }) | Err(Error::Invalid { .. }) => return Ok(()),
            Err(e) => return Err(e),
        }
        let event = halyard_core::coord::AuditEvent {
            time_ms: now_ms(),
            key_id: String::new(),
            key_name: "leader".into(),
            role: String::new(),
            node: self.cfg.id.clone(),
            action: action.into(),
            target: name.into(),
            outcome: format!("ok: {why}"),
        };
        if let Err(e) = self.coord.record_audit(&event).await {
            warn!(error = %e, action, model = name, "cannot write the audit log");
        }
        Ok(())
    }

    /// Submit a search's job `id`. Its id is chosen by the search's state, so a leader that
    /// failed after submitting it and before recording it finds it there: that is success.
    async fn submit_child(
        &self,
        parent: &str,
        id: &str,
        spec: halyard_core::spec::JobSpec,
    ) -> Result<()> {
        let mut record = JobRecord::new(id.to_string(), spec);
        record.parent = Some(parent.to_string());
        match self.coord.submit_job(&record).await {
            Ok(_) | Err(Error::Conflict { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// The spec of a trial's job: the search's spec with the trial's parameters, trained
/// data-parallel to epoch `until` from the checkpoint of `previous` (its last rung's job),
/// on the search job's feature table.
fn trial_spec(
    search: &JobRecord,
    params: &halyard_core::search::Params,
    until: u32,
    previous: Option<String>,
    publish: bool,
) -> std::result::Result<halyard_core::spec::JobSpec, String> {
    let mut spec = search.spec.clone();
    spec.search = None;
    halyard_core::search::apply(&mut spec, params)?;
    spec.train.workers = Some(spec.train.workers.unwrap_or(1));
    spec.train.stop_after_epoch = Some(until);
    spec.train.resume_from = previous;
    spec.train.publish = publish;
    if let Some(f) = &mut spec.features {
        f.table_of = Some(search.id.clone());
    }
    Ok(spec)
}
