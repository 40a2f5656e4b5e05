//! The model registry API (gRPC): models and their versions, deployments (deploy, split,
//! promote, rollback, undeploy) and the A/B analysis of outcomes. Any scheduler answers:
//! deployment changes are compare-and-swap writes, not leader work.

use halyard_core::Failure;
use halyard_core::auth::Caller;
use halyard_core::coord::{Auditor, Coordinator};
use halyard_core::placement::Placement;
use halyard_core::proto::deploy_request::Change as WireChange;
use halyard_core::proto::model_service_server::ModelService;
use halyard_core::proto::{
    AudienceInfo, DeployRequest, DeploymentInfo, DriftRequest, DriftResponse, ExperimentRequest,
    ExperimentResponse, GetModelRequest, GetModelResponse, ListAudiencesRequest,
    ListAudiencesResponse, ListModelsRequest, ListModelsResponse, ModelVersionInfo, ReportRequest,
    ReportResponse, ServedBy, StartBandit, StartRamp, VariantInfo,
};
use halyard_core::registry::{
    BanditPolicy, CANARY, Change, Deployment, MetricDecl, ModelVersion, PRODUCTION, RampPolicy,
    ServingInfo, Variant,
};
use tonic::{Request, Response, Status};
use tracing::info;

use crate::error::to_status;

pub(crate) struct ModelApi {
    coord: Coordinator,
    audit: Auditor,
    /// The node's gateway: experiment reports include its event log's counts as they
    /// stand.
    gateway: std::sync::Arc<halyard_serving::gateway::Gateway>,
}

impl ModelApi {
    pub(crate) fn new(
        coord: Coordinator,
        node: &str,
        gateway: std::sync::Arc<halyard_serving::gateway::Gateway>,
    ) -> Self {
        ModelApi {
            audit: Auditor::new(coord.clone(), node),
            coord,
            gateway,
        }
    }

    /// Apply a deployment change (audited by `deploy`).
    async fn change(&self, req: DeployRequest) -> Result<Response<GetModelResponse>, Status> {
        let change = match req.change {
            Some(WireChange::Deploy(d)) => Change::Deploy {
                version: d.version,
                alias: or_default(d.alias, PRODUCTION),
                percent: d.percent,
            },
            Some(WireChange::Split(s)) => Change::Split(
                s.variants
                    .into_iter()
                    .map(|v| Variant {
                        version: v.version,
                        weight: v.weight,
                    })
                    .collect(),
            ),
            Some(WireChange::Promote(p)) => Change::Promote {
                alias: or_default(p.alias, CANARY),
            },
            Some(WireChange::Rollback(_)) => Change::Rollback,
            Some(WireChange::Undeploy(_)) => Change::Undeploy,
            Some(WireChange::Bandit(b)) => Change::Bandit(BanditPolicy {
                versions: b.versions,
                floor_bp: b.floor_bp,
                every_secs: b.every_secs,
            }),
            Some(WireChange::Replicas(r)) => Change::Replicas((r.count > 0).then_some(r.count)),
            Some(WireChange::Metrics(m)) => {
                Change::Metrics(MetricDecl::parse_all(&m.metrics).map_err(to_status)?)
            }
            Some(WireChange::Ramp(r)) => Change::Ramp(RampPolicy {
                canary: r.version,
                steps: r.steps,
                step: 0,
                step_secs: r.step_secs,
                guard_conversion: r.guard_conversion,
                guard_errors: r.guard_errors,
                guard_latency: r.guard_latency,
                guard_metrics: r.guard_metrics,
            }),
            None => return Err(Failure::Invalid.status("the request names no change")),
        };
        let d = self
            .coord
            .change_deployment(&req.name, &change)
            .await
            .map_err(to_status)?;
        info!(model = %req.name, change = ?change, variants = ?d.current.variants, "deployment changed");
        Ok(Response::new(self.model(&req.name).await?))
    }

