//! The job API (gRPC): submit, get, list, cancel, watch, logs, cluster status, schedules.

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use halyard_core::Failure;
use halyard_core::auth::{Action, Caller};
use halyard_core::config::SchedulerConfig;
use halyard_core::confine::Roots;
use halyard_core::coord::{Auditor, Coordinator};
use halyard_core::proto::job_service_server::JobService;
use halyard_core::proto::{
    CancelRequest, CancelResponse, ClusterStatusRequest, ClusterStatusResponse,
    CollectGarbageRequest, CollectGarbageResponse, CreateScheduleRequest, DeleteScheduleRequest,
    ExecutorInfo, GarbageFolder, GetJobRequest, GetJobResponse, JobEvent, JobInfo, ListJobsRequest,
    ListJobsResponse, ListSchedulesRequest, ListSchedulesResponse, LogLine, LogsRequest,
    LogsResponse, PauseScheduleRequest, ResumeRequest, ScheduleInfo, ScheduleRun, SubmitRequest,
    SubmitResponse, WatchRequest,
};
use halyard_core::records::{JobRecord, TaskProgress, now_ms};
use halyard_core::schedule::{Schedule, Timing};
use halyard_core::spec::JobSpec;
use tonic::{Request, Response, Status};
use tracing::info;

use crate::error::to_status;

/// How often a watch looks for changes.
const WATCH_POLL: Duration = Duration::from_millis(100);

pub(crate) struct JobApi {
    coord: Coordinator,
    id: String,
    audit: Auditor,
    /// Where jobs may read.
    roots: Roots,
    /// Most unfinished jobs one key may have.
    jobs_per_key: u32,
    /// The object store, for garbage collection.
    store: halyard_core::store::Store,
    /// What garbage collection may remove.
    gc: halyard_core::gc::GcPolicy,
}

impl JobApi {
    pub(crate) fn new(
        coord: Coordinator,
        cfg: &SchedulerConfig,
        store: halyard_core::store::Store,
    ) -> Self {
        JobApi {
            audit: Auditor::new(coord.clone(), &cfg.id),
            coord,
            id: cfg.id.clone(),
            roots: cfg.roots.clone(),
            jobs_per_key: cfg.jobs_per_key,
            store,
            gc: cfg.gc,
        }
    }

    /// Find (and unless `dry_run` delete) the store's garbage.
    async fn garbage(&self, dry_run: bool) -> Result<Response<CollectGarbageResponse>, Status> {
        let found = halyard_core::gc::run(&self.coord, &self.store, &self.gc, dry_run)
            .await
            .map_err(to_status)?;
        Ok(Response::new(CollectGarbageResponse {
            folders: found
                .into_iter()
                .map(|g| GarbageFolder {
                    kind: g.kind.as_str().to_string(),
                    folder: g.folder,
                    objects: g.objects.len() as u64,
                    bytes: g.bytes,
                })
                .collect(),
            dry_run,
            store: self.store.url().to_string(),
        }))
    }

    /// Submit a job for `caller` (audited by the trait method).
    async fn submit_job(
        &self,
        caller: &Caller,
        req: SubmitRequest,
    ) -> Result<Response<SubmitResponse>, Status> {
        if req.protocol_version != halyard_core::PROTOCOL_VERSION {
            return Err(Failure::Refused.status(format!(
                "client speaks protocol {}, this scheduler {}: use matching halyard versions",
                req.protocol_version,
                halyard_core::PROTOCOL_VERSION
            )));
        }
        let spec = JobSpec::from_toml(&req.spec_toml, "job spec").map_err(to_status)?;
        self.admit(&spec, caller).await?;
        let mut job = JobRecord::new(new_job_id(&spec.name), spec);
        job.owner = Some(caller.key.id.clone());
        job.log(
            &format!("scheduler/{}", self.id),
            format!("submitted by key {}", caller.key.label()),
        );
        self.coord.submit_job(&job).await.map_err(to_status)?;
        info!(job = %job.id, name = %job.spec.name, "job submitted");
        Ok(Response::new(SubmitResponse {
            job: Some(job_info(&job, None)),
        }))
    }

