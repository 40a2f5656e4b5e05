//! The key-value backends under the coordinator: a real etcd, or an embedded in-process
//! store with the same semantics (revisions, leases that expire, compare-and-swap
//! transactions) for `halyard standalone`.
//!
//! Only these primitives differ between backends; every piece of coordination logic
//! (membership, election, fencing, the job state machine) is written once, in
//! [`crate::coord`], over this trait. Both backends pass one conformance suite
//! (`core/tests/coordinator.rs`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::error::{Error, Result};

/// A stored key with its value and metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// Revision of the last write to this key.
    pub mod_revision: i64,
    /// The lease the key is bound to, 0 for none.
    pub lease: i64,
}

/// A condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's last write was at `revision`; 0 means the key does not exist.
    ModRevision {
        /// The key.
        key: String,
        /// The expected revision.
        revision: i64,
    },
}

/// A write inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// Set a key, bound to a lease when given.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// Lease id, or none.
        lease: Option<i64>,
    },
    /// Remove a key (absent keys are fine).
    Delete {
        /// The key.
        key: String,
    },
}

impl TxnOp {
    /// The key it writes.
    pub fn key(&self) -> &str {
        match self {
            TxnOp::Put { key, .. } | TxnOp::Delete { key } => key,
        }
    }
}

/// What a transaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnOutcome {
    /// Whether every comparison held and the writes were applied.
    pub succeeded: bool,
    /// The store's revision after the transaction.
    pub revision: i64,
}

/// The keys one write changed under a watched prefix, and the revision it made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The keys, under the watch's prefix.
    pub keys: Vec<String>,
    /// The store's revision the write made.
    pub revision: i64,
}

/// Each write under a watched prefix, as a backend reports them (one message per
/// transaction or lease expiry; a slow reader may miss messages, never the last one's
/// wake-up). Closed when the watch broke (etcd restarted, the connection dropped): the
/// reader watches again and re-reads what it needs, since writes may have been missed.
pub type Changes = tokio::sync::mpsc::Receiver<Change>;

/// Keys one etcd transaction reads ([`KvBackend::get_many`]): etcd's default
/// `--max-txn-ops` is 128.
pub const MANY_KEYS: usize = 128;

/// Messages a watch holds for a slow reader before it drops new ones.
const WATCH_BUFFER: usize = 64;

/// Hand a change to a watch's reader; `false` when the reader is gone.
fn notify(tx: &tokio::sync::mpsc::Sender<Change>, change: Change) -> bool {
    !matches!(
        tx.try_send(change),
        Err(tokio::sync::mpsc::error::TrySendError::Closed(_))
    )
}

/// The primitives of a coordination store, as etcd defines them.
#[async_trait]
pub trait KvBackend: Send + Sync + 'static {
    /// Short name for logs: `etcd` or `embedded`.
    fn name(&self) -> &'static str;
    /// One key.
    async fn get(&self, key: &str) -> Result<Option<KvEntry>>;
    /// All keys under a prefix, in key order.
    async fn range(&self, prefix: &str) -> Result<Vec<KvEntry>>;
    /// Several keys read at one revision (one round trip to etcd per [`MANY_KEYS`]), in
    /// the order asked.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<KvEntry>>>;
    /// All keys under each of several prefixes, read at one revision (one round trip to
    /// etcd per [`MANY_KEYS`] prefixes), in the order asked.
    async fn ranges(&self, prefixes: &[String]) -> Result<Vec<Vec<KvEntry>>>;
    /// Apply `then` atomically if every comparison holds.
    async fn txn(&self, when: Vec<Compare>, then: Vec<TxnOp>) -> Result<TxnOutcome>;
    /// A new lease; keys bound to it vanish when it is not kept alive for `ttl`.
    async fn grant_lease(&self, ttl: Duration) -> Result<i64>;
    /// Renew a lease; [`Error::LeaseLost`] when it already expired.
    async fn keep_alive(&self, lease: i64) -> Result<()>;
    /// End a lease now, removing its keys.
    async fn revoke(&self, lease: i64) -> Result<()>;
    /// The keys changed under `prefix` from now on (puts, deletes, lease expiries).
    async fn watch(&self, prefix: &str) -> Result<Changes>;
}

