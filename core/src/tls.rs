//! TLS with rustls: a node's certificate and key (`--tls-cert`, `--tls-key`) for its port,
//! and the cluster's CA (`--tls-ca`), which makes traffic between nodes mutual TLS: a node
//! presents its certificate when it calls another, and a port accepts only client
//! certificates the CA signed (a caller without one may still call the public routes with
//! a key; the routes only nodes may call need one). `halyard certs init` makes the files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Error, Result};

/// The files of a node's TLS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The node's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The cluster's CA certificate (PEM): mutual TLS between nodes.
    pub ca: Option<PathBuf>,
}

/// A node's loaded TLS: its server and client configurations.
#[derive(Clone)]
pub struct Tls {
    /// For the node's port: its certificate; client certificates verified against the
    /// CA (optional, so API clients without one can connect).
    pub server: Arc<rustls::ServerConfig>,
    /// For calls to other nodes: trusts the CA and presents the node's certificate.
    pub client: Arc<rustls::ClientConfig>,
    /// Whether a CA is set: the node-only routes then need a verified client certificate.
    pub mutual: bool,
    cert_pem: String,
    key_pem: String,
    ca_pem: Option<String>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("mutual", &self.mutual).finish()
    }
}

fn bad(field: &str, path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::invalid("config", field, path.display(), reason.to_string())
}

fn read(field: &str, path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| bad(field, path, format!("cannot read it: {e}")))
}

fn certs(field: &str, path: &Path, pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(field, path, format!("not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(bad(
            field,
            path,
            "holds no certificate (PEM, BEGIN CERTIFICATE)",
        ));
    }
    Ok(certs)
}

/// The ring crypto provider (the one the dependency tree builds).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Trust in `ca_pem` alone.
fn roots(path: &Path, ca_pem: &str) -> Result<Arc<rustls::RootCertStore>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs("tls_ca", path, ca_pem)? {
        roots
            .add(cert)
            .map_err(|e| bad("tls_ca", path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// HTTP/2 first (gRPC), then HTTP/1.1.
fn alpn() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec(), b"http/1.1".to_vec()]
}

impl TlsFiles {
    /// The TLS settings, or `None` without a certificate; a certificate without its key
    /// (or the reverse) is an error.
    pub fn from_settings(s: &crate::config::Settings) -> Result<Option<TlsFiles>> {
        match (&s.tls_cert, &s.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: s.tls_ca.clone(),
            })),
            (None, None) => Ok(None),
            (Some(p), None) | (None, Some(p)) => Err(bad(
                "tls_cert",
                p,
                "--tls-cert and --tls-key come together (make both with `halyard certs init`)",
            )),
        }
    }

    /// Read and check the files.
    pub fn load(&self) -> Result<Tls> {
        let cert_pem = read("tls_cert", &self.cert)?;
        let key_pem = read("tls_key", &self.key)?;
        let chain = certs("tls_cert", &self.cert, &cert_pem)?;
        let key = || {
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                .map_err(|e| bad("tls_key", &self.key, format!("not a PEM private key: {e}")))
        };
        let ca_pem = match &self.ca {
            Some(p) => Some((p.clone(), read("tls_ca", p)?)),
            None => None,
        };
        let versions = |e: rustls::Error| bad("tls_cert", &self.cert, e);
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(versions)?;
        let server = match &ca_pem {
            Some((path, pem)) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots(path, pem)?,
                    provider(),
                )
                .allow_unauthenticated()
                .build()
                .map_err(|e| bad("tls_ca", path, e))?;
                server.with_client_cert_verifier(verifier)
            }
            None => server.with_no_client_auth(),
        };
        let mut server = server
            .with_single_cert(chain.clone(), key()?)
            .map_err(|e| {
                bad(
                    "tls_key",
                    &self.key,
                    format!("does not match the certificate: {e}"),
                )
            })?;
        server.alpn_protocols = alpn();
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(versions)?;
        let client = match &ca_pem {
            Some((path, pem)) => client.with_root_certificates(roots(path, pem)?),
            // Without a cluster CA the node trusts its own certificate's issuer: a
            // self-signed certificate shared by the cluster.
            None => client.with_root_certificates(roots(&self.cert, &cert_pem)?),
        };
        let mut client = client
            .with_client_auth_cert(chain, key()?)
            .map_err(|e| bad("tls_key", &self.key, e))?;
        client.alpn_protocols = alpn();
        Ok(Tls {
            server: Arc::new(server),
            client: Arc::new(client),
            mutual: ca_pem.is_some(),
            ca_pem: ca_pem.map(|(_, pem)| pem),
            cert_pem,
            key_pem,
        })
    }
}

