//! The ring's links: one long-lived connection from each rank to the next, opened once per
//! group by an HTTP/1.1 upgrade on the executor's port and then carrying raw frames.
//!
//! The dialing rank sends `GET /v1/collective/link?group=G&from=R` with `Upgrade:
//! halyard-ring/1` and its node key; on the executor the request passes the door like any
//! other (the key must allow node calls and, with mutual TLS, the connection must carry a
//! node certificate), the route answers `101 Switching Protocols`, and the connection —
//! plain TCP or TLS, whatever the port speaks — is handed to the group's mailbox, where
//! the rank after the dialer takes it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use halyard_core::auth::BearerKey;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// The route that opens a link.
pub use halyard_core::auth::RING_LINK_PATH as LINK_PATH;

/// The protocol a link switches to (its frames: [`crate::transfer`]).
pub const PROTOCOL: &str = "halyard-ring/1";

/// Unclaimed inbound links are dropped after this long (a group that failed).
const STALE_AFTER: Duration = Duration::from_secs(300);

/// A byte stream in both directions.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One end of a link.
pub(crate) type Link = Box<dyn Io>;

/// An inbound link and the rank that dialed it.
pub(crate) struct Inbound {
    pub from: usize,
    pub link: Link,
}

/// Inbound links, by group, until the local rank takes them.
#[derive(Clone, Default)]
pub struct Mailboxes {
    inner: Arc<Mutex<HashMap<String, Slot>>>,
}

struct Slot {
    tx: Option<oneshot::Sender<Inbound>>,
    rx: Option<oneshot::Receiver<Inbound>>,
    created: Instant,
}

impl Mailboxes {
    fn with_slot<T>(&self, group: &str, take: impl FnOnce(&mut Slot) -> T) -> T {
        let mut map = self.inner.lock().expect("mailboxes lock");
        map.retain(|_, s| s.created.elapsed() < STALE_AFTER);
        let slot = map.entry(group.to_string()).or_insert_with(|| {
            let (tx, rx) = oneshot::channel();
            Slot {
                tx: Some(tx),
                rx: Some(rx),
                created: Instant::now(),
            }
        });
        let out = take(slot);
        if slot.tx.is_none() && slot.rx.is_none() {
            map.remove(group);
        }
        out
    }

    fn sender(&self, group: &str) -> Option<oneshot::Sender<Inbound>> {
        self.with_slot(group, |s| s.tx.take())
    }

    pub(crate) fn receiver(&self, group: &str) -> Option<oneshot::Receiver<Inbound>> {
        self.with_slot(group, |s| s.rx.take())
    }

    /// Drop everything kept for `group` (it ended or failed).
    pub fn forget(&self, group: &str) {
        self.inner.lock().expect("mailboxes lock").remove(group);
    }

    /// The route that fills these mailboxes (`GET` [`LINK_PATH`]), to mount behind the
    /// node's door.
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
            .route(LINK_PATH, axum::routing::get(accept_link))
            .with_state(self.clone())
    }
}

#[derive(serde::Deserialize)]
struct LinkQuery {
    group: String,
    from: usize,
}

async fn accept_link(
    State(boxes): State<Mailboxes>,
    Query(q): Query<LinkQuery>,
    mut req: Request,
) -> Response {
    let asks = req
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes() == PROTOCOL.as_bytes());
    if !asks {
        let message = format!(
            "{LINK_PATH} opens a link of a data-parallel group's ring: it takes `Upgrade: {PROTOCOL}`"
        );
        return (StatusCode::BAD_REQUEST, message).into_response();
    }
    let Some(tx) = boxes.sender(&q.group) else {
        let message = format!(
            "group {} already has a link from its previous rank",
            q.group
        );
        return (StatusCode::CONFLICT, message).into_response();
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(up) => {
                let link: Link = Box::new(TokioIo::new(up));
                let _ = tx.send(Inbound { from: q.from, link });
            }
            Err(e) => {
                tracing::warn!(group = %q.group, from = q.from, error = %e, "ring link failed to open")
            }
        }
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [(header::CONNECTION, "upgrade"), (header::UPGRADE, PROTOCOL)],
    )
        .into_response()
}

/// Open the link from rank `from` of `group` to the rank listening on `addr`, over TLS
/// with `tls`, presenting `key`.
pub(crate) async fn dial(
    addr: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
    key: &BearerKey,
    group: &str,
    from: usize,
) -> Result<Link, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let Some(tls) = tls else {
        return upgrade(tcp, addr, key, group, from).await;
    };
    let host = halyard_core::config::host_of(addr).trim_matches(['[', ']']);
    let name = rustls_pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host} is no server name: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("tls handshake: {e}"))?;
    upgrade(tls, addr, key, group, from).await
}

async fn upgrade<S: Io + 'static>(
    io: S,
    addr: &str,
    key: &BearerKey,
    group: &str,
    from: usize,
) -> Result<Link, String> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("http handshake: {e}"))?;
    tokio::spawn(conn.with_upgrades());
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("group", group)
        .append_pair("from", &from.to_string())
        .finish();
    let mut req = hyper::Request::get(format!("{LINK_PATH}?{query}"))
        .header(header::HOST, addr)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, PROTOCOL);
    if let Some(bytes) = key.header_bytes() {
        let mut value = HeaderValue::from_bytes(bytes).map_err(|e| format!("key: {e}"))?;
        value.set_sensitive(true);
        req = req.header(header::AUTHORIZATION, value);
    }
    let req = req
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let mut answer = sender
        .send_request(req)
        .await
        .map_err(|e| format!("link request: {e}"))?;
    if answer.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = answer.status();
        let body = match answer.into_body().collect().await {
            Ok(b) => String::from_utf8_lossy(&b.to_bytes()).trim().to_string(),
            Err(_) => String::new(),
        };
        return Err(format!("it refused the link: {status} {body}"));
    }
    let up = hyper::upgrade::on(&mut answer)
        .await
        .map_err(|e| format!("link upgrade: {e}"))?;
    Ok(Box::new(TokioIo::new(up)))
}

/// Serve `boxes` alone on `listener` (benches and tests; an executor mounts
/// [`Mailboxes::router`] on its own port behind its door) until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    boxes: Mailboxes,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = boxes.router();
    match tls {
        Some(tls) => {
            let listener = TlsAccept {
                tcp: listener,
                acceptor: tokio_rustls::TlsAcceptor::from(tls),
            };
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        None => {
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// A listener whose connections have finished their TLS handshake (one at a time: for
/// benches and tests).
struct TlsAccept {
    tcp: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsAccept {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let _ = tcp.set_nodelay(true);
            match self.acceptor.accept(tcp).await {
                Ok(tls) => return (tls, addr),
                Err(e) => tracing::info!(peer = %addr, error = %e, "tls handshake refused"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}
