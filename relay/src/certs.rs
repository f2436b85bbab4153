//! Certificates of the HTTPS edge, chosen per TLS handshake by SNI.
//!
//! Three sources ([`CertSource`]):
//! - **files**: one chain (often a wildcard for `*.DOMAIN`) for every name;
//! - **ACME**: one certificate per hostname, obtained and renewed by `acme`, cached on disk;
//! - **development CA**: without files or ACME, a CA kept in the data directory signs one
//!   certificate per hostname on the spot. webpki (and so rustls clients) refuses wildcards
//!   under `localhost`, and a per-name certificate verifies with `--cacert DATA_DIR/dev-ca.crt`.
//!
//! Names get a certificate only when something claims them ([`CertStore::want`]: an http
//! route, the relay's own domain), never because a visitor sent some SNI: a random name must
//! not make the relay sign or order anything.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use dashmap::DashMap;
use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use crate::{config::CertSource, identity, RelayConfig, RelayError};

/// ALPN of the tls-alpn-01 challenge (RFC 8737).
pub(crate) const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// A certificate with its key, ready for rustls, and when it expires.
#[derive(Clone)]
pub(crate) struct Cert {
    pub(crate) key: Arc<CertifiedKey>,
    pub(crate) not_after: SystemTime,
    /// `notAfter − notBefore` of the end-entity certificate.
    pub(crate) lifetime: Duration,
}

impl Cert {
    /// Build from DER parts; reads the end-entity certificate's expiry.
    pub(crate) fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Cert, RelayError> {
        let first = chain
            .first()
            .ok_or_else(|| RelayError::Key("empty certificate chain".into()))?;
        let (not_before, not_after) = validity(first)?;
        let key = CertifiedKey::from_der(chain, key, &proto::transport::quic::provider())
            .map_err(|e| RelayError::Key(format!("certificate and key: {e}")))?;
        Ok(Cert {
            key: Arc::new(key),
            not_after,
            lifetime: not_after.duration_since(not_before).unwrap_or_default(),
        })
    }

    /// Parse a PEM bundle holding a chain and its private key.
    pub(crate) fn from_pem(pem: &[u8]) -> Result<Cert, RelayError> {
        let chain = rustls_pemfile::certs(&mut &pem[..])
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| RelayError::Key(format!("certificate PEM: {e}")))?;
        let key = rustls_pemfile::private_key(&mut &pem[..])
            .map_err(|e| RelayError::Key(format!("key PEM: {e}")))?
            .ok_or_else(|| RelayError::Key("no private key in PEM".into()))?;
        Cert::from_der(chain, key)
    }

    /// Time left before expiry (zero when expired).
    pub(crate) fn remaining(&self, now: SystemTime) -> Duration {
        self.not_after.duration_since(now).unwrap_or_default()
    }
}

impl fmt::Debug for Cert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cert")
            .field(
                "not_after",
                &humantime::format_rfc3339_seconds(self.not_after),
            )
            .finish_non_exhaustive()
    }
}

/// The `tls.cert` chain and `tls.key` key, checked to belong together. Every error names the
/// setting and the file, so a wrong path or a key of another certificate is plain at start.
pub(crate) fn load_files(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), RelayError> {
    let bad = |setting: &str, path: &Path, msg: &dyn fmt::Display| {
        RelayError::Config(format!("{setting} {}: {msg}", path.display()))
    };
    let data = std::fs::read(cert).map_err(|e| bad("tls.cert", cert, &e))?;
    let chain = rustls_pemfile::certs(&mut &data[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("tls.cert", cert, &e))?;
    let first = chain
        .first()
        .ok_or_else(|| bad("tls.cert", cert, &"no PEM certificate in the file"))?;
    validity(first).map_err(|e| bad("tls.cert", cert, &e))?;
    let data = std::fs::read(key).map_err(|e| bad("tls.key", key, &e))?;
    let private = rustls_pemfile::private_key(&mut &data[..])
        .map_err(|e| bad("tls.key", key, &e))?
        .ok_or_else(|| bad("tls.key", key, &"no PEM private key in the file"))?;
    let signer = proto::transport::quic::provider()
        .key_provider
        .load_private_key(private.clone_key())
        .map_err(|e| bad("tls.key", key, &e))?;
    let certified = CertifiedKey::new(chain.clone(), signer);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(RelayError::Config(format!(
                "tls.key {} does not belong to the certificate in tls.cert {}",
                key.display(),
                cert.display()
            )))
        }
    }
    Ok((chain, private))
}

