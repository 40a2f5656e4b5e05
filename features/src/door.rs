//! The door of the SQL (Ballista) scheduler's port: Ballista 55 has no authentication of
//! its own, so every call is checked here first. The executors' calls (register, poll,
//! heartbeat, task status) need a node's key; a query needs a key whose role may read with
//! SQL, and a query that writes (`COPY … TO`, `INSERT`, DDL) or comes as a physical or
//! Substrait plan (which this door does not read) one whose role may write. Every table a
//! query reads and every `COPY` target must lie under the data roots: a query that names
//! another location is refused before it is planned (and should one slip by, each node's
//! object stores refuse it again, `crate::stores`).

use std::sync::Arc;
use std::task::{Context, Poll};

use ballista_core::serde::BallistaLogicalExtensionCodec;
use ballista_core::serde::protobuf::ExecuteQueryParams;
use ballista_core::serde::protobuf::execute_query_params::Query;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::listing::ListingTable;
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion_proto::logical_plan::AsLogicalPlan;
use datafusion_proto::protobuf::LogicalPlanNode;
use futures::future::BoxFuture;
use halyard_core::auth::{Action, Verifier, bearer};
use halyard_core::confine::Roots;
use halyard_core::coord::Auditor;
use http_body_util::BodyExt;
use prost::Message;
use tonic::Status;
use tonic::body::Body;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// The largest query (its serialised plan) the door reads.
const MAX_QUERY_BYTES: usize = 64 << 20;

/// The result fetch of the scheduler's Flight proxy (served with TLS only): Ballista's
/// fetches carry no metadata, so their key comes in the user agent
/// ([`crate::session::KEY_AGENT`]).
const FETCH: &str = "/arrow.flight.protocol.FlightService/DoGet";

/// What a Ballista scheduler method needs: `None` for a method the door does not know
/// (refused), `Some(None)` for a query whose plan decides.
fn action_of(path: &str) -> Option<Option<Action>> {
    if path == FETCH {
        return Some(Some(Action::SqlRead));
    }
    let method = path.strip_prefix("/ballista.protobuf.SchedulerGrpc/")?;
    Some(match method {
        "RegisterExecutor"
        | "PollWork"
        | "HeartBeatFromExecutor"
        | "UpdateTaskStatus"
        | "ExecutorStopped" => Some(Action::Internal),
        "GetJobStatus"
        | "GetJobMetrics"
        | "CancelJob"
        | "CleanJobData"
        | "CreateUpdateSession"
        | "RemoveSession" => Some(Action::SqlRead),
        "ExecuteQuery" | "ExecuteQueryPush" => None,
        _ => return None,
    })
}

/// Whether a decoded plan writes or defines anything.
fn writes(plan: &LogicalPlan) -> bool {
    plan.exists(|p| {
        Ok(matches!(
            p,
            LogicalPlan::Copy(_) | LogicalPlan::Dml(_) | LogicalPlan::Ddl(_)
        ))
    })
    .unwrap_or(true)
}