    async fn model(&self, name: &str) -> Result<GetModelResponse, Status> {
        let versions = self.coord.model_versions(name).await.map_err(to_status)?;
        if versions.is_empty() {
            return Err(Failure::NotFound.status(format!(
                "no model {name}: no job named {name} has published a version (see `halyard models`)"
            )));
        }
        let deployment = self.coord.deployment(name).await.map_err(to_status)?;
        Ok(GetModelResponse {
            name: name.to_string(),
            versions: versions
                .into_iter()
                .map(|v| ModelVersionInfo {
                    version: v.version,
                    artifact: v.artifact,
                    model_type: v.model_type,
                    metrics: v.metrics.into_iter().collect(),
                    job_id: v.job_id,
                    data_source: v.data_source,
                    data_digest: v.data_digest,
                    created_ms: v.created_ms,
                    profile_json: v.profile.map(|p| p.to_string()).unwrap_or_default(),
                    sealed_with: v.sealed_with.unwrap_or_default(),
                })
                .collect(),
            deployment: match deployment {
                Some(d) => {
                    let placed = self.coord.placement(name).await.map_err(to_status)?;
                    // Who serves what, as this node's gateway last read it (every 100 ms).
                    let serving = self.gateway.serving();
                    Some(deployment_info(&d, placed.as_ref(), &serving))
                }
                None => None,
            },
        })
    }
}

impl ModelApi {
    /// The version `target` names: `NAME@VERSION`, a job id (the version it published) or
    /// `NAME` (its newest version).
    async fn version_of(&self, target: &str) -> Result<ModelVersion, Status> {
        let missing = |what: String| Failure::NotFound.status(what);
        if let Some((name, version)) = target.rsplit_once('@') {
            let version: u64 = version.parse().map_err(|_| {
                Failure::Invalid.status(format!(
                    "{target:?}: the version after @ must be a number, as in {name}@3"
                ))
            })?;
            return self
                .coord
                .model_version(name, version)
                .await
                .map_err(to_status)?
                .ok_or_else(|| {
                    missing(format!(
                        "model {name} has no version {version} (see `halyard model {name}`)"
                    ))
                });
        }
        if let Some(job) = self.coord.get_job(target).await.map_err(to_status)? {
            let job = job.value;
            let Some(version) = job.model_version else {
                return Err(missing(format!(
                    "job {target} published no model version (it is {}): a report needs a trained version",
                    job.state.as_str()
                )));
            };
            return self
                .coord
                .model_version(&job.spec.name, version)
                .await
                .map_err(to_status)?
                .ok_or_else(|| {
                    missing(format!(
                        "job {target}'s version {version} is not registered"
                    ))
                });
        }
        self.coord
            .model_versions(target)
            .await
            .map_err(to_status)?
            .pop()
            .ok_or_else(|| {
                missing(format!(
                    "no job and no model named {target}: name a model (NAME or NAME@VERSION, see `halyard models`) or a job (see `halyard jobs`)"
                ))
            })
    }

    /// The report page of the version `target` names.
    pub(crate) async fn render_report(&self, target: &str) -> Result<ReportResponse, Status> {
        let v = self.version_of(target.trim()).await?;
        let lines = match self.coord.get_job(&v.job_id).await.map_err(to_status)? {
            Some(job) => crate::service::job_lines(&self.coord, job.value).await?,
            None => Vec::new(),
        };
        Ok(ReportResponse {
            html: crate::report::render(&v, &lines),
            name: v.name,
            version: v.version,
        })
    }
}

/// A deployment as the API shows it, with where it is `placed` and who `serving` it.
fn deployment_info(
    d: &Deployment,
    placed: Option<&Placement>,
    serving: &[ServingInfo],
) -> DeploymentInfo {
    DeploymentInfo {
        replicas: d.replicas.unwrap_or(0),
        metrics: d.metrics.iter().map(MetricDecl::text).collect(),
        placed_on: placed.map(|p| p.executors.clone()).unwrap_or_default(),
        unplaced: placed.map(Placement::short).unwrap_or(0),
        memory_bytes: placed.map(|p| p.memory_bytes).unwrap_or(0),
        served_by: serving
            .iter()
            .filter_map(|s| {
                Some(ServedBy {
                    executor: s.executor.clone(),
                    versions: s.models.get(&d.name)?.clone(),
                })
            })
            .collect(),
        variants: d
            .current
            .variants
            .iter()
            .map(|v| VariantInfo {
                version: v.version,
                weight: v.weight,
            })
            .collect(),
        aliases: d.current.aliases.clone().into_iter().collect(),
        history: d.history.len() as u32,
        updated_ms: d.updated_ms,
        bandit: d.current.bandit.as_ref().map(|b| StartBandit {
            versions: b.versions.clone(),
            floor_bp: b.floor_bp,
            every_secs: b.every_secs,
        }),
        ramp: d.current.ramp.as_ref().map(|r| StartRamp {
            version: r.canary,
            steps: r.steps.clone(),
            step_secs: r.step_secs,
            guard_conversion: r.guard_conversion,
            guard_errors: r.guard_errors,
            guard_latency: r.guard_latency,
            guard_metrics: r.guard_metrics,
            step: r.step as u32,
        }),
    }
}