/// `notBefore` and `notAfter` of a DER certificate.
pub(crate) fn validity(der: &[u8]) -> Result<(SystemTime, SystemTime), RelayError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| RelayError::Key(format!("unreadable certificate: {e}")))?;
    let at = |t: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0))
    };
    Ok((
        at(cert.validity().not_before),
        at(cert.validity().not_after),
    ))
}

/// The edge's certificates by hostname.
pub(crate) struct CertStore {
    source: CertSource,
    /// Served when no per-name certificate exists: the files, or the relay's identity.
    fallback: Arc<CertifiedKey>,
    hosts: DashMap<String, Cert>,
    /// tls-alpn-01 challenge certificates, only ever served to `acme-tls/1` handshakes.
    challenges: DashMap<String, Arc<CertifiedKey>>,
    /// http-01 key authorizations by token, served on the http listener.
    http_tokens: DashMap<String, String>,
    /// Names that should have a certificate (ACME works through this list).
    wanted: DashMap<String, ()>,
    wake: tokio::sync::Notify,
    dev_ca: Option<DevCa>,
    /// The relay's own name (normalised): agents see its certificate under ACME.
    domain: String,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("source", &self.source)
            .field("hosts", &self.hosts.len())
            .finish_non_exhaustive()
    }
}

impl CertStore {
    /// The store for `config`; `fallback` is the relay's identity (or file) certificate.
    pub(crate) fn new(
        config: &RelayConfig,
        fallback: Arc<CertifiedKey>,
    ) -> Result<CertStore, RelayError> {
        let source = config.tls.source();
        let dev_ca = match source {
            CertSource::DevCa => Some(DevCa::load_or_create(&config.data_dir)?),
            _ => None,
        };
        let store = CertStore {
            source,
            fallback,
            hosts: DashMap::new(),
            challenges: DashMap::new(),
            http_tokens: DashMap::new(),
            wanted: DashMap::new(),
            wake: tokio::sync::Notify::new(),
            dev_ca,
            domain: crate::token::normalize_host(&config.domain),
        };
        if source == CertSource::Acme {
            store.load_cached(&acme_dir(config))?;
        }
        Ok(store)
    }

    pub(crate) fn source(&self) -> CertSource {
        self.source
    }

    /// Make sure `host` has (or gets) its own certificate.
    pub(crate) fn want(&self, host: &str) {
        match self.source {
            CertSource::Files => {}
            CertSource::DevCa => {
                if self.hosts.contains_key(host) {
                    return;
                }
                if let Some(ca) = &self.dev_ca {
                    match ca.issue(host) {
                        Ok(c) => {
                            self.hosts.insert(host.to_string(), c);
                        }
                        Err(e) => {
                            tracing::warn!(host, "cannot issue a development certificate: {e}")
                        }
                    }
                }
            }
            CertSource::Acme => {
                if self.wanted.insert(host.to_string(), ()).is_none() {
                    self.wake.notify_one();
                }
            }
        }
    }

    /// Names that should have a certificate.
    pub(crate) fn wanted(&self) -> Vec<String> {
        self.wanted.iter().map(|e| e.key().clone()).collect()
    }

    /// Resolves when [`want`](Self::want) adds a name.
    pub(crate) async fn changed(&self) {
        self.wake.notified().await;
    }

    pub(crate) fn get(&self, host: &str) -> Option<Cert> {
        self.hosts.get(host).map(|c| c.clone())
    }

    pub(crate) fn insert(&self, host: &str, cert: Cert) {
        self.hosts.insert(host.to_string(), cert);
    }

    pub(crate) fn set_challenge(&self, host: &str, cert: Option<Arc<CertifiedKey>>) {
        match cert {
            Some(c) => {
                self.challenges.insert(host.to_string(), c);
            }
            None => {
                self.challenges.remove(host);
            }
        }
    }

    pub(crate) fn set_http_token(&self, token: &str, key_authorization: Option<String>) {
        match key_authorization {
            Some(k) => {
                self.http_tokens.insert(token.to_string(), k);
            }
            None => {
                self.http_tokens.remove(token);
            }
        }
    }