impl Tls {
    /// tonic's client settings for calls to other nodes: trust the CA, present the node's
    /// certificate.
    pub fn tonic_client(&self) -> tonic::transport::ClientTlsConfig {
        let ca = self.ca_pem.as_deref().unwrap_or(&self.cert_pem);
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca))
            .identity(tonic::transport::Identity::from_pem(
                &self.cert_pem,
                &self.key_pem,
            ))
    }

    /// tonic's server settings for a port only nodes call: with a CA, a client
    /// certificate it signed is required.
    pub fn tonic_server(&self) -> tonic::transport::ServerTlsConfig {
        let config = tonic::transport::ServerTlsConfig::new().identity(
            tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem),
        );
        match &self.ca_pem {
            Some(ca) => config.client_ca_root(tonic::transport::Certificate::from_pem(ca)),
            None => config,
        }
    }

    /// tonic's server settings for a port API clients call too: a client certificate is
    /// optional, but one the CA did not sign is refused in the handshake (the routes only
    /// nodes may call check that one was presented).
    pub fn tonic_server_for_clients(&self) -> tonic::transport::ServerTlsConfig {
        self.tonic_server().client_auth_optional(true)
    }
}

/// A gRPC endpoint for `addr` (`HOST:PORT`, or a URL taken as it is): `https://` with
/// `tls`, `http://` without.
pub fn endpoint(
    addr: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> std::result::Result<tonic::transport::Endpoint, tonic::transport::Error> {
    let url = if addr.contains("://") {
        addr.to_string()
    } else {
        let scheme = if tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{addr}")
    };
    let endpoint = tonic::transport::Endpoint::from_shared(url)?;
    match tls {
        Some(tls) => endpoint.tls_config(tls),
        None => Ok(endpoint),
    }
}

/// tonic's client settings for an API client: trust `ca_file` (a cluster CA, or a node's
/// self-signed certificate).
pub fn client_trusting(ca_file: &Path) -> Result<tonic::transport::ClientTlsConfig> {
    let pem = read("tls_ca", ca_file)?;
    certs("tls_ca", ca_file, &pem)?;
    Ok(tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(pem)))
}

/// A rustls client configuration trusting `ca_file`, speaking HTTP/1.1 (the load
/// generator of `halyard bench serving`).
pub fn http1_client_trusting(ca_file: &Path) -> Result<Arc<rustls::ClientConfig>> {
    let pem = read("tls_ca", ca_file)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("tls_ca", ca_file, e))?
        .with_root_certificates(roots(ca_file, &pem)?)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A node about to listen on `listen` beyond loopback without TLS refuses, saying which
/// flags to set.
pub fn require_beyond_loopback(listen: &str, tls: Option<&TlsFiles>) -> Result<()> {
    if tls.is_none() && !crate::auth::is_loopback(listen) {
        return Err(Error::invalid(
            "config",
            "tls_cert",
            listen,
            "a node listening beyond loopback serves TLS: set --tls-cert and --tls-key (HALYARD_TLS_CERT, HALYARD_TLS_KEY; `halyard certs init` makes them), and --tls-ca for mutual TLS between nodes",
        ));
    }
    Ok(())
}
