//! TLS on the client port, with etcd's semantics and certificate reloading.
//!
//! Certificates are rotated by tools that rewrite files in place (cert-manager, an ASG's
//! bootstrap script), and a restart of a single-writer node costs a leader hand-over, so the
//! files are checked (size and mtime) at every new connection, as etcd re-reads them at every
//! handshake, and a changed set is loaded for the connections that follow. A set that does
//! not load (a cert written before its key) is logged and the previous one stays in use.
//!
//! As in etcd, naming a trusted CA file (or `--client-cert-auth`) makes client certificates
//! mandatory and verified against that CA.

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub trusted_ca_file: Option<PathBuf>,
    pub client_cert_auth: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{option} {path}: {message}")]
    File {
        option: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("--cert-file and --key-file do not form a usable pair: {0}")]
    Pair(String),
    #[error("--client-cert-auth needs --trusted-ca-file (the CA that signs client certificates)")]
    NoCa,
    #[error("nodes serving TLS reach each other only with --trusted-ca-file (the CA that signed the nodes' certificates)")]
    NoPeerCa,
}

type Stamp = Vec<Option<(SystemTime, u64)>>;

/// The current server configuration, reloaded when the files change.
pub struct Reloader {
    files: TlsFiles,
    current: ArcSwap<(Stamp, Arc<ServerConfig>)>,
    failed: Mutex<Option<Stamp>>,
}

fn file_err(option: &'static str, path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        option,
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

impl TlsFiles {
    fn paths(&self) -> Vec<&Path> {
        let mut v = vec![self.cert_file.as_path(), self.key_file.as_path()];
        v.extend(self.trusted_ca_file.as_deref());
        v
    }

    fn stamp(&self) -> Stamp {
        self.paths()
            .into_iter()
            .map(|p| {
                let m = std::fs::metadata(p).ok()?;
                Some((m.modified().ok()?, m.len()))
            })
            .collect()
    }

    /// The certificate chain and key of `--cert-file` and `--key-file`.
    fn pair(&self) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert_file)
            .and_then(|i| i.collect::<Result<_, _>>())
            .map_err(|e| file_err("--cert-file", &self.cert_file, e))?;
        if certs.is_empty() {
            return Err(file_err(
                "--cert-file",
                &self.cert_file,
                "no PEM certificate in the file",
            ));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key_file)
            .map_err(|e| file_err("--key-file", &self.key_file, e))?;
        Ok((certs, key))
    }

    /// The certificates of `--trusted-ca-file` (at least one).
    fn roots(ca: &Path) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in
            CertificateDer::pem_file_iter(ca).map_err(|e| file_err("--trusted-ca-file", ca, e))?
        {
            let cert = cert.map_err(|e| file_err("--trusted-ca-file", ca, e))?;
            roots
                .add(cert)
                .map_err(|e| file_err("--trusted-ca-file", ca, e))?;
        }
        if roots.is_empty() {
            return Err(file_err("--trusted-ca-file", ca, "no PEM certificate"));
        }
        Ok(roots)
    }

    /// Loads the files into a server configuration offering h2 and HTTP/1.1.
    pub fn load(&self) -> Result<ServerConfig, TlsError> {
        let (certs, key) = self.pair()?;
        let builder = ServerConfig::builder();
        let builder = match (&self.trusted_ca_file, self.client_cert_auth) {
            (Some(ca), _) => {
                let verifier = WebPkiClientVerifier::builder(Arc::new(Self::roots(ca)?))
                    .build()
                    .map_err(|e| file_err("--trusted-ca-file", ca, e))?;
                builder.with_client_cert_verifier(verifier)
            }
            (None, true) => return Err(TlsError::NoCa),
            (None, false) => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Pair(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    /// The client side of this node's TLS, for reaching the other nodes' client ports
    /// (followers to the leader): their certificates are checked against
    /// `--trusted-ca-file`, and this node presents its own `--cert-file` (certificates for
    /// etcd usually carry client as well as server auth; `scripts/certs.sh`'s do). Loaded
    /// once at start.
    pub fn peer_client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let ca = self.trusted_ca_file.as_ref().ok_or(TlsError::NoPeerCa)?;
        let roots = Self::roots(ca)?;
        let (certs, key) = self.pair()?;
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(|e| TlsError::Pair(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

impl Reloader {
    /// Loads the files now: a start-up with unusable files fails naming the option.
    pub fn new(files: TlsFiles) -> Result<Self, TlsError> {
        let stamp = files.stamp();
        let config = Arc::new(files.load()?);
        Ok(Self {
            files,
            current: ArcSwap::from_pointee((stamp, config)),
            failed: Mutex::new(None),
        })
    }

    /// The configuration for a new connection, reloaded first if the files changed.
    pub fn config(&self) -> Arc<ServerConfig> {
        let stamp = self.files.stamp();
        let current = self.current.load();
        if current.0 == stamp {
            return current.1.clone();
        }
        match self.files.load() {
            Ok(config) => {
                let config = Arc::new(config);
                self.current.store(Arc::new((stamp, config.clone())));
                tracing::info!(cert_file = %self.files.cert_file.display(), "reloaded TLS certificates");
                config
            }
            Err(e) => {
                let mut failed = self.failed.lock().expect("not poisoned");
                if failed.as_ref() != Some(&stamp) {
                    tracing::warn!(error = %e, "changed TLS files do not load; keeping the previous certificates");
                    *failed = Some(stamp);
                }
                current.1.clone()
            }
        }
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config())
    }

    pub fn client_cert_required(&self) -> bool {
        self.files.trusted_ca_file.is_some() || self.files.client_cert_auth
    }
}