/// Every location a plan reads (its listing tables' paths) or writes (`COPY` targets).
fn locations(plan: &LogicalPlan) -> Vec<String> {
    let mut out = Vec::new();
    let _ = plan.apply_with_subqueries(|p| {
        match p {
            LogicalPlan::Copy(copy) => out.push(copy.output_url.clone()),
            LogicalPlan::TableScan(scan) => {
                if let Ok(provider) = source_as_provider(&scan.source)
                    && let Some(table) = provider.downcast_ref::<ListingTable>()
                {
                    out.extend(table.table_paths().iter().map(|u| u.as_str().to_string()));
                }
            }
            _ => {}
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out
}

/// The key a call presents: its bearer token, or, for a result fetch, the key in its user
/// agent.
fn token_of(req: &http::Request<Body>, path: &str) -> Option<String> {
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    header(http::header::AUTHORIZATION)
        .and_then(bearer)
        .or_else(|| {
            (path == FETCH)
                .then(|| header(http::header::USER_AGENT))
                .flatten()
                .and_then(|agent| agent.strip_prefix(crate::session::KEY_AGENT))
                .and_then(|rest| rest.split_whitespace().next())
        })
        .map(String::from)
}

/// The tower layer that puts [`SqlDoor`] before the scheduler's services.
#[derive(Clone)]
pub struct SqlDoorLayer {
    verifier: Verifier,
    /// Decodes plans (Halyard's functions and object stores).
    ctx: Arc<SessionContext>,
    /// Where queries may read and write.
    roots: Arc<Roots>,
    /// Records refused writes, node calls and locations outside the roots.
    audit: Option<Auditor>,
    /// Whether node calls need a client certificate of the cluster's CA (mutual TLS).
    node_certificates: bool,
}

impl SqlDoorLayer {
    /// A door checking keys with `verifier`, decoding plans in `ctx` and holding their
    /// locations to `roots`.
    pub fn new(verifier: Verifier, ctx: SessionContext, roots: Roots) -> Self {
        SqlDoorLayer {
            verifier,
            audit: None,
            node_certificates: false,
            ctx: Arc::new(ctx),
            roots: Arc::new(roots),
        }
    }

    /// The door, recording refusals with `audit`.
    pub fn with_audit(mut self, audit: Option<Auditor>) -> Self {
        self.audit = audit;
        self
    }

    /// The door, requiring (`true`) a client certificate that the cluster's CA signed on
    /// the executors' calls, as Halyard's own node routes do under mutual TLS.
    pub fn with_node_certificates(mut self, required: bool) -> Self {
        self.node_certificates = required;
        self
    }

    /// The action a call needs, reading the plan of a query; the request is rebuilt
    /// around the bytes read.
    async fn action(
        &self,
        req: http::Request<Body>,
    ) -> Result<(Action, http::Request<Body>), Status> {
        match action_of(req.uri().path()) {
            None => Err(Status::unimplemented(format!(
                "the SQL port does not serve {}",
                req.uri().path()
            ))),
            Some(Some(action)) => Ok((action, req)),
            Some(None) => {
                let (parts, body) = req.into_parts();
                let bytes = http_body_util::Limited::new(body, MAX_QUERY_BYTES)
                    .collect()
                    .await
                    .map_err(|e| Status::invalid_argument(format!("cannot read the query: {e}")))?
                    .to_bytes();
                let action = self.query_action(&bytes)?;
                Ok((
                    action,
                    http::Request::from_parts(parts, Body::new(http_body_util::Full::new(bytes))),
                ))
            }
        }
    }

    /// `SqlRead` for a logical plan that only reads, else `SqlWrite`.
    fn query_action(&self, framed: &[u8]) -> Result<Action, Status> {
        let unreadable = || Status::invalid_argument("the query is not one gRPC message");
        // gRPC framing: a compression flag, a length, the message.
        let (head, message) = framed.split_at_checked(5).ok_or_else(unreadable)?;
        if head[0] != 0 {
            // A compressed query is not read here: only a writer may send one.
            return Ok(Action::SqlWrite);
        }
        let params = ExecuteQueryParams::decode(message).map_err(|_| unreadable())?;
        let Some(Query::LogicalPlan(plan)) = params.query else {
            return Ok(Action::SqlWrite);
        };
        let plan = LogicalPlanNode::try_decode(&plan)
            .and_then(|node| {
                node.try_into_logical_plan(
                    &self.ctx.task_ctx(),
                    &BallistaLogicalExtensionCodec::default(),
                )
            })
            .map_err(|e| Status::invalid_argument(format!("cannot read the query plan: {e}")))?;
        for location in locations(&plan) {
            self.roots
                .check_url(&location)
                .map_err(|e| Status::permission_denied(e.to_string()))?;
        }
        Ok(if writes(&plan) {
            Action::SqlWrite
        } else {
            Action::SqlRead
        })
    }

    async fn admit(&self, req: http::Request<Body>) -> Result<http::Request<Body>, Status> {
        let path = req.uri().path().to_string();
        let token = token_of(&req, &path);
        let certified = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(TlsConnectInfo::peer_certs)
            .is_some_and(|certs| !certs.is_empty());
        let (action, mut req) = match self.action(req).await {
            Ok(checked) => checked,
            Err(status) => {
                // A query naming a location outside the data roots.
                if status.code() == tonic::Code::PermissionDenied {
                    self.audit_refusal(token.as_deref(), "sql", &path, &status)
                        .await;
                }
                return Err(status);
            }
        };
        if action == Action::Internal && self.node_certificates && !certified {
            let status = Status::permission_denied(
                "a node's call to the SQL port needs a client certificate of the cluster's CA (--tls-cert, --tls-key, --tls-ca)",
            );
            self.audit_refusal(token.as_deref(), action.as_str(), &path, &status)
                .await;
            return Err(status);
        }
        match self.verifier.check(token.as_deref(), action, None).await {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
                Ok(req)
            }
            Err(denied) => {
                tracing::info!(%path, reason = %denied, "sql call refused");
                let status = Status::from(denied);
                if matches!(action, Action::SqlWrite | Action::Internal)
                    || status.code() == tonic::Code::PermissionDenied
                {
                    self.audit_refusal(token.as_deref(), action.as_str(), &path, &status)
                        .await;
                }
                Err(status)
            }
        }
    }

    /// Record a refused call in the audit log.
    async fn audit_refusal(&self, token: Option<&str>, action: &str, path: &str, status: &Status) {
        if let Some(audit) = &self.audit {
            audit.refused(token, action, path, status.message()).await;
        }
    }
}

impl<S> tower::Layer<S> for SqlDoorLayer {
    type Service = SqlDoor<S>;

    fn layer(&self, inner: S) -> SqlDoor<S> {
        SqlDoor {
            inner,
            door: self.clone(),
        }
    }
}

/// The door service: a refused call is answered here and never reaches Ballista.
#[derive(Clone)]
pub struct SqlDoor<S> {
    inner: S,
    door: SqlDoorLayer,
}

impl<S> tower::Service<http::Request<Body>> for SqlDoor<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // The clone that was made ready serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let door = self.door.clone();
        Box::pin(async move {
            match door.admit(req).await {
                Ok(req) => inner.call(req).await,
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}
