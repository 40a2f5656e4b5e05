//! A real S3 protocol server that verifies SigV4 signatures, serving a local folder
//! (`s3s-fs`). Tests start it in-process; `deploy/local-cluster.sh` runs the binary.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;

/// Serve `root` (each sub-folder is a bucket) on `listener`, accepting only requests
/// signed with `access_key`/`secret_key`. Runs until the task is dropped or aborted, which
/// closes the listener and every open connection with it (an outage, for tests).
pub async fn serve(
    listener: TcpListener,
    root: &Path,
    access_key: &str,
    secret_key: &str,
) -> std::io::Result<()> {
    serve_with(listener, root, access_key, secret_key, None).await
}

/// [`serve`], over TLS with `tls` when given (an S3 endpoint `https://…`).
pub async fn serve_with(
    listener: TcpListener,
    root: &Path,
    access_key: &str,
    secret_key: &str,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
) -> std::io::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let fs = s3s_fs::FileSystem::new(root).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(SimpleAuth::from_single(access_key, secret_key));
    let service = builder.build();
    let http = ConnBuilder::new(TokioExecutor::new());
    // The connections end with this task: a dropped set aborts its tasks.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (socket, _) = listener.accept().await?;
        while connections.try_join_next().is_some() {}
        let (http, service, acceptor) = (http.clone(), service.clone(), acceptor.clone());
        connections.spawn(async move {
            match acceptor {
                Some(acceptor) => {
                    if let Ok(tls) = acceptor.accept(socket).await {
                        let _ = http.serve_connection(TokioIo::new(tls), service).await;
                    }
                }
                None => {
                    let _ = http.serve_connection(TokioIo::new(socket), service).await;
                }
            }
        });
    }
}

/// Start [`serve`] on a free loopback port in the background; returns its address.
pub async fn spawn(
    root: &Path,
    access_key: &str,
    secret_key: &str,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    spawn_with(root, access_key, secret_key, None).await
}

/// [`spawn`], over TLS with `tls` when given.
pub async fn spawn_with(
    root: &Path,
    access_key: &str,
    secret_key: &str,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    std::fs::create_dir_all(root)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let root = root.to_path_buf();
    let (ak, sk) = (access_key.to_string(), secret_key.to_string());
    let handle = tokio::spawn(async move { serve_with(listener, &root, &ak, &sk, tls).await });
    Ok((addr, handle))
}