/// The embedded backend: one process, in memory, and with [`EmbeddedKv::open`] a journal
/// on disk that keeps every write not bound to a lease across restarts
/// ([`crate::journal`]). The default of `halyard standalone`.
#[derive(Debug, Default)]
pub struct EmbeddedKv {
    state: Mutex<EmbeddedState>,
}

#[derive(Debug, Default)]
struct EmbeddedState {
    revision: i64,
    next_lease: i64,
    data: BTreeMap<String, Stored>,
    leases: HashMap<i64, LeaseState>,
    journal: Option<crate::journal::Journal>,
    /// Open watches: a prefix and its reader.
    watches: Vec<(String, tokio::sync::mpsc::Sender<Change>)>,
}

#[derive(Debug)]
struct Stored {
    value: Vec<u8>,
    mod_revision: i64,
    lease: i64,
}

#[derive(Debug)]
struct LeaseState {
    ttl: Duration,
    deadline: Instant,
}

impl EmbeddedKv {
    /// An empty store, in memory only.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store kept in the journal at `path`: what it holds is read back (every write not
    /// bound to a lease, at its revision), and every such write from now on is synced
    /// there before it is acknowledged.
    pub fn open(path: &std::path::Path) -> Result<Self> {
        use crate::journal::{Journal, Record};
        let (journal, records) = Journal::open(path)?;
        let mut state = EmbeddedState::default();
        for r in records {
            match r {
                Record::Put {
                    key,
                    value,
                    revision,
                } => {
                    state.revision = state.revision.max(revision);
                    state.data.insert(
                        key,
                        Stored {
                            value,
                            mod_revision: revision,
                            lease: 0,
                        },
                    );
                }
                Record::Delete { key, revision } => {
                    state.revision = state.revision.max(revision);
                    state.data.remove(&key);
                }
                Record::Revision(r) => state.revision = state.revision.max(r),
            }
        }
        tracing::info!(journal = %path.display(), keys = state.data.len(), revision = state.revision, "embedded coordinator opened");
        state.journal = Some(journal);
        Ok(EmbeddedKv {
            state: Mutex::new(state),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, EmbeddedState> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.expire(Instant::now());
        state
    }
}

impl EmbeddedState {
    /// Drop leases past their deadline and the keys bound to them, as etcd does.
    fn expire(&mut self, now: Instant) {
        let expired: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.drop_lease(id);
        }
    }

    fn drop_lease(&mut self, id: i64) {
        self.leases.remove(&id);
        let gone: Vec<String> = self
            .data
            .iter()
            .filter(|(_, s)| s.lease == id)
            .map(|(k, _)| k.clone())
            .collect();
        if gone.is_empty() {
            return;
        }
        for key in &gone {
            self.data.remove(key);
        }
        self.revision += 1;
        self.tell_watches(&gone, self.revision);
    }

    /// Tell each watch whose prefix holds one of `keys` (a write's), forgetting watches
    /// whose reader is gone.
    fn tell_watches(&mut self, keys: &[String], revision: i64) {
        self.watches.retain(|(prefix, tx)| {
            let under: Vec<String> = keys
                .iter()
                .filter(|k| k.starts_with(prefix.as_str()))
                .cloned()
                .collect();
            if under.is_empty() {
                !tx.is_closed()
            } else {
                notify(
                    tx,
                    Change {
                        keys: under,
                        revision,
                    },
                )
            }
        });
    }

    /// The journal records of applying `then` at `revision`: puts without a lease, and
    /// deletes (or leased puts) of keys that had none.
    fn durable_effects(&self, then: &[TxnOp], revision: i64) -> Vec<crate::journal::Record> {
        use crate::journal::Record;
        let mut durable: HashMap<&str, bool> = HashMap::new();
        let mut out = Vec::new();
        for op in then {
            let key = op.key();
            let was_durable = *durable
                .get(key)
                .unwrap_or(&self.data.get(key).is_some_and(|s| s.lease == 0));
            match op {
                TxnOp::Put {
                    key,
                    value,
                    lease: None,
                } => {
                    out.push(Record::Put {
                        key: key.clone(),
                        value: value.clone(),
                        revision,
                    });
                    durable.insert(key, true);
                }
                _ if was_durable => {
                    out.push(Record::Delete {
                        key: key.to_string(),
                        revision,
                    });
                    durable.insert(key, false);
                }
                _ => {}
            }
        }
        out
    }

    /// Rewrite a large journal as a snapshot of the keys without a lease.
    fn compact_if_large(&mut self) -> Result<()> {
        use crate::journal::Record;
        if !self.journal.as_ref().is_some_and(|j| j.is_large()) {
            return Ok(());
        }
        let mut records: Vec<Record> = vec![Record::Revision(self.revision)];
        records.extend(
            self.data
                .iter()
                .filter(|(_, s)| s.lease == 0)
                .map(|(k, s)| Record::Put {
                    key: k.clone(),
                    value: s.value.clone(),
                    revision: s.mod_revision,
                }),
        );
        if let Some(j) = self.journal.as_mut() {
            j.rewrite(&records)?;
        }
        Ok(())
    }

    fn entry(&self, key: &str, s: &Stored) -> KvEntry {
        KvEntry {
            key: key.to_string(),
            value: s.value.clone(),
            mod_revision: s.mod_revision,
            lease: s.lease,
        }
    }

    /// All keys under `prefix`, in key order.
    fn range(&self, prefix: &str) -> Vec<KvEntry> {
        self.data
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, s)| self.entry(k, s))
            .collect()
    }
}