    /// The key authorization for an http-01 `token`, if a challenge is in progress.
    pub(crate) fn http_token(&self, token: &str) -> Option<String> {
        self.http_tokens.get(token).map(|k| k.clone())
    }

    /// Load `DIR/HOST.pem` bundles written by ACME earlier.
    fn load_cached(&self, dir: &Path) -> Result<(), RelayError> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(());
        };
        for e in entries.flatten() {
            let path = e.path();
            let Some(host) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".pem"))
            else {
                continue;
            };
            match std::fs::read(&path)
                .map_err(RelayError::file(&path))
                .and_then(|pem| Cert::from_pem(&pem))
            {
                Ok(c) => {
                    tracing::debug!(host, expires = ?c, "loaded cached certificate");
                    self.hosts.insert(host.to_string(), c);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), "ignoring cached certificate: {e}")
                }
            }
        }
        Ok(())
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let host = hello.server_name().map(crate::token::normalize_host);
        let acme = hello
            .alpn()
            .is_some_and(|mut a| a.any(|p| p == ACME_TLS_ALPN));
        if acme {
            // Only the challenge certificate, never a real one (RFC 8737 section 3).
            return host.and_then(|h| self.challenges.get(&h).map(|c| c.clone()));
        }
        if hello
            .alpn()
            .is_some_and(|mut a| a.any(|p| p == proto::ALPN))
        {
            // An agent on the TCP fallback: the certificate it would see on QUIC, so the
            // same fingerprint / CA / web PKI check passes on both transports.
            return Some(self.agent_cert());
        }
        host.and_then(|h| self.hosts.get(&h).map(|c| c.key.clone()))
            .or_else(|| Some(self.fallback.clone()))
    }
}

/// The certificate agents see on QUIC when ACME is on: the relay domain's own, once obtained.
#[derive(Debug)]
pub(crate) struct AgentCert {
    store: Arc<CertStore>,
    domain: String,
}

impl AgentCert {
    pub(crate) fn new(store: Arc<CertStore>, domain: &str) -> AgentCert {
        AgentCert {
            store,
            domain: crate::token::normalize_host(domain),
        }
    }
}

impl ResolvesServerCert for AgentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.store
            .hosts
            .get(&self.domain)
            .map(|c| c.key.clone())
            .or_else(|| Some(self.store.fallback.clone()))
    }
}

impl CertStore {
    /// The certificate agents see: with ACME the relay domain's own (once obtained), else
    /// the relay identity's (whose fingerprint the relay prints).
    fn agent_cert(&self) -> Arc<CertifiedKey> {
        if self.source == CertSource::Acme {
            if let Some(c) = self.hosts.get(&self.domain) {
                return c.key.clone();
            }
        }
        self.fallback.clone()
    }
}

/// Where ACME keeps its account and certificates.
pub(crate) fn acme_dir(config: &RelayConfig) -> PathBuf {
    config.data_dir.join("acme")
}

/// A self-signed certificate for a tls-alpn-01 challenge: the name, and the critical
/// acmeIdentifier extension carrying the key authorization's digest.
pub(crate) fn alpn_challenge_cert(
    host: &str,
    digest: &[u8],
) -> Result<Arc<CertifiedKey>, RelayError> {
    let err = |e: rcgen::Error| RelayError::Key(format!("tls-alpn-01 certificate: {e}"));
    let mut params = rcgen::CertificateParams::new(vec![host.to_string()]).map_err(err)?;
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(digest));
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let cert = params.self_signed(&key).map_err(err)?;
    let key_der = PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| RelayError::Key(format!("tls-alpn-01 key: {e}")))?;
    // Not `CertifiedKey::from_der`: its consistency check parses the certificate with webpki,
    // which (rightly, for real certificates) refuses the critical acmeIdentifier extension.
    let signer = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| RelayError::Key(format!("tls-alpn-01 key: {e}")))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    )))
}

/// The development CA (`DATA_DIR/dev-ca.crt`, key 0600). Visitors and tests trust it with
/// `--cacert`; it signs a short-lived certificate per hostname in memory.
struct DevCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

const DEV_CA_NAME: &str = "Periscope development CA";

