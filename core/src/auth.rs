//! Who may do what. API keys (the coordinator stores their SHA-256, never the secret), the
//! roles, the one role → action table every route is checked against ([`MATRIX`]), and the
//! check itself ([`KeyRecord::authorize`]).
//!
//! A key is the text `hk_<id>_<secret>`: `id` (12 hex digits) names the record, `secret`
//! (64 hex digits, 256 random bits) is checked against the record's hash. The secret is
//! printed once, when the key is made.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::RngCore;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::Failure;
use crate::data::digest;

/// Prefix of every key's text.
pub const KEY_PREFIX: &str = "hk_";

/// The node-only route on which a data-parallel group's rank opens its ring link to the
/// next rank (served by `halyard-collective`, guarded by the door's route table).
pub const RING_LINK_PATH: &str = "/v1/collective/link";

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, keys included.
    Admin,
    /// Deploy, promote, roll back, undeploy; cancel any job; read; write SQL.
    Operator,
    /// Submit jobs, cancel their own, read.
    Submitter,
    /// Score and feed back outcomes for the models its pattern matches.
    Predictor,
    /// Read only.
    Viewer,
}

impl Role {
    /// Every role, most powerful first.
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Operator,
        Role::Submitter,
        Role::Predictor,
        Role::Viewer,
    ];

    /// The role's name, as flags and records write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Submitter => "submitter",
            Role::Predictor => "predictor",
            Role::Viewer => "viewer",
        }
    }

    /// The role named `name`.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request asks to do: every route of every node is one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// List and read jobs, their logs and the cluster.
    ReadJobs,
    /// Submit or resume a job.
    Submit,
    /// Cancel a job the caller's key submitted.
    CancelOwn,
    /// Cancel any job.
    CancelAny,
    /// List and read models, versions, deployments and experiments.
    ReadModels,
    /// Deploy, split, promote, roll back or undeploy.
    Deploy,
    /// Score, forecast, feed back an outcome, read a model's input schema.
    Predict,
    /// Run SQL queries that read.
    SqlRead,
    /// Run SQL that defines tables or writes files (DDL, `COPY … TO`).
    SqlWrite,
    /// Make, list and revoke keys.
    ManageKeys,
    /// Read the audit log.
    ReadAudit,
    /// List and delete the object store's garbage (`halyard gc`).
    CollectGarbage,
    /// Scrape a node's metrics (`GET /metrics`).
    ReadMetrics,
    /// A node's call to another node (the all-reduce ring, forwarded predictions).
    Internal,
}

impl Action {
    /// The action's name in messages and `docs/security.md`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::ReadJobs => "read jobs",
            Action::Submit => "submit jobs",
            Action::CancelOwn => "cancel own jobs",
            Action::CancelAny => "cancel any job",
            Action::ReadModels => "read models",
            Action::Deploy => "deploy models",
            Action::Predict => "predict",
            Action::SqlRead => "query with SQL",
            Action::SqlWrite => "define tables and write with SQL",
            Action::ManageKeys => "manage keys",
            Action::ReadAudit => "read the audit log",
            Action::CollectGarbage => "collect garbage",
            Action::ReadMetrics => "read metrics",
            Action::Internal => "call nodes as a node",
        }
    }
}

use Role::{Admin, Operator, Predictor, Submitter, Viewer};

/// The role → action matrix: the roles each action is open to. The one place rights are
/// written; `docs/security.md` shows the same table.
pub const MATRIX: &[(Action, &[Role])] = &[
    (Action::ReadJobs, &[Admin, Operator, Submitter, Viewer]),
    (Action::Submit, &[Admin, Operator, Submitter]),
    (Action::CancelOwn, &[Admin, Operator, Submitter]),
    (Action::CancelAny, &[Admin, Operator]),
    (Action::ReadModels, &[Admin, Operator, Submitter, Viewer]),
    (Action::Deploy, &[Admin, Operator]),
    (Action::Predict, &[Admin, Operator, Predictor]),
    (Action::SqlRead, &[Admin, Operator, Submitter]),
    (Action::SqlWrite, &[Admin, Operator]),
    (Action::ManageKeys, &[Admin]),
    (Action::ReadAudit, &[Admin, Operator]),
    (Action::CollectGarbage, &[Admin, Operator]),
    (Action::ReadMetrics, &[Admin, Operator, Submitter, Viewer]),
    (Action::Internal, &[Admin]),
];