#[async_trait]
impl KvBackend for EmbeddedKv {
    fn name(&self) -> &'static str {
        "embedded"
    }

    async fn get(&self, key: &str) -> Result<Option<KvEntry>> {
        let state = self.lock();
        Ok(state.data.get(key).map(|s| state.entry(key, s)))
    }

    async fn range(&self, prefix: &str) -> Result<Vec<KvEntry>> {
        Ok(self.lock().range(prefix))
    }

    async fn ranges(&self, prefixes: &[String]) -> Result<Vec<Vec<KvEntry>>> {
        let state = self.lock();
        Ok(prefixes.iter().map(|p| state.range(p)).collect())
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<KvEntry>>> {
        let state = self.lock();
        Ok(keys
            .iter()
            .map(|k| state.data.get(k).map(|s| state.entry(k, s)))
            .collect())
    }

    async fn txn(&self, when: Vec<Compare>, then: Vec<TxnOp>) -> Result<TxnOutcome> {
        let mut state = self.lock();
        let holds = when.iter().all(|c| match c {
            Compare::ModRevision { key, revision } => {
                state.data.get(key).map_or(0, |s| s.mod_revision) == *revision
            }
        });
        if !holds {
            return Ok(TxnOutcome {
                succeeded: false,
                revision: state.revision,
            });
        }
        for op in &then {
            if let TxnOp::Put { lease: Some(l), .. } = op
                && !state.leases.contains_key(l)
            {
                return Err(Error::LeaseLost(*l));
            }
        }
        let revision = state.revision + i64::from(!then.is_empty());
        // What outlives the process is on disk before anything changes here.
        if state.journal.is_some() {
            let records = state.durable_effects(&then, revision);
            if let Some(journal) = state.journal.as_mut() {
                journal.append(&records)?;
            }
        }
        state.revision = revision;
        let keys: Vec<String> = then.iter().map(|op| op.key().to_string()).collect();
        for op in then {
            match op {
                TxnOp::Put { key, value, lease } => {
                    state.data.insert(
                        key,
                        Stored {
                            value,
                            mod_revision: revision,
                            lease: lease.unwrap_or(0),
                        },
                    );
                }
                TxnOp::Delete { key } => {
                    state.data.remove(&key);
                }
            }
        }
        state.compact_if_large()?;
        state.tell_watches(&keys, revision);
        Ok(TxnOutcome {
            succeeded: true,
            revision,
        })
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<i64> {
        let mut state = self.lock();
        state.next_lease += 1;
        let id = state.next_lease;
        state.leases.insert(
            id,
            LeaseState {
                ttl,
                deadline: Instant::now() + ttl,
            },
        );
        Ok(id)
    }

    async fn keep_alive(&self, lease: i64) -> Result<()> {
        let mut state = self.lock();
        match state.leases.get_mut(&lease) {
            Some(l) => {
                l.deadline = Instant::now() + l.ttl;
                Ok(())
            }
            None => Err(Error::LeaseLost(lease)),
        }
    }

    async fn revoke(&self, lease: i64) -> Result<()> {
        let mut state = self.lock();
        state.drop_lease(lease);
        Ok(())
    }

    async fn watch(&self, prefix: &str) -> Result<Changes> {
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_BUFFER);
        self.lock().watches.push((prefix.to_string(), tx));
        Ok(rx)
    }
}

