//! Certificates for `halyard certs init`: a cluster CA and a certificate for each node (rcgen), for mutual
//! TLS between nodes. Each node certificate names the node, `localhost` and `127.0.0.1`,
//! and serves both as a server and as a client certificate.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::error::{Error, Result};

/// The files `init` wrote.
#[derive(Debug, Clone)]
pub struct Written {
    /// The CA certificate (`ca.pem`): every node's `--tls-ca`, and clients' trust.
    pub ca: PathBuf,
    /// Each node's `(name, certificate, key)`.
    pub nodes: Vec<(String, PathBuf, PathBuf)>,
}

fn failed(e: rcgen::Error) -> Error {
    Error::invalid(
        "certs",
        "certificate",
        "(new)",
        format!("cannot make it: {e}"),
    )
}

/// Write `0600` (keys) or `0644` (certificates) files; an existing file is not replaced.
fn write(path: &Path, text: &str, secret: bool) -> Result<()> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, if secret { 0o600 } else { 0o644 });
    let mut f = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::invalid(
                "certs",
                "out",
                path.display(),
                "exists: certs init does not replace files (remove them, or choose another --out)",
            )
        } else {
            io(e)
        }
    })?;
    std::io::Write::write_all(&mut f, text.as_bytes()).map_err(io)
}

/// Make a CA (`ca.pem`, `ca.key`) and, for each of `nodes` (a host name or IP address),
/// `NODE.pem` and `NODE.key` signed by it, in `out`.
pub fn init(out: &Path, nodes: &[String]) -> Result<Written> {
    if nodes.is_empty() {
        return Err(Error::invalid(
            "certs",
            "nodes",
            "(none)",
            "name at least one node: --nodes scheduler-1,10.0.0.5,…",
        ));
    }
    std::fs::create_dir_all(out).map_err(|source| Error::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Halyard cluster CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().map_err(failed)?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(failed)?;
    let written = Written {
        ca: out.join("ca.pem"),
        nodes: nodes
            .iter()
            .map(|n| {
                let file = n.replace(['/', ':'], "_");
                (
                    n.clone(),
                    out.join(format!("{file}.pem")),
                    out.join(format!("{file}.key")),
                )
            })
            .collect(),
    };
    write(&written.ca, &ca.pem(), false)?;
    write(&out.join("ca.key"), &ca_key_pem, true)?;
    for (name, cert_path, key_path) in &written.nodes {
        let mut names = vec![name.clone()];
        for extra in ["localhost", "127.0.0.1"] {
            if name != extra {
                names.push(extra.to_string());
            }
        }
        let mut params = CertificateParams::new(names).map_err(failed)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().map_err(failed)?;
        let cert = params.signed_by(&key, &ca).map_err(failed)?;
        write(cert_path, &cert.pem(), false)?;
        write(key_path, &key.serialize_pem(), true)?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_makes_a_ca_and_node_certificates_that_load_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let w = init(dir.path(), &["scheduler-1".into(), "10.0.0.5".into()]).unwrap();
        assert_eq!(w.nodes.len(), 2);
        for (_, cert, key) in &w.nodes {
            let tls = crate::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: Some(w.ca.clone()),
            }
            .load()
            .unwrap();
            assert!(tls.mutual);
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(key).unwrap().permissions().mode();
                assert_eq!(mode & 0o077, 0, "{mode:o}");
            }
        }
        let again = init(dir.path(), &["scheduler-1".into()]).unwrap_err();
        assert!(again.to_string().contains("does not replace"), "{again}");
    }
}