/// Whether `role` may do `action`.
pub fn allows(role: Role, action: Action) -> bool {
    MATRIX
        .iter()
        .any(|(a, roles)| *a == action && roles.contains(&role))
}

/// A key as the coordinator keeps it: everything but the secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The key's id: 12 hex digits, the middle of its text.
    pub id: String,
    /// A name people recognise it by.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// `sha256:<hex>` of the secret.
    pub secret_sha256: String,
    /// For a predictor: the models it may score, a pattern where `*` matches any text
    /// (`campaign-*`); `None` is every model.
    #[serde(default)]
    pub models: Option<String>,
    /// When it stops working, ms since the epoch; `None` never.
    #[serde(default)]
    pub expires_ms: Option<i64>,
    /// When it was made.
    pub created_ms: i64,
    /// The key (id and name) that made it, or `bootstrap`.
    pub creator: String,
    /// Revoked: refused from then on.
    #[serde(default)]
    pub revoked: bool,
}

/// A key just made: its record and its text, shown once.
#[derive(Clone)]
pub struct NewKey {
    /// What the coordinator keeps.
    pub record: KeyRecord,
    /// `hk_<id>_<secret>`: what the caller sends.
    pub token: String,
}

impl fmt::Debug for NewKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewKey")
            .field("record", &self.record)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Make a key: a fresh id and 256-bit secret.
pub fn generate(
    name: &str,
    role: Role,
    models: Option<String>,
    expires_ms: Option<i64>,
    creator: &str,
    now_ms: i64,
) -> NewKey {
    let mut rng = rand::rng();
    let mut id = [0u8; 6];
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    let (id, secret) = (hex::encode(id), hex::encode(secret));
    NewKey {
        token: format!("{KEY_PREFIX}{id}_{secret}"),
        record: KeyRecord {
            id,
            name: name.to_string(),
            role,
            secret_sha256: digest(secret.as_bytes()),
            models,
            expires_ms,
            created_ms: now_ms,
            creator: creator.to_string(),
            revoked: false,
        },
    }
}

/// The id and the secret of a key's text, if it has the shape of one.
pub fn parse_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.trim().strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex_of = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex_of(id, 12) && hex_of(secret, 64)).then_some((id, secret))
}

/// Whether `name` matches `pattern`, where `*` matches any text (none included).
pub fn matches_pattern(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No key came with the request.
    #[error(
        "no API key: send `authorization: Bearer hk_…` (the CLI reads --key or HALYARD_KEY; `halyard standalone` writes an admin key to its data directory)"
    )]
    Missing,
    /// The key is not one the cluster knows (or its secret is wrong).
    #[error("unknown API key: check it, or make one with `halyard keys create`")]
    Unknown,
    /// The key expired.
    #[error("API key {0} expired: make a new one with `halyard keys create`")]
    Expired(String),
    /// The key was revoked.
    #[error("API key {0} was revoked")]
    Revoked(String),
    /// The key's role does not allow the action.
    #[error("API key {key} has role {role}, which may not {action}; roles that may: {allowed}")]
    Forbidden {
        /// The key's id and name.
        key: String,
        /// Its role.
        role: Role,
        /// What was asked.
        action: &'static str,
        /// The roles that may.
        allowed: String,
    },
    /// The key could not be checked: the coordinator is unreachable.
    #[error("the API key cannot be checked now: {0}")]
    Unavailable(String),
    /// A predictor key outside its models.
    #[error("API key {key} may score models matching {pattern:?}, not {model:?}")]
    OutOfScope {
        /// The key's id and name.
        key: String,
        /// Its pattern.
        pattern: String,
        /// The model asked for.
        model: String,
    },
}