/// The etcd backend (etcd 3.4+, through `etcd-client`).
#[derive(Clone)]
pub struct EtcdKv {
    client: etcd_client::Client,
}

impl std::fmt::Debug for EtcdKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EtcdKv")
    }
}

/// What to check when etcd's answer refuses this node's credentials (its gRPC status:
/// a wrong user or password, no role on the keys, authentication off); `None` for any
/// other failure, which may pass.
fn refusal(e: &etcd_client::Error) -> Option<&'static str> {
    // (etcd_client's error names no source: a failed handshake is in the status's.)
    let cause: &(dyn std::error::Error + 'static) = match e {
        etcd_client::Error::GRpcStatus(status) => status,
        etcd_client::Error::TransportError(t) => t,
        other => other,
    };
    if let Some(why) = tls_refusal(cause) {
        return Some(why);
    }
    let etcd_client::Error::GRpcStatus(status) = e else {
        return None;
    };
    match status.code() {
        tonic::Code::InvalidArgument | tonic::Code::Unauthenticated => {
            Some("check --etcd-user and --etcd-password")
        }
        tonic::Code::PermissionDenied => {
            Some("grant --etcd-user a role with read and write on Halyard's keys")
        }
        tonic::Code::FailedPrecondition => Some(
            "etcd's authentication is off: enable it (`etcdctl auth enable`) or leave out --etcd-user",
        ),
        _ => None,
    }
}

/// A TLS handshake that failed on etcd's certificate (it fails the same way on every
/// try), found among the error's sources. (This node's certificate refused by etcd is not
/// told apart: etcd closes the connection, as a restarting etcd would.)
fn tls_refusal(e: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut at = Some(e);
    while let Some(err) = at {
        if let Some(rustls::Error::InvalidCertificate(_)) = err.downcast_ref::<rustls::Error>() {
            return Some(
                "etcd's certificate is not signed by --etcd-ca or does not name the host of --etcd: check both",
            );
        }
        // (An I/O error's `source` skips the error it wraps.)
        at = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

fn etcd_err(context: &str, e: etcd_client::Error) -> Error {
    Error::Coordinator(format!("etcd {context}: {e}"))
}

/// How a node reaches etcd securely: TLS (`--etcd-ca`, and a client certificate for an
/// etcd started with `--client-cert-auth`) and etcd's own user authentication.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EtcdAccess {
    /// The CA that signed etcd's certificate (PEM): set, the connection is TLS.
    pub ca: Option<std::path::PathBuf>,
    /// This node's client certificate and key (PEM).
    pub cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// An etcd user and its password.
    pub user: Option<(String, String)>,
}

impl std::fmt::Debug for EtcdAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdAccess")
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .finish()
    }
}

impl EtcdAccess {
    /// The TLS settings, when a CA is set.
    fn tls(&self) -> Result<Option<etcd_client::TlsOptions>> {
        let read = |field: &str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| {
                Error::invalid(
                    "config",
                    field,
                    path.display(),
                    format!("cannot read it: {e}"),
                )
            })
        };
        let Some(ca) = &self.ca else {
            return match &self.cert {
                Some((cert, _)) => Err(Error::invalid(
                    "config",
                    "etcd_cert",
                    cert.display(),
                    "a client certificate for etcd needs --etcd-ca (the CA of etcd's certificate)",
                )),
                None => Ok(None),
            };
        };
        let mut tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read("etcd_ca", ca)?));
        if let Some((cert, key)) = &self.cert {
            tls = tls.identity(etcd_client::Identity::from_pem(
                read("etcd_cert", cert)?,
                read("etcd_key", key)?,
            ));
        }
        Ok(Some(tls))
    }
}

