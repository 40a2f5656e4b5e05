//! `halyard-client`: the typed Rust SDK of the job API, the model registry and the
//! prediction API over gRPC. It depends on `halyard-core` (the protocol and the job spec)
//! and tonic alone; the CLI built on it is `halyard-cli`.

mod error;

use halyard_core::auth::BearerKey;
use halyard_core::proto::job_service_client::JobServiceClient;
use halyard_core::proto::key_service_client::KeyServiceClient;
use halyard_core::proto::model_service_client::ModelServiceClient;
use halyard_core::proto::prediction_service_client::PredictionServiceClient;
use halyard_core::proto::{
    AudienceInfo, CancelRequest, ClusterStatusRequest, ClusterStatusResponse,
    CollectGarbageRequest, CollectGarbageResponse, CreateKeyRequest, CreateKeyResponse,
    CreateScheduleRequest, DeleteScheduleRequest, DeployRequest, DriftRequest, ExperimentRequest,
    ExperimentResponse, GetJobRequest, GetModelRequest, GetModelResponse, JobInfo, KeyInfo,
    ListAudiencesRequest, ListJobsRequest, ListKeysRequest, ListModelsRequest,
    ListSchedulesRequest, LogLine, LogsRequest, PauseScheduleRequest, PredictRequest,
    PredictResponse, ReportRequest, ReportResponse, ResumeRequest, RevokeKeyRequest, ScheduleInfo,
    SubmitRequest, WatchRequest,
};
use halyard_core::spec::JobSpec;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub use error::{ClientError, Result};
/// The wire protocol's messages, as the calls take and return them.
pub use halyard_core::proto;
/// The job spec: parse and validate a TOML spec before [`Client::submit`].
pub use halyard_core::spec;

/// Default scheduler address.
pub const DEFAULT_SCHEDULER: &str = "127.0.0.1:7070";

fn job_of(job: Option<JobInfo>) -> Result<JobInfo> {
    job.ok_or_else(|| ClientError::Rpc("the scheduler answered without a job".into()))
}

/// A channel whose calls carry the client's key.
type Keyed = InterceptedService<Channel, BearerKey>;

/// A connection to a scheduler.
#[derive(Debug, Clone)]
pub struct Client {
    inner: JobServiceClient<Keyed>,
    models: ModelServiceClient<Keyed>,
    predictions: PredictionServiceClient<Keyed>,
    keys: KeyServiceClient<Keyed>,
    key: KeyText,
    /// The TLS settings it connected with (the SQL port is reached with the same).
    tls: Option<tonic::transport::ClientTlsConfig>,
}

/// The key's text, never printed.
#[derive(Clone)]
struct KeyText(Option<String>);

impl std::fmt::Debug for KeyText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "<redacted>"
        } else {
            "none"
        })
    }
}

impl Client {
    /// The key this client sends (the SQL port asks for it too).
    pub fn key(&self) -> Option<&str> {
        self.key.0.as_deref()
    }

    /// The TLS settings this client connected with, if any.
    pub fn tls(&self) -> Option<&tonic::transport::ClientTlsConfig> {
        self.tls.as_ref()
    }

    /// Connect to `addr` (`HOST:PORT` or `http://HOST:PORT`) without a key: only health
    /// checks pass. See [`Client::connect_with_key`].
    pub async fn connect(addr: &str) -> Result<Client> {
        Client::connect_with_key(addr, None).await
    }

    /// Connect to `addr`, sending `key` (`hk_…`) with every call.
    pub async fn connect_with_key(addr: &str, key: Option<&str>) -> Result<Client> {
        Client::connect_secure(addr, key, None).await
    }