impl Denied {
    /// 401 (no usable credential) or 403 (a known key without the right).
    pub fn failure(&self) -> Failure {
        match self {
            Denied::Missing | Denied::Unknown | Denied::Expired(_) | Denied::Revoked(_) => {
                Failure::Unauthenticated
            }
            Denied::Forbidden { .. } | Denied::OutOfScope { .. } => Failure::Forbidden,
            Denied::Unavailable(_) => Failure::Unavailable,
        }
    }
}

impl KeyRecord {
    /// `id (name)`, how messages and the audit log name the key.
    pub fn label(&self) -> String {
        format!("{} ({})", self.id, self.name)
    }

    /// Whether `secret` is this key's (compared in constant time).
    pub fn secret_matches(&self, secret: &str) -> bool {
        digest(secret.as_bytes())
            .as_bytes()
            .ct_eq(self.secret_sha256.as_bytes())
            .into()
    }

    /// Whether this key, presented with `secret` at `now_ms`, may do `action` (on
    /// `model`, for a model-scoped action).
    pub fn authorize(
        &self,
        secret: &str,
        now_ms: i64,
        action: Action,
        model: Option<&str>,
    ) -> Result<(), Denied> {
        if !self.secret_matches(secret) {
            return Err(Denied::Unknown);
        }
        if self.revoked {
            return Err(Denied::Revoked(self.label()));
        }
        if self.expires_ms.is_some_and(|t| now_ms >= t) {
            return Err(Denied::Expired(self.label()));
        }
        if !allows(self.role, action) {
            let allowed: Vec<&str> = Role::ALL
                .iter()
                .filter(|r| allows(**r, action))
                .map(|r| r.as_str())
                .collect();
            return Err(Denied::Forbidden {
                key: self.label(),
                role: self.role,
                action: action.as_str(),
                allowed: allowed.join(", "),
            });
        }
        match (model, action) {
            (Some(model), Action::Predict) => self.may_score(model),
            _ => Ok(()),
        }
    }

    /// Whether this key may score `model` (a predictor key's pattern).
    pub fn may_score(&self, model: &str) -> Result<(), Denied> {
        match &self.models {
            Some(pattern) if !matches_pattern(pattern, model) => Err(Denied::OutOfScope {
                key: self.label(),
                pattern: pattern.clone(),
                model: model.to_string(),
            }),
            _ => Ok(()),
        }
    }
}