impl EtcdKv {
    /// Connect to etcd at `endpoints` (`http://127.0.0.1:2379` or `127.0.0.1:2379`).
    pub async fn connect(endpoints: &[String], access: &EtcdAccess) -> Result<Self> {
        let mut options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        if let Some(tls) = access.tls()? {
            options = options.with_tls(tls);
        }
        if let Some((user, password)) = &access.user {
            options = options.with_user(user, password);
        }
        let at = endpoints.join(",");
        let client = etcd_client::Client::connect(endpoints, Some(options))
            .await
            .map_err(|e| match refusal(&e) {
                Some(why) => Error::CoordinatorRefused(format!("etcd at {at}: {e}; {why}")),
                None => Error::Coordinator(format!(
                    "cannot connect to etcd at {at}: {e}; is etcd running there?"
                )),
            })?;
        let client = EtcdKv { client };
        // The client connects lazily; one read proves the server answers.
        client
            .client
            .clone()
            .get("/halyard-ping", None)
            .await
            .map_err(|e| match refusal(&e) {
                Some(why) => Error::CoordinatorRefused(format!("etcd at {at}: {e}; {why}")),
                None => Error::Coordinator(format!("etcd at {at} does not answer: {e}")),
            })?;
        Ok(client)
    }

    /// The version of the etcd server this client reached (its maintenance status).
    pub async fn version(&self) -> Result<String> {
        let status = self
            .client
            .clone()
            .status()
            .await
            .map_err(|e| etcd_err("status", e))?;
        Ok(status.version().to_string())
    }

    fn to_entry(kv: &etcd_client::KeyValue) -> KvEntry {
        KvEntry {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            value: kv.value().to_vec(),
            mod_revision: kv.mod_revision(),
            lease: kv.lease(),
        }
    }

    /// The answers of one transaction of reads, in order (`what` names it in errors).
    async fn read_txn(
        &self,
        what: &str,
        ops: Vec<etcd_client::TxnOp>,
    ) -> Result<Vec<etcd_client::GetResponse>> {
        let resp = self
            .client
            .clone()
            .txn(etcd_client::Txn::new().and_then(ops))
            .await
            .map_err(|e| etcd_err(what, e))?;
        resp.op_responses()
            .into_iter()
            .map(|r| match r {
                etcd_client::TxnOpResponse::Get(g) => Ok(g),
                _ => Err(Error::Coordinator(format!(
                    "etcd {what}: a read answered as a write"
                ))),
            })
            .collect()
    }
}

