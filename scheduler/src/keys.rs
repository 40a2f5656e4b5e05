//! The key API (`KeyService`, admin only): make, list and revoke API keys. The coordinator
//! keeps each key's hash; the secret is in the answer to `CreateKey` and nowhere else.

use halyard_core::Failure;
use halyard_core::auth::{Caller, KeyRecord, Role, generate, parse_duration_ms};
use halyard_core::coord::{Auditor, Coordinator};
use halyard_core::proto::key_service_server::KeyService;
use halyard_core::proto::{
    AuditEntry, CreateKeyRequest, CreateKeyResponse, KeyInfo, ListAuditRequest, ListAuditResponse,
    ListKeysRequest, ListKeysResponse, RevokeKeyRequest,
};
use halyard_core::records::now_ms;
use tonic::{Request, Response, Status};
use tracing::info;

use crate::error::to_status;

/// The key API over the cluster's coordinator.
#[derive(Debug, Clone)]
pub(crate) struct KeyApi {
    coord: Coordinator,
    audit: Auditor,
}

impl KeyApi {
    pub(crate) fn new(coord: Coordinator, node: &str) -> Self {
        KeyApi {
            audit: Auditor::new(coord.clone(), node),
            coord,
        }
    }

    /// Make a key for `caller`'s request (audited by `create_key`).
    async fn create(
        &self,
        caller: &Caller,
        r: CreateKeyRequest,
    ) -> Result<Response<CreateKeyResponse>, Status> {
        let role = Role::parse(&r.role).ok_or_else(|| {
            Failure::Invalid.status(format!(
                "role {:?}: use admin, operator, submitter, predictor or viewer",
                r.role
            ))
        })?;
        let expires_ms = match r.expires.trim() {
            "" => None,
            text => Some(
                now_ms()
                    + parse_duration_ms(text).ok_or_else(|| {
                        Failure::Invalid.status(format!(
                    "expires {text:?}: write a number and a unit, such as 30d, 12h, 45m or 90s"
                ))
                    })?,
            ),
        };
        let name = if r.name.trim().is_empty() {
            role.as_str().to_string()
        } else {
            r.name.trim().to_string()
        };
        let models = Some(r.models.trim().to_string()).filter(|m| !m.is_empty());
        let key = generate(
            &name,
            role,
            models,
            expires_ms,
            &caller.key.label(),
            now_ms(),
        );
        self.coord
            .create_key(&key.record)
            .await
            .map_err(to_status)?;
        info!(key = %key.record.id, %role, by = %caller.key.id, "api key created");
        Ok(Response::new(CreateKeyResponse {
            key: Some(key_info(&key.record)),
            token: key.token,
        }))
    }
}

/// A key as the API shows it: no secret, no hash.
pub(crate) fn key_info(k: &KeyRecord) -> KeyInfo {
    KeyInfo {
        id: k.id.clone(),
        name: k.name.clone(),
        role: k.role.as_str().into(),
        models: k.models.clone().unwrap_or_default(),
        expires_ms: k.expires_ms.unwrap_or(0),
        created_ms: k.created_ms,
        creator: k.creator.clone(),
        revoked: k.revoked,
    }
}

#[tonic::async_trait]
impl KeyService for KeyApi {
    async fn create_key(
        &self,
        request: Request<CreateKeyRequest>,
    ) -> Result<Response<CreateKeyResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let target = format!("{} ({})", r.name.trim(), r.role.trim());
        let result = self.create(&caller, r).await;
        self.audit
            .call(&caller, "create-key", &target, result)
            .await
    }

    async fn list_keys(
        &self,
        _request: Request<ListKeysRequest>,
    ) -> Result<Response<ListKeysResponse>, Status> {
        let keys = self.coord.list_keys().await.map_err(to_status)?;
        Ok(Response::new(ListKeysResponse {
            keys: keys.iter().map(key_info).collect(),
        }))
    }

    async fn list_audit(
        &self,
        request: Request<ListAuditRequest>,
    ) -> Result<Response<ListAuditResponse>, Status> {
        let since = request.into_inner().since_ms;
        let events = self.coord.audit_since(since).await.map_err(to_status)?;
        Ok(Response::new(ListAuditResponse {
            events: events
                .into_iter()
                .map(|e| AuditEntry {
                    time_ms: e.time_ms,
                    key_id: e.key_id,
                    key_name: e.key_name,
                    role: e.role,
                    node: e.node,
                    action: e.action,
                    target: e.target,
                    outcome: e.outcome,
                })
                .collect(),
        }))
    }

    async fn revoke_key(
        &self,
        request: Request<RevokeKeyRequest>,
    ) -> Result<Response<KeyInfo>, Status> {
        let caller = Caller::of(&request)?;
        let id = request.into_inner().id;
        let result = self.coord.revoke_key(id.trim()).await.map_err(to_status);
        let key = self
            .audit
            .call(&caller, "revoke-key", id.trim(), result)
            .await?;
        info!(key = %key.id, by = %caller.key.id, "api key revoked");
        Ok(Response::new(key_info(&key)))
    }
}