/// A duration written as `30d`, `12h`, `45m` or `90s`, in milliseconds.
pub fn parse_duration_ms(text: &str) -> Option<i64> {
    let text = text.trim();
    let (n, unit) = text.split_at(text.len().checked_sub(1)?);
    let n: i64 = n.parse().ok().filter(|n| *n > 0)?;
    let ms = match unit {
        "d" => 86_400_000,
        "h" => 3_600_000,
        "m" => 60_000,
        "s" => 1_000,
        _ => return None,
    };
    n.checked_mul(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_checked_by_its_secret_role_expiry_and_revocation() {
        let k = generate("ci", Role::Submitter, None, Some(10_000), "bootstrap", 0);
        let (id, secret) = parse_token(&k.token).unwrap();
        assert_eq!(id, k.record.id);
        assert!(!k.record.secret_sha256.contains(secret));
        let r = &k.record;
        assert_eq!(r.authorize(secret, 1, Action::Submit, None), Ok(()));
        assert_eq!(
            r.authorize(&"0".repeat(64), 1, Action::Submit, None),
            Err(Denied::Unknown)
        );
        assert!(matches!(
            r.authorize(secret, 1, Action::Deploy, None),
            Err(Denied::Forbidden { .. })
        ));
        assert!(matches!(
            r.authorize(secret, 10_000, Action::Submit, None),
            Err(Denied::Expired(_))
        ));
        let revoked = KeyRecord {
            revoked: true,
            ..r.clone()
        };
        assert!(matches!(
            revoked.authorize(secret, 1, Action::Submit, None),
            Err(Denied::Revoked(_))
        ));
        assert_eq!(Denied::Unknown.failure(), Failure::Unauthenticated);
        assert_eq!(
            r.authorize(secret, 1, Action::Deploy, None)
                .unwrap_err()
                .failure(),
            Failure::Forbidden
        );
    }

    #[test]
    fn the_matrix_gives_each_role_its_rights() {
        use Action::*;
        let all: Vec<Action> = MATRIX.iter().map(|(a, _)| *a).collect();
        let operator: Vec<Action> = all
            .iter()
            .copied()
            .filter(|a| !matches!(a, ManageKeys | Internal))
            .collect();
        // (role, actions it may do); every other action is refused.
        let table: [(Role, &[Action]); 5] = [
            (Role::Admin, &all),
            (Role::Operator, &operator),
            (
                Role::Submitter,
                &[
                    ReadJobs,
                    Submit,
                    CancelOwn,
                    ReadModels,
                    SqlRead,
                    ReadMetrics,
                ],
            ),
            (Role::Predictor, &[Predict]),
            (Role::Viewer, &[ReadJobs, ReadModels, ReadMetrics]),
        ];
        assert_eq!(all.len(), 14, "every action is in the matrix once");
        for (role, may) in table {
            for action in &all {
                assert_eq!(
                    allows(role, *action),
                    may.contains(action),
                    "{role} {action:?}"
                );
            }
        }
    }

    #[test]
    fn a_predictor_scores_only_its_models() {
        let k = generate(
            "svc",
            Role::Predictor,
            Some("campaign-*".into()),
            None,
            "admin",
            0,
        );
        let (_, secret) = parse_token(&k.token).unwrap();
        assert_eq!(
            k.record
                .authorize(secret, 0, Action::Predict, Some("campaign-response")),
            Ok(())
        );
        assert!(matches!(
            k.record
                .authorize(secret, 0, Action::Predict, Some("churn")),
            Err(Denied::OutOfScope { .. })
        ));
        for (pattern, name, ok) in [
            ("a*", "abc", true),
            ("*c", "abc", true),
            ("a*c", "ac", true),
            ("a*b*c", "axbyc", true),
            ("a*b*c", "acb", false),
            ("abc", "abcd", false),
            ("*", "", true),
        ] {
            assert_eq!(matches_pattern(pattern, name), ok, "{pattern} {name}");
        }
    }

    #[test]
    fn key_text_and_durations_parse_only_in_their_shape() {
        assert!(parse_token("hk_0123456789ab_").is_none());
        assert!(parse_token(&format!("hk_0123456789ab_{}", "f".repeat(64))).is_some());
        assert!(parse_token(&format!("hk_0123456789ag_{}", "f".repeat(64))).is_none());
        assert_eq!(parse_duration_ms("30d"), Some(30 * 86_400_000));
        assert_eq!(parse_duration_ms("90s"), Some(90_000));
        assert_eq!(parse_duration_ms("0d"), None);
        assert_eq!(parse_duration_ms("3w"), None);
        assert_eq!(parse_duration_ms(""), None);
    }

    #[test]
    fn every_key_refusal_reads_as_one() {
        let forbidden = Denied::Forbidden {
            key: "abc (ci)".into(),
            role: Role::Viewer,
            action: "sql-write",
            allowed: "admin".into(),
        };
        for d in [
            Denied::Missing,
            Denied::Unknown,
            Denied::Expired("abc (ci)".into()),
            Denied::Revoked("abc (ci)".into()),
            forbidden,
        ] {
            assert!(is_refusal(&format!("job failed: {d}")), "{d}");
        }
        let outside = crate::Error::Outside {
            location: "file:///etc/passwd".into(),
            roots: "/data".into(),
        };
        assert!(is_refusal(&outside.to_string()));
        assert!(!is_refusal("executor lost: connection reset"));
    }
}

/// The key of an `authorization` header's value: `Bearer hk_…`.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Who made a request: the key it came with.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key's record.
    pub key: Arc<KeyRecord>,
}