    /// Connect to `addr` over TLS when `tls` is given (trusting its CA), sending `key`.
    pub async fn connect_secure(
        addr: &str,
        key: Option<&str>,
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> Result<Client> {
        let bearer = BearerKey::new(key).map_err(|e| ClientError::Connect {
            addr: addr.into(),
            message: e.to_string(),
        })?;
        let endpoint =
            halyard_core::tls::endpoint(addr, tls.clone()).map_err(|e| ClientError::Connect {
                addr: addr.into(),
                message: e.to_string(),
            })?;
        let channel = endpoint
            .connect_timeout(std::time::Duration::from_secs(3))
            .connect()
            .await
            .map_err(|e| ClientError::Connect {
                addr: addr.into(),
                message: e.to_string(),
            })?;
        Ok(Client {
            inner: JobServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            models: ModelServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            predictions: PredictionServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            keys: KeyServiceClient::with_interceptor(channel, bearer),
            key: KeyText(key.map(|k| k.trim().to_string())),
            tls,
        })
    }

    /// Submit a validated spec.
    pub async fn submit(&self, spec: &JobSpec) -> Result<JobInfo> {
        let resp = self
            .inner
            .clone()
            .submit(SubmitRequest {
                protocol_version: halyard_core::PROTOCOL_VERSION,
                spec_toml: spec.to_toml(),
            })
            .await?;
        job_of(resp.into_inner().job)
    }

    /// Create a schedule: `spec` submitted `every` interval (`24h`) or on a `cron`
    /// pattern (five fields, UTC); give one of them.
    pub async fn create_schedule(
        &self,
        name: &str,
        spec: &JobSpec,
        every: Option<&str>,
        cron: Option<&str>,
    ) -> Result<ScheduleInfo> {
        Ok(self
            .inner
            .clone()
            .create_schedule(CreateScheduleRequest {
                name: name.into(),
                spec_toml: spec.to_toml(),
                every: every.unwrap_or_default().into(),
                cron: cron.unwrap_or_default().into(),
            })
            .await?
            .into_inner())
    }

    /// Every schedule with its runs, or the one named.
    pub async fn schedules(&self, name: Option<&str>) -> Result<Vec<ScheduleInfo>> {
        Ok(self
            .inner
            .clone()
            .list_schedules(ListSchedulesRequest {
                name: name.unwrap_or_default().into(),
            })
            .await?
            .into_inner()
            .schedules)
    }

    /// Pause (or, with `paused = false`, resume) a schedule.
    pub async fn pause_schedule(&self, name: &str, paused: bool) -> Result<ScheduleInfo> {
        Ok(self
            .inner
            .clone()
            .pause_schedule(PauseScheduleRequest {
                name: name.into(),
                paused,
            })
            .await?
            .into_inner())
    }

    /// Delete a schedule (its runs stay as jobs).
    pub async fn delete_schedule(&self, name: &str) -> Result<ScheduleInfo> {
        Ok(self
            .inner
            .clone()
            .delete_schedule(DeleteScheduleRequest { name: name.into() })
            .await?
            .into_inner())
    }

    /// One job.
    pub async fn job(&self, id: &str) -> Result<JobInfo> {
        let resp = self
            .inner
            .clone()
            .get_job(GetJobRequest { job_id: id.into() })
            .await?;
        job_of(resp.into_inner().job)
    }

    /// All jobs, oldest first.
    pub async fn jobs(&self) -> Result<Vec<JobInfo>> {
        Ok(self
            .inner
            .clone()
            .list_jobs(ListJobsRequest {})
            .await?
            .into_inner()
            .jobs)
    }

    /// Ask to cancel a job.
    pub async fn cancel(&self, id: &str) -> Result<JobInfo> {
        let resp = self
            .inner
            .clone()
            .cancel(CancelRequest { job_id: id.into() })
            .await?;
        job_of(resp.into_inner().job)
    }

    /// Submit a cancelled or failed data-parallel job again, continuing from its last
    /// checkpoint; returns the new job.
    pub async fn resume(&self, id: &str) -> Result<JobInfo> {
        let resp = self
            .inner
            .clone()
            .resume(ResumeRequest { job_id: id.into() })
            .await?;
        job_of(resp.into_inner().job)
    }

    /// A job's log.
    pub async fn logs(&self, id: &str) -> Result<Vec<LogLine>> {
        Ok(self
            .inner
            .clone()
            .logs(LogsRequest { job_id: id.into() })
            .await?
            .into_inner()
            .lines)
    }

    /// Stream a job's updates until it ends.
    pub async fn watch(&self, id: &str) -> Result<tonic::Streaming<halyard_core::proto::JobEvent>> {
        Ok(self
            .inner
            .clone()
            .watch(WatchRequest { job_id: id.into() })
            .await?
            .into_inner())
    }

    /// Leader and executors.
    pub async fn cluster(&self) -> Result<ClusterStatusResponse> {
        Ok(self
            .inner
            .clone()
            .cluster_status(ClusterStatusRequest {})
            .await?
            .into_inner())
    }

    /// The object store's garbage: deleted, or with `dry_run` only listed.
    pub async fn collect_garbage(&self, dry_run: bool) -> Result<CollectGarbageResponse> {
        Ok(self
            .inner
            .clone()
            .collect_garbage(CollectGarbageRequest { dry_run })
            .await?
            .into_inner())
    }

    /// Every model with a registered version.
    pub async fn models(&self) -> Result<Vec<GetModelResponse>> {
        Ok(self
            .models
            .clone()
            .list_models(ListModelsRequest {})
            .await?
            .into_inner()
            .models)
    }

    /// Audience versions, oldest first: one audience's, or every one's with `name = None`.
    pub async fn audiences(&self, name: Option<&str>) -> Result<Vec<AudienceInfo>> {
        Ok(self
            .models
            .clone()
            .list_audiences(ListAudiencesRequest {
                name: name.unwrap_or_default().into(),
            })
            .await?
            .into_inner()
            .audiences)
    }

    /// One model: versions and deployment.
    pub async fn model(&self, name: &str) -> Result<GetModelResponse> {
        Ok(self
            .models
            .clone()
            .get_model(GetModelRequest { name: name.into() })
            .await?
            .into_inner())
    }

    /// A model version's report, one self-contained HTML page: `target` is `NAME@VERSION`,
    /// `NAME` (its newest version) or the id of the job that trained it.
    pub async fn report(&self, target: &str) -> Result<ReportResponse> {
        Ok(self
            .models
            .clone()
            .report(ReportRequest {
                target: target.into(),
            })
            .await?
            .into_inner())
    }

    /// Change what serves a model.
    pub async fn deploy(&self, request: DeployRequest) -> Result<GetModelResponse> {
        Ok(self.models.clone().deploy(request).await?.into_inner())
    }

    /// A/B analysis of a model's outcomes.
    pub async fn experiment(&self, name: &str) -> Result<ExperimentResponse> {
        Ok(self
            .models
            .clone()
            .experiment(ExperimentRequest { name: name.into() })
            .await?
            .into_inner())
    }

    /// The drift report of model `name`, as JSON.
    pub async fn drift(&self, name: &str) -> Result<String> {
        Ok(self
            .models
            .clone()
            .drift(DriftRequest { name: name.into() })
            .await?
            .into_inner()
            .json)
    }

    /// Make an API key (admin only); the answer holds its secret, shown this once.
    pub async fn create_key(&self, request: CreateKeyRequest) -> Result<CreateKeyResponse> {
        Ok(self.keys.clone().create_key(request).await?.into_inner())
    }

    /// The audit log since `since_ms` (ms since the epoch; admin and operator).
    pub async fn audit(&self, since_ms: i64) -> Result<Vec<halyard_core::proto::AuditEntry>> {
        Ok(self
            .keys
            .clone()
            .list_audit(halyard_core::proto::ListAuditRequest { since_ms })
            .await?
            .into_inner()
            .events)
    }

    /// Every API key (admin only), without secrets.
    pub async fn keys(&self) -> Result<Vec<KeyInfo>> {
        Ok(self
            .keys
            .clone()
            .list_keys(ListKeysRequest {})
            .await?
            .into_inner()
            .keys)
    }

    /// Revoke the key with this id (admin only).
    pub async fn revoke_key(&self, id: &str) -> Result<KeyInfo> {
        Ok(self
            .keys
            .clone()
            .revoke_key(RevokeKeyRequest { id: id.into() })
            .await?
            .into_inner())
    }

    /// Score records through the gRPC prediction API.
    pub async fn predict(&self, request: PredictRequest) -> Result<PredictResponse> {
        Ok(self
            .predictions
            .clone()
            .predict(request)
            .await?
            .into_inner())
    }
}
