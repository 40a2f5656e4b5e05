//! The audit log: every mutating call (submit, cancel, resume, deploy and its kinds, key
//! create and revoke) and every refused attempt at one, kept in the coordinator under
//! `audit/<time>-<id>` with time, key, role, node, target and outcome.

use serde::{Deserialize, Serialize};

use super::{Coordinator, encode, put};
use crate::auth::KeyRecord;
use crate::error::Result;

/// One audited call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When, ms since the epoch.
    pub time_ms: i64,
    /// The key's id (for a refused call, the id the caller claimed, if any).
    pub key_id: String,
    /// The key's name (empty when it was not known).
    pub key_name: String,
    /// The key's role (empty when it was not known).
    pub role: String,
    /// The node that took the call.
    pub node: String,
    /// What was asked: `submit`, `cancel`, `resume`, `deploy`, `rollback`, `create-key`, …
    pub action: String,
    /// What it was asked of: a job id or spec name, a model, a key id, a route.
    pub target: String,
    /// `ok`, or what went wrong (`refused: …`, `failed: …`).
    pub outcome: String,
}

/// Records audit events for one node.
#[derive(Debug, Clone)]
pub struct Auditor {
    coord: Coordinator,
    node: String,
}

impl Auditor {
    /// An auditor writing as `node`.
    pub fn new(coord: Coordinator, node: &str) -> Self {
        Auditor {
            coord,
            node: node.to_string(),
        }
    }

    /// Record `action` on `target` by `key` (`claimed`: the id a refused caller sent)
    /// with its outcome. A failure to write is logged, and the call's answer stands.
    pub async fn record(
        &self,
        key: Option<&KeyRecord>,
        claimed: Option<&str>,
        action: &str,
        target: &str,
        outcome: std::result::Result<(), String>,
    ) {
        let event = AuditEvent {
            time_ms: crate::records::now_ms(),
            key_id: key
                .map(|k| k.id.clone())
                .or_else(|| claimed.map(String::from))
                .unwrap_or_default(),
            key_name: key.map(|k| k.name.clone()).unwrap_or_default(),
            role: key.map(|k| k.role.as_str().to_string()).unwrap_or_default(),
            node: self.node.clone(),
            action: action.to_string(),
            target: target.to_string(),
            outcome: match outcome {
                Ok(()) => "ok".into(),
                Err(e) => e,
            },
        };
        if let Err(e) = self.coord.record_audit(&event).await {
            tracing::warn!(error = %e, action, target, "cannot write the audit log");
        }
    }
}

impl Auditor {
    /// Record a refused attempt at `action` on `target` by a caller who sent `token` (its
    /// claimed key id is recorded; the key was not accepted, so no name or role).
    pub async fn refused(
        &self,
        token: Option<&str>,
        action: &str,
        target: &str,
        why: impl std::fmt::Display,
    ) {
        let claimed = token.and_then(crate::auth::parse_token).map(|(id, _)| id);
        self.record(
            None,
            claimed,
            action,
            target,
            Err(format!("refused: {why}")),
        )
        .await;
    }

    /// Record a handled call's outcome (`result`) and pass it on.
    pub async fn call<T>(
        &self,
        caller: &crate::auth::Caller,
        action: &str,
        target: &str,
        result: std::result::Result<T, tonic::Status>,
    ) -> std::result::Result<T, tonic::Status> {
        let outcome = match &result {
            Ok(_) => Ok(()),
            Err(s) => Err(format!("failed ({:?}): {}", s.code(), s.message())),
        };
        self.record(Some(&caller.key), None, action, target, outcome)
            .await;
        result
    }
}

impl Coordinator {
    /// Append an event.
    pub async fn record_audit(&self, event: &AuditEvent) -> Result<()> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        // Zero-padded time first: keys sort by time.
        let key = self.key(&format!("audit/{:015}-{}", event.time_ms, &id[..8]));
        self.kv
            .txn(Vec::new(), vec![put(key, encode(event))])
            .await?;
        Ok(())
    }

    /// Delete the events recorded before `before_ms` (the key names their time, so no
    /// record is read); how many were deleted.
    pub async fn trim_audit(&self, before_ms: i64) -> Result<usize> {
        let prefix = self.key("audit/");
        let old: Vec<String> = self
            .kv
            .range(&prefix)
            .await?
            .into_iter()
            .map(|e| e.key)
            .filter(|k| {
                k[prefix.len()..]
                    .split('-')
                    .next()
                    .and_then(|t| t.parse::<i64>().ok())
                    .is_some_and(|t| t < before_ms)
            })
            .collect();
        // etcd takes at most 128 operations per transaction.
        for chunk in old.chunks(100) {
            let ops = chunk
                .iter()
                .map(|key| crate::kv::TxnOp::Delete { key: key.clone() })
                .collect();
            self.kv.txn(Vec::new(), ops).await?;
        }
        Ok(old.len())
    }

    /// Events at or after `since_ms`, oldest first.
    pub async fn audit_since(&self, since_ms: i64) -> Result<Vec<AuditEvent>> {
        let mut events: Vec<AuditEvent> = self.values("audit/").await?;
        events.retain(|e| e.time_ms >= since_ms);
        events.sort_by_key(|e| e.time_ms);
        Ok(events)
    }
}