impl Caller {
    /// Whether this caller may score `model` (a predictor key's pattern).
    pub fn may_score(&self, model: &str) -> Result<(), Denied> {
        self.key.may_score(model)
    }

    /// Whether this caller may `action` (checked again where the route alone cannot tell,
    /// such as cancelling a job that is not the caller's).
    pub fn may(&self, action: Action) -> bool {
        allows(self.key.role, action)
    }

    /// The caller of a gRPC request, put there by the node's door; a request that did not
    /// come through it is refused.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Caller, tonic::Status> {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| {
                Failure::Unauthenticated.status("the request did not pass the node's key check")
            })
    }
}

/// A refusal as a gRPC status.
impl From<Denied> for tonic::Status {
    fn from(d: Denied) -> tonic::Status {
        d.failure().status(d.to_string())
    }
}

/// Checks requests' keys against the coordinator, keeping each key's record for `ttl`
/// (so a revoked key is refused by every node within `ttl` and one read); a request whose
/// key is cached costs a hash and a map lookup.
#[derive(Clone)]
pub struct Verifier {
    coord: crate::coord::Coordinator,
    ttl: Duration,
    cache: Arc<Mutex<Cache>>,
}

type Cache = HashMap<String, (Option<Arc<KeyRecord>>, Instant)>;

/// How long a node keeps a key's record before reading it again.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(2);

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier").field("ttl", &self.ttl).finish()
    }
}

impl Verifier {
    /// A verifier over the cluster's coordinator.
    pub fn new(coord: crate::coord::Coordinator) -> Self {
        Verifier {
            coord,
            ttl: KEY_CACHE_TTL,
            cache: Default::default(),
        }
    }

    /// Whether the request's key (`token`, `None` when it sent none) may do `action`
    /// (on `model`, for a model-scoped action).
    pub async fn check(
        &self,
        token: Option<&str>,
        action: Action,
        model: Option<&str>,
    ) -> Result<Caller, Denied> {
        let token = token.ok_or(Denied::Missing)?;
        let (id, secret) = parse_token(token).ok_or(Denied::Unknown)?;
        let key = self.record(id).await?.ok_or(Denied::Unknown)?;
        key.authorize(secret, crate::records::now_ms(), action, model)?;
        Ok(Caller { key })
    }

    /// The record of key `id`, from the cache while fresh.
    async fn record(&self, id: &str) -> Result<Option<Arc<KeyRecord>>, Denied> {
        let now = Instant::now();
        let cached = {
            let cache = self.cache.lock().expect("the key cache's lock");
            cache.get(id).cloned()
        };
        if let Some((record, at)) = &cached
            && now.duration_since(*at) < self.ttl
        {
            return Ok(record.clone());
        }
        match self.coord.get_key(id).await {
            Ok(record) => {
                let record = record.map(Arc::new);
                let mut cache = self.cache.lock().expect("the key cache's lock");
                if cache.len() > 100_000 {
                    // Unknown ids sent by a flood must not grow it without bound.
                    cache.retain(|_, (r, _)| r.is_some());
                }
                cache.insert(id.to_string(), (record.clone(), now));
                Ok(record)
            }
            // The coordinator is away: a key seen before stands, an unseen one waits.
            Err(e) => match cached {
                Some((record, _)) => Ok(record),
                None => Err(Denied::Unavailable(e.to_string())),
            },
        }
    }
}

/// Whether an error's text (which may have crossed a process as text) is a refusal: a
/// missing, unknown or unentitled key, or a location outside the data roots. Trying
/// again cannot help.
pub fn is_refusal(text: &str) -> bool {
    const MARKERS: [&str; 6] = [
        "lies outside the data roots",
        "no API key",
        "unknown API key",
        "expired: make a new one",
        "was revoked",
        ", which may not ",
    ];
    MARKERS.iter().any(|m| text.contains(m))
}