fn or_default(alias: String, default: &str) -> String {
    if alias.is_empty() {
        default.to_string()
    } else {
        alias
    }
}

#[tonic::async_trait]
impl ModelService for ModelApi {
    async fn list_models(
        &self,
        _request: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        let mut models = Vec::new();
        for name in self.coord.model_names().await.map_err(to_status)? {
            models.push(self.model(&name).await?);
        }
        Ok(Response::new(ListModelsResponse { models }))
    }

    async fn get_model(
        &self,
        request: Request<GetModelRequest>,
    ) -> Result<Response<GetModelResponse>, Status> {
        Ok(Response::new(self.model(&request.into_inner().name).await?))
    }

    async fn deploy(
        &self,
        request: Request<DeployRequest>,
    ) -> Result<Response<GetModelResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let action = match &req.change {
            Some(WireChange::Deploy(_)) => "deploy",
            Some(WireChange::Split(_)) => "split",
            Some(WireChange::Promote(_)) => "promote",
            Some(WireChange::Rollback(_)) => "rollback",
            Some(WireChange::Undeploy(_)) => "undeploy",
            Some(WireChange::Bandit(_)) => "bandit",
            Some(WireChange::Ramp(_)) => "ramp",
            Some(WireChange::Replicas(_)) => "replicas",
            Some(WireChange::Metrics(_)) => "metrics",
            None => "deploy",
        };
        let name = req.name.clone();
        let result = self.change(req).await;
        self.audit.call(&caller, action, &name, result).await
    }

    async fn report(
        &self,
        request: Request<ReportRequest>,
    ) -> Result<Response<ReportResponse>, Status> {
        Ok(Response::new(
            self.render_report(&request.into_inner().target).await?,
        ))
    }

    async fn list_audiences(
        &self,
        request: Request<ListAudiencesRequest>,
    ) -> Result<Response<ListAudiencesResponse>, Status> {
        let name = request.into_inner().name;
        let name = (!name.is_empty()).then_some(name);
        let found = self
            .coord
            .audiences(name.as_deref())
            .await
            .map_err(to_status)?;
        if found.is_empty()
            && let Some(n) = &name
        {
            return Err(Failure::NotFound.status(format!(
                "no audience {n}: a [score] job named {n} writes one (halyard audiences lists them)"
            )));
        }
        let audiences = found
            .into_iter()
            .map(|a| AudienceInfo {
                name: a.name,
                version: a.version,
                location: a.location,
                job_id: a.job_id,
                model: a.model,
                model_version: a.model_version,
                rule: a.rule,
                size: a.size,
                scored: a.scored,
                excluded: a.excluded,
                rejected: a.rejected,
                entered: a.entered,
                left: a.left,
                created_ms: a.created_ms,
            })
            .collect();
        Ok(Response::new(ListAudiencesResponse { audiences }))
    }

    async fn experiment(
        &self,
        request: Request<ExperimentRequest>,
    ) -> Result<Response<ExperimentResponse>, Status> {
        use halyard_serving::experiment::never_deployed;
        let name = request.into_inner().name;
        match self
            .gateway
            .experiment_report(&name)
            .await
            .map_err(to_status)?
        {
            Some(r) => Ok(Response::new(r)),
            None => Err(Failure::NotFound.status(never_deployed(&name))),
        }
    }

    async fn drift(
        &self,
        request: Request<DriftRequest>,
    ) -> Result<Response<DriftResponse>, Status> {
        let name = request.into_inner().name;
        let r = halyard_serving::drift::report(&self.coord, &name)
            .await
            .map_err(|e| e.to_status())?;
        let json = serde_json::to_string(&r).expect("a report serialises");
        Ok(Response::new(DriftResponse { json }))
    }
}