    /// Ask a job to stop: any job for a role that may cancel any, else only the caller's.
    async fn cancel_job(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<Response<CancelResponse>, Status> {
        if !caller.may(Action::CancelAny) {
            let job = self.load_job(id).await?;
            own(caller, job.owner.as_deref(), &format!("job {id}"), "cancel")?;
        }
        let job = self.coord.request_cancel(id).await.map_err(to_status)?;
        info!(job = %id, "cancel requested");
        Ok(Response::new(CancelResponse {
            job: Some(job_info(&job, None)),
        }))
    }

    /// Submit a failed or cancelled data-parallel job again, from its last checkpoint.
    async fn resume_job(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<Response<SubmitResponse>, Status> {
        let Some(old) = self.coord.get_job(id).await.map_err(to_status)? else {
            return Err(to_status(halyard_core::Error::NoSuchJob(id.to_string())));
        };
        let old = old.value;
        use halyard_core::records::JobState;
        if !matches!(old.state, JobState::Cancelled | JobState::Failed) {
            return Err(Failure::Refused.status(format!(
                "job {id} is {}: only a cancelled or failed job can be resumed",
                old.state.as_str()
            )));
        }
        if old.spec.train.workers.is_none() || old.spec.search.is_some() {
            return Err(Failure::Refused.status(format!(
                "job {id} kept no checkpoints: only data-parallel jobs ([train] workers) resume; submit it again"
            )));
        }
        let mut spec = old.spec.clone();
        spec.train.resume_from = Some(old.id.clone());
        if let Some(f) = &mut spec.features {
            f.table_of = Some(f.table_of.clone().unwrap_or_else(|| old.id.clone()));
        }
        let mut job = JobRecord::new(new_job_id(&spec.name), spec);
        job.owner = Some(caller.key.id.clone());
        job.log(
            &format!("scheduler/{}", self.id),
            format!(
                "submitted by key {} to resume job {id} from its last checkpoint",
                caller.key.label()
            ),
        );
        self.coord.submit_job(&job).await.map_err(to_status)?;
        info!(job = %job.id, resumes = %id, "job resumed");
        Ok(Response::new(SubmitResponse {
            job: Some(job_info(&job, None)),
        }))
    }

    /// Refuse a job that reads outside the data roots, or one over its key's limit of
    /// unfinished jobs.
    async fn admit(&self, spec: &JobSpec, caller: &Caller) -> Result<(), Status> {
        for location in spec.locations() {
            self.roots.check_url(location).map_err(to_status)?;
        }
        // A scoring job's model must be registered now, not found missing after its
        // feature stage ran.
        if let Some(s) = &spec.score {
            let v = self.coord.resolve_model(s).await.map_err(to_status)?;
            if v.model_type == halyard_core::spec::ModelKind::Nbeats.as_str() {
                return Err(Failure::Invalid.status(format!(
                    "[score] model = {:?}: version {} is a forecaster; batch scoring needs a response model",
                    s.model, v.version
                )));
            }
        }
        let active = self.coord.list_active_jobs().await.map_err(to_status)?;
        let mine = active
            .iter()
            .filter(|j| j.value.owner.as_deref() == Some(caller.key.id.as_str()))
            .count();
        if mine >= self.jobs_per_key as usize {
            return Err(Failure::Refused.status(format!(
                "key {} already has {mine} unfinished jobs, the most one key may have (--jobs-per-key): wait for one to finish or cancel one",
                caller.key.label()
            )));
        }
        Ok(())
    }

    /// Create a schedule for `caller`: the spec is admitted as a submission would be.
    async fn create_schedule_for(
        &self,
        caller: &Caller,
        req: CreateScheduleRequest,
    ) -> Result<Response<ScheduleInfo>, Status> {
        let spec = JobSpec::from_toml(&req.spec_toml, "job spec").map_err(to_status)?;
        self.admit(&spec, caller).await?;
        let blank = |s: &str| (!s.trim().is_empty()).then(|| s.to_string());
        let timing = Timing::parse(blank(&req.every).as_deref(), blank(&req.cron).as_deref())
            .map_err(to_status)?;
        let mut schedule = Schedule::new(&req.name, spec, timing, now_ms()).map_err(to_status)?;
        schedule.owner = Some(caller.key.id.clone());
        match self.coord.create_schedule(&schedule).await {
            Err(halyard_core::Error::Conflict { .. }) => {
                return Err(Failure::Refused.status(format!(
                    "a schedule {} exists: delete it first (halyard schedule delete {})",
                    req.name, req.name
                )));
            }
            other => other.map_err(to_status)?,
        }
        info!(schedule = %schedule.name, timing = %schedule.timing, "schedule created");
        Ok(Response::new(self.schedule_info(&schedule).await?))
    }

    /// Pause, resume or delete a schedule: its owner, or a role that may cancel any job.
    async fn change_schedule(
        &self,
        caller: &Caller,
        name: &str,
        change: Option<bool>,
    ) -> Result<Response<ScheduleInfo>, Status> {
        let Some(s) = self.coord.get_schedule(name).await.map_err(to_status)? else {
            return Err(to_status(halyard_core::Error::NoSuchSchedule(name.into())));
        };
        if !caller.may(Action::CancelAny) {
            own(
                caller,
                s.value.owner.as_deref(),
                &format!("schedule {name}"),
                "change",
            )?;
        }
        let s = match change {
            Some(paused) => self.coord.set_schedule_paused(name, paused, now_ms()).await,
            None => self.coord.delete_schedule(name).await,
        }
        .map_err(to_status)?;
        Ok(Response::new(self.schedule_info(&s).await?))
    }

    async fn schedule_info(&self, s: &Schedule) -> Result<ScheduleInfo, Status> {
        let mut runs = Vec::with_capacity(s.runs.len());
        for r in &s.runs {
            let state = match &r.job {
                Some(id) => self
                    .coord
                    .get_job(id)
                    .await
                    .map_err(to_status)?
                    .map_or("gone".to_string(), |j| j.value.state.as_str().to_string()),
                None => "skipped".into(),
            };
            runs.push(ScheduleRun {
                due_ms: r.due_ms,
                job_id: r.job.clone().unwrap_or_default(),
                state,
                skipped: r.skipped.clone().unwrap_or_default(),
            });
        }
        Ok(ScheduleInfo {
            name: s.name.clone(),
            job_name: s.spec.name.clone(),
            timing: s.timing.to_string(),
            paused: s.paused,
            next_ms: s.next_ms,
            created_ms: s.created_ms,
            runs,
            owner: s.owner.clone().unwrap_or_default(),
        })
    }

    async fn load_job(&self, id: &str) -> Result<JobRecord, Status> {
        self.coord
            .get_job(id)
            .await
            .map_err(to_status)?
            .map(|j| j.value)
            .ok_or_else(|| Failure::NotFound.status(format!("no job {id}")))
    }

    async fn info(&self, id: &str) -> Result<JobInfo, Status> {
        let job = self.load_job(id).await?;
        let progress = self.coord.get_progress(id).await.map_err(to_status)?;
        Ok(job_info(&job, progress.as_ref()))
    }
}

/// A job's log: its record's events and its task's lines, oldest first.
pub(crate) async fn job_lines(
    coord: &Coordinator,
    job: JobRecord,
) -> Result<Vec<halyard_core::records::LogLine>, Status> {
    let mut lines = job.events;
    if let Some(p) = coord.get_progress(&job.id).await.map_err(to_status)? {
        lines.extend(p.lines);
    }
    lines.sort_by_key(|l| l.time_ms);
    Ok(lines)
}

/// The wire view of a job: its record merged with its current task's progress.
pub fn job_info(job: &JobRecord, progress: Option<&TaskProgress>) -> JobInfo {
    let progress = progress.filter(|p| p.attempt == job.attempt);
    JobInfo {
        id: job.id.clone(),
        name: job.spec.name.clone(),
        state: job.state.as_str().to_string(),
        attempt: job.attempt,
        executor: job.executor.clone().unwrap_or_default(),
        created_ms: job.created_ms,
        updated_ms: progress.map_or(job.updated_ms, |p| p.updated_ms.max(job.updated_ms)),
        epoch: if job.state == halyard_core::records::JobState::Succeeded {
            job.spec.progress_total()
        } else {
            progress.map_or(0, |p| p.epoch)
        },
        epochs: job.spec.progress_total(),
        loss: progress.and_then(|p| p.loss).unwrap_or(f64::NAN),
        metrics: job.metrics.clone().into_iter().collect(),
        artifact: job.artifact.clone().unwrap_or_default(),
        error: job.error.clone().unwrap_or_default(),
        model_type: job.spec.kind().to_string(),
        schedule: job.schedule.clone().unwrap_or_default(),
        owner: job.owner.clone().unwrap_or_default(),
        cancel_requested: job.cancel_requested,
        workers: job.workers.clone(),
        trials: job
            .search
            .as_ref()
            .map(|s| {
                s.trials
                    .iter()
                    .map(|t| halyard_core::proto::TrialInfo {
                        index: t.index as u32,
                        params: serde_json::to_string(&t.params).unwrap_or_default(),
                        state: t.state.as_str().into(),
                        losses: t.losses.clone(),
                        epochs: t.epochs,
                        job: t.job.clone().unwrap_or_default(),
                        metrics: t.metrics.clone().into_iter().collect(),
                        error: t.error.clone().unwrap_or_default(),
                        best: s.best == Some(t.index),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Whether `caller` made what `owner` names (`what`, a job or a schedule): a role that may
/// not act on everyone's may `verb` only its own.
fn own(caller: &Caller, owner: Option<&str>, what: &str, verb: &str) -> Result<(), Status> {
    if owner == Some(caller.key.id.as_str()) {
        return Ok(());
    }
    Err(Failure::Forbidden.status(format!(
        "{what} was not made by key {}: role {} may {verb} only its own",
        caller.key.label(),
        caller.key.role
    )))
}

fn new_job_id(name: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{name}-{}", &id[..8])
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<JobEvent, Status>> + Send>>;

#[tonic::async_trait]
impl JobService for JobApi {
    async fn submit(
        &self,
        request: Request<SubmitRequest>,
    ) -> Result<Response<SubmitResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let target = JobSpec::name_in(&req.spec_toml).unwrap_or_default();
        let result = self.submit_job(&caller, req).await;
        self.audit.call(&caller, "submit", &target, result).await
    }

    async fn cancel(
        &self,
        request: Request<CancelRequest>,
    ) -> Result<Response<CancelResponse>, Status> {
        let caller = Caller::of(&request)?;
        let id = request.into_inner().job_id;
        let result = self.cancel_job(&caller, &id).await;
        self.audit.call(&caller, "cancel", &id, result).await
    }

    async fn resume(
        &self,
        request: Request<ResumeRequest>,
    ) -> Result<Response<SubmitResponse>, Status> {
        let caller = Caller::of(&request)?;
        let id = request.into_inner().job_id;
        let result = self.resume_job(&caller, &id).await;
        self.audit.call(&caller, "resume", &id, result).await
    }
    async fn create_schedule(
        &self,
        request: Request<CreateScheduleRequest>,
    ) -> Result<Response<ScheduleInfo>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let name = req.name.clone();
        let result = self.create_schedule_for(&caller, req).await;
        self.audit
            .call(&caller, "create-schedule", &name, result)
            .await
    }

    async fn list_schedules(
        &self,
        request: Request<ListSchedulesRequest>,
    ) -> Result<Response<ListSchedulesResponse>, Status> {
        let name = request.into_inner().name;
        let all = self.coord.schedules().await.map_err(to_status)?;
        let mut schedules = Vec::new();
        for s in all
            .iter()
            .filter(|s| name.is_empty() || s.value.name == name)
        {
            schedules.push(self.schedule_info(&s.value).await?);
        }
        if schedules.is_empty() && !name.is_empty() {
            return Err(to_status(halyard_core::Error::NoSuchSchedule(name)));
        }
        Ok(Response::new(ListSchedulesResponse { schedules }))
    }

    async fn pause_schedule(
        &self,
        request: Request<PauseScheduleRequest>,
    ) -> Result<Response<ScheduleInfo>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let action = if req.paused {
            "pause-schedule"
        } else {
            "resume-schedule"
        };
        let result = self
            .change_schedule(&caller, &req.name, Some(req.paused))
            .await;
        self.audit.call(&caller, action, &req.name, result).await
    }

    async fn delete_schedule(
        &self,
        request: Request<DeleteScheduleRequest>,
    ) -> Result<Response<ScheduleInfo>, Status> {
        let caller = Caller::of(&request)?;
        let name = request.into_inner().name;
        let result = self.change_schedule(&caller, &name, None).await;
        self.audit
            .call(&caller, "delete-schedule", &name, result)
            .await
    }

    async fn get_job(
        &self,
        request: Request<GetJobRequest>,
    ) -> Result<Response<GetJobResponse>, Status> {
        let job = self.info(&request.into_inner().job_id).await?;
        Ok(Response::new(GetJobResponse { job: Some(job) }))
    }

    async fn list_jobs(
        &self,
        _request: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsResponse>, Status> {
        let jobs = self.coord.list_jobs().await.map_err(to_status)?;
        let mut out = Vec::with_capacity(jobs.len());
        for job in jobs {
            let progress = if job.value.state.is_terminal() {
                None
            } else {
                self.coord
                    .get_progress(&job.value.id)
                    .await
                    .map_err(to_status)?
            };
            out.push(job_info(&job.value, progress.as_ref()));
        }
        Ok(Response::new(ListJobsResponse { jobs: out }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let id = request.into_inner().job_id;
        let first = self.info(&id).await?;
        let coord = self.coord.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            // Send every change, starting with the state at the call, until the job ends
            // or the caller hangs up.
            let mut last: Option<JobInfo> = None;
            let mut next = Some(first);
            loop {
                if let Some(info) = next.take() {
                    let end = is_terminal(&info);
                    let event = JobEvent {
                        job: Some(info.clone()),
                    };
                    if tx.send(Ok(event)).await.is_err() || end {
                        return;
                    }
                    last = Some(info);
                }
                tokio::time::sleep(WATCH_POLL).await;
                match coord.get_job(&id).await {
                    Ok(Some(job)) => {
                        let progress = coord.get_progress(&id).await.ok().flatten();
                        let info = job_info(&job.value, progress.as_ref());
                        if last.as_ref() != Some(&info) {
                            next = Some(info);
                        }
                    }
                    Ok(None) => {
                        let _ = tx
                            .send(Err(Failure::NotFound.status(format!("no job {id}"))))
                            .await;
                        return;
                    }
                    // A transient coordinator fault: the watcher keeps watching.
                    Err(_) => {}
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn logs(&self, request: Request<LogsRequest>) -> Result<Response<LogsResponse>, Status> {
        let id = request.into_inner().job_id;
        let job = self.load_job(&id).await?;
        let lines = job_lines(&self.coord, job).await?;
        Ok(Response::new(LogsResponse {
            lines: lines
                .into_iter()
                .map(|l| LogLine {
                    time_ms: l.time_ms,
                    source: l.source,
                    message: l.message,
                })
                .collect(),
        }))
    }

    async fn collect_garbage(
        &self,
        request: Request<CollectGarbageRequest>,
    ) -> Result<Response<CollectGarbageResponse>, Status> {
        let caller = Caller::of(&request)?;
        let dry_run = request.into_inner().dry_run;
        let result = self.garbage(dry_run).await;
        if dry_run {
            return result;
        }
        self.audit.call(&caller, "gc", "object store", result).await
    }

    async fn cluster_status(
        &self,
        _request: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        let leader = self
            .coord
            .leader()
            .await
            .map_err(to_status)?
            .unwrap_or_default();
        let tasks = self.coord.all_tasks().await.map_err(to_status)?;
        let executors = self
            .coord
            .list_executors()
            .await
            .map_err(to_status)?
            .into_iter()
            .map(|e| ExecutorInfo {
                running_tasks: tasks.iter().filter(|t| t.value.executor == e.id).count() as u32,
                id: e.id,
                address: e.address,
                cpu_slots: e.cpu_slots,
                memory_mb: e.memory_mb,
                gpus: e.gpus,
                version: e.version,
                started_ms: e.started_ms,
            })
            .collect();
        let sql_endpoint = self
            .coord
            .sql_endpoint()
            .await
            .map_err(to_status)?
            .unwrap_or_default();
        Ok(Response::new(ClusterStatusResponse {
            leader,
            executors,
            sql_endpoint,
        }))
    }
}

fn is_terminal(job: &JobInfo) -> bool {
    matches!(job.state.as_str(), "succeeded" | "failed" | "cancelled")
}