/// A coordinator of its own (embedded) that knows one admin key, for a SQL cluster run
/// inside one process (a benchmark, a test): its verifier and the key.
pub async fn private_keys() -> crate::Result<(Verifier, String)> {
    let coord = crate::coord::Coordinator::new(
        Arc::new(crate::kv::EmbeddedKv::new()),
        crate::config::DEFAULT_ETCD_ROOT,
    );
    let key = generate("private", Role::Admin, None, None, "bootstrap", 0);
    coord.create_key(&key.record).await?;
    Ok((Verifier::new(coord), key.token))
}

/// File name of the admin key in a node's data directory.
pub const ADMIN_KEY_FILE: &str = "admin.key";

/// Whether `addr` (`HOST:PORT`) listens on loopback only.
pub fn is_loopback(addr: &str) -> bool {
    let host = crate::config::host_of(addr)
        .trim_start_matches('[')
        .trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The record of the admin key whose text is `token` (a node's key file).
fn admin_record(token: &str) -> Option<KeyRecord> {
    let (id, secret) = parse_token(token)?;
    Some(KeyRecord {
        id: id.to_string(),
        name: "admin (key file)".into(),
        role: Role::Admin,
        secret_sha256: digest(secret.as_bytes()),
        models: None,
        expires_ms: None,
        created_ms: crate::records::now_ms(),
        creator: "bootstrap".into(),
        revoked: false,
    })
}

/// A node's own key: the admin key in `path`, which a node may make there (mode 0600) when
/// it is missing and `may_create` (it listens on loopback); its record is stored in the
/// coordinator, so every node of the cluster accepts it.
pub async fn node_key(
    path: &std::path::Path,
    may_create: bool,
    coord: &crate::coord::Coordinator,
) -> crate::Result<String> {
    let io = |source| crate::Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let token = match std::fs::read_to_string(path) {
        Ok(text) => text.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && may_create => {
            write_new_key(path).map_err(io)?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(crate::Error::invalid(
                "config",
                "key_file",
                path.display(),
                "a node listening beyond loopback needs the cluster's admin key: copy the key file of the cluster's first node there, or name it with --key-file or HALYARD_KEY_FILE",
            ));
        }
        Err(e) => return Err(io(e)),
    };
    let record = admin_record(&token).ok_or_else(|| {
        crate::Error::invalid(
            "config",
            "key_file",
            path.display(),
            "does not hold a Halyard key (hk_<12 hex>_<64 hex>)",
        )
    })?;
    match coord.create_key(&record).await {
        Ok(()) | Err(crate::Error::Conflict { .. }) => Ok(token),
        Err(e) => Err(e),
    }
}

/// Make an admin key and write it to `path` (0600), unless another process wrote one
/// first: then that one is the key.
fn write_new_key(path: &std::path::Path) -> std::io::Result<String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let token = generate("admin", Role::Admin, None, None, "bootstrap", 0).token;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    {
        use std::io::Write;
        let mut f = options.open(&tmp)?;
        f.write_all(token.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
    }
    // A link is made whole or not at all, and never over another process's key.
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(token),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(std::fs::read_to_string(path)?.trim().to_string())
        }
        Err(e) => Err(e),
    }
}

/// A gRPC client's key: adds `authorization: Bearer hk_…` to every call (marked
/// sensitive, so it is never printed).
#[derive(Clone, Debug, Default)]
pub struct BearerKey(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl BearerKey {
    /// The interceptor for `token`; none adds nothing (the call is then refused by any
    /// node but for its health check).
    pub fn new(token: Option<&str>) -> crate::Result<BearerKey> {
        let Some(token) = token else {
            return Ok(BearerKey(None));
        };
        let mut value =
            tonic::metadata::MetadataValue::try_from(format!("Bearer {}", token.trim())).map_err(
                |_| crate::Error::invalid("key", "token", "(hidden)", "must be ASCII text: hk_…"),
            )?;
        value.set_sensitive(true);
        Ok(BearerKey(Some(value)))
    }

    /// The `authorization` header's value (`Bearer hk_…`), for a call that is not gRPC.
    pub fn header_bytes(&self) -> Option<&[u8]> {
        self.0.as_ref().map(|v| v.as_encoded_bytes())
    }
}

impl tonic::service::Interceptor for BearerKey {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}