#[async_trait]
impl KvBackend for EtcdKv {
    fn name(&self) -> &'static str {
        "etcd"
    }

    async fn get(&self, key: &str) -> Result<Option<KvEntry>> {
        tracing::trace!(%key, "etcd get");
        let resp = self
            .client
            .clone()
            .get(key, None)
            .await
            .map_err(|e| etcd_err("get", e))?;
        Ok(resp.kvs().first().map(Self::to_entry))
    }

    async fn range(&self, prefix: &str) -> Result<Vec<KvEntry>> {
        tracing::trace!(%prefix, "etcd range");
        let resp = self
            .client
            .clone()
            .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
            .await
            .map_err(|e| etcd_err("range", e))?;
        Ok(resp.kvs().iter().map(Self::to_entry).collect())
    }

    async fn ranges(&self, prefixes: &[String]) -> Result<Vec<Vec<KvEntry>>> {
        tracing::trace!(?prefixes, "etcd ranges");
        let mut out = Vec::with_capacity(prefixes.len());
        for chunk in prefixes.chunks(MANY_KEYS) {
            let ops: Vec<etcd_client::TxnOp> = chunk
                .iter()
                .map(|p| {
                    etcd_client::TxnOp::get(
                        p.as_str(),
                        Some(etcd_client::GetOptions::new().with_prefix()),
                    )
                })
                .collect();
            for r in self.read_txn("ranges", ops).await? {
                out.push(r.kvs().iter().map(Self::to_entry).collect());
            }
        }
        Ok(out)
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<KvEntry>>> {
        tracing::trace!(keys = keys.len(), "etcd get many");
        // (`chunks` of nothing is no chunk: no round trip.)
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(MANY_KEYS) {
            let ops: Vec<etcd_client::TxnOp> = chunk
                .iter()
                .map(|k| etcd_client::TxnOp::get(k.as_str(), None))
                .collect();
            for r in self.read_txn("get many", ops).await? {
                out.push(r.kvs().first().map(Self::to_entry));
            }
        }
        Ok(out)
    }

    async fn txn(&self, when: Vec<Compare>, then: Vec<TxnOp>) -> Result<TxnOutcome> {
        use etcd_client::{CompareOp, PutOptions};
        tracing::trace!(when = ?when.first(), then = ?then.iter().map(TxnOp::key).collect::<Vec<_>>(), "etcd txn");
        let lease_used = then.iter().find_map(|op| match op {
            TxnOp::Put { lease: Some(l), .. } => Some(*l),
            _ => None,
        });
        let compares: Vec<etcd_client::Compare> = when
            .into_iter()
            .map(|c| match c {
                Compare::ModRevision { key, revision } => {
                    etcd_client::Compare::mod_revision(key, CompareOp::Equal, revision)
                }
            })
            .collect();
        let ops: Vec<etcd_client::TxnOp> = then
            .into_iter()
            .map(|op| match op {
                TxnOp::Put { key, value, lease } => etcd_client::TxnOp::put(
                    key,
                    value,
                    lease.map(|l| PutOptions::new().with_lease(l)),
                ),
                TxnOp::Delete { key } => etcd_client::TxnOp::delete(key, None),
            })
            .collect();
        let txn = etcd_client::Txn::new().when(compares).and_then(ops);
        let resp = self.client.clone().txn(txn).await.map_err(|e| {
            let text = e.to_string();
            match lease_used {
                Some(l) if text.contains("lease not found") => Error::LeaseLost(l),
                _ => etcd_err("txn", e),
            }
        })?;
        Ok(TxnOutcome {
            succeeded: resp.succeeded(),
            revision: resp.header().map_or(0, |h| h.revision()),
        })
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<i64> {
        let secs = ttl.as_secs().max(1) as i64;
        let resp = self
            .client
            .clone()
            .lease_grant(secs, None)
            .await
            .map_err(|e| etcd_err("lease grant", e))?;
        Ok(resp.id())
    }

    async fn keep_alive(&self, lease: i64) -> Result<()> {
        let err = |e: etcd_client::Error| {
            if e.to_string().contains("lease not found") {
                Error::LeaseLost(lease)
            } else {
                etcd_err("lease keep-alive", e)
            }
        };
        let (mut keeper, mut stream) = self
            .client
            .clone()
            .lease_keep_alive(lease)
            .await
            .map_err(err)?;
        keeper.keep_alive().await.map_err(err)?;
        match stream.message().await.map_err(err)? {
            Some(resp) if resp.ttl() > 0 => Ok(()),
            _ => Err(Error::LeaseLost(lease)),
        }
    }

    async fn revoke(&self, lease: i64) -> Result<()> {
        match self.client.clone().lease_revoke(lease).await {
            Ok(_) => Ok(()),
            // Revoking an expired lease is not an error: the goal is reached.
            Err(e) if e.to_string().contains("lease not found") => Ok(()),
            Err(e) => Err(etcd_err("lease revoke", e)),
        }
    }

    async fn watch(&self, prefix: &str) -> Result<Changes> {
        let mut stream = self
            .client
            .clone()
            .watch(prefix, Some(etcd_client::WatchOptions::new().with_prefix()))
            .await
            .map_err(|e| etcd_err("watch", e))?;
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_BUFFER);
        let prefix = prefix.to_string();
        tokio::spawn(async move {
            // Ends, closing the channel, when the reader is gone or the watch broke.
            loop {
                let message = tokio::select! {
                    m = stream.message() => m,
                    () = tx.closed() => return,
                };
                let resp = match message {
                    Ok(Some(resp)) if !resp.canceled() => resp,
                    Ok(_) => {
                        tracing::warn!(%prefix, "etcd ended the watch");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(%prefix, error = %e, "etcd watch broke");
                        return;
                    }
                };
                // One change per write: a response may hold the events of several, in
                // revision order (a delete's event carries the revision of the delete).
                // The watch's creation and progress notices carry no events.
                let mut changes: Vec<Change> = Vec::new();
                for kv in resp.events().iter().filter_map(|e| e.kv()) {
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    match changes.last_mut() {
                        Some(c) if c.revision == kv.mod_revision() => c.keys.push(key),
                        _ => changes.push(Change {
                            keys: vec![key],
                            revision: kv.mod_revision(),
                        }),
                    }
                }
                for change in changes {
                    if !notify(&tx, change) {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }
}