impl DevCa {
    fn params() -> rcgen::CertificateParams {
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, DEV_CA_NAME);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        p.use_authority_key_identifier_extension = true;
        p
    }

    fn load_or_create(dir: &Path) -> Result<DevCa, RelayError> {
        let err = |e: rcgen::Error| RelayError::Key(format!("development CA: {e}"));
        let cert_path = dir.join("dev-ca.crt");
        let key_path = dir.join("dev-ca.key");
        if let (Ok(cert), Ok(key)) = (
            std::fs::read_to_string(&cert_path),
            std::fs::read_to_string(&key_path),
        ) {
            if !cert.is_empty() {
                let key = rcgen::KeyPair::from_pem(&key).map_err(err)?;
                // The issuer needs the CA's name and key only; both are stable.
                return Ok(DevCa {
                    issuer: rcgen::Issuer::new(Self::params(), key),
                });
            }
        }
        let mut params = Self::params();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(3650);
        let key = rcgen::KeyPair::generate().map_err(err)?;
        let cert = params.self_signed(&key).map_err(err)?;
        identity::write_private(&key_path, key.serialize_pem().as_bytes())?;
        identity::write_private(&cert_path, cert.pem().as_bytes())?;
        tracing::info!(path = %cert_path.display(), "created development CA (trust it with curl --cacert)");
        Ok(DevCa {
            issuer: rcgen::Issuer::new(Self::params(), key),
        })
    }

    fn issue(&self, host: &str) -> Result<Cert, RelayError> {
        let err = |e: rcgen::Error| RelayError::Key(format!("development certificate: {e}"));
        let mut params = rcgen::CertificateParams::new(vec![host.to_string()]).map_err(err)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, host);
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(90);
        params.use_authority_key_identifier_extension = true;
        let key = rcgen::KeyPair::generate().map_err(err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(err)?;
        let key_der = PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|e| RelayError::Key(format!("development key: {e}")))?;
        Cert::from_der(vec![cert.der().clone()], key_der)
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// A 90-day certificate for `host` from a development CA kept in `dir`.
    pub(crate) fn dev_cert(dir: &Path, host: &str) -> Cert {
        DevCa::load_or_create(dir).unwrap().issue(host).unwrap()
    }

    /// A self-signed certificate for `cam.example.com` that expires `validity` from now.
    pub(crate) fn short_cert(validity: Duration) -> Cert {
        let mut params = rcgen::CertificateParams::new(vec!["cam.example.com".into()]).unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + validity;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let key_der = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        Cert::from_der(vec![cert.der().clone()], key_der).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;

    #[test]
    fn dev_ca_issues_verifiable_per_host_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::load_or_create(dir.path()).unwrap();
        let cert = ca.issue("cam.localhost").unwrap();
        let left = cert.remaining(SystemTime::now());
        assert!(left > Duration::from_secs(80 * 86400) && left < Duration::from_secs(91 * 86400));

        // A rustls client trusting only dev-ca.crt accepts it for that name.
        let ca_pem = std::fs::read(dir.path().join("dev-ca.crt")).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut &ca_pem[..]) {
            roots.add(c.unwrap()).unwrap();
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            proto::transport::quic::provider(),
        )
        .build()
        .unwrap();
        let name = rustls::pki_types::ServerName::try_from("cam.localhost").unwrap();
        let now = rustls::pki_types::UnixTime::now();
        verifier
            .verify_server_cert(&cert.key.cert[0], &[], &name, &[], now)
            .unwrap();
        let other = rustls::pki_types::ServerName::try_from("nvr.localhost").unwrap();
        assert!(verifier
            .verify_server_cert(&cert.key.cert[0], &[], &other, &[], now)
            .is_err());

        // Reloaded from disk, the CA signs certificates the same roots accept.
        let again = DevCa::load_or_create(dir.path()).unwrap();
        let c2 = again.issue("nvr.localhost").unwrap();
        verifier
            .verify_server_cert(&c2.key.cert[0], &[], &other, &[], now)
            .unwrap();
    }

    #[test]
    fn alpn_challenge_certificate_names_the_host() {
        let c = alpn_challenge_cert("cam.example.com", &[7u8; 32]).unwrap();
        let (_, x) = x509_parser::parse_x509_certificate(&c.cert[0]).unwrap();
        let ext = x
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier");
        assert!(ext.critical);
        assert!(ext.value.ends_with(&[7u8; 32]));
    }
}
