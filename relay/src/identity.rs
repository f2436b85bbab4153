//! The relay's identity: TLS certificate, token signing key and QUIC stateless-reset key, each
//! created on first start in the data directory (0600) and reused afterwards so fingerprints
//! and tokens stay valid across restarts.

use std::{
    fs,
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::Path,
};

use ring::rand::SecureRandom;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::{RelayConfig, RelayError};

/// Everything secret or identifying about this relay.
pub struct Identity {
    /// Certificate chain presented to agents.
    pub certs: Vec<CertificateDer<'static>>,
    /// Its private key.
    pub key: PrivateKeyDer<'static>,
    /// `sha256:` fingerprint of the end-entity certificate (what agents pin).
    pub fingerprint: String,
    /// PKCS#8 Ed25519 key that signs agent tokens.
    pub signing_pkcs8: Vec<u8>,
    /// QUIC stateless-reset key.
    pub reset_key: Vec<u8>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// `sha256:` + lowercase hex of SHA-256 over a certificate's DER bytes.
pub fn fingerprint(cert: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, cert);
    let mut s = String::from("sha256:");
    for b in d.as_ref() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Create the data directory (0700) if needed.
pub fn ensure_data_dir(dir: &Path) -> Result<(), RelayError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(RelayError::file(dir))
}

/// Write `data` to `path` readable by the owner only, atomically (temp file + rename).
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), RelayError> {
    // A name of our own: two processes creating the same file (a relay starting while
    // `periscope token issue` runs) must not rename each other's temp file away.
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let write = || -> io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(RelayError::file(path))
}

/// `n` bytes from the system's secure random generator.
pub fn random(n: usize) -> Result<Vec<u8>, RelayError> {
    let mut v = vec![0u8; n];
    ring::rand::SystemRandom::new()
        .fill(&mut v)
        .map_err(|_| RelayError::Key("system random generator failed".into()))?;
    Ok(v)
}

/// A secret kept in `path` (0600): the file's content when it holds at least 32 bytes, else
/// what `make` returns, written there first (the directory is created 0700 if needed).
pub fn load_or_create_secret(
    path: &Path,
    make: impl FnOnce() -> Result<Vec<u8>, RelayError>,
) -> Result<Vec<u8>, RelayError> {
    if let Ok(k) = fs::read(path) {
        if k.len() >= 32 {
            return Ok(k);
        }
    }
    if let Some(dir) = path.parent() {
        ensure_data_dir(dir)?;
    }
    let k = make()?;
    write_private(path, &k)?;
    tracing::info!(path = %path.display(), "created a new secret");
    Ok(k)
}

/// Random hex string of `bytes` bytes of entropy.
pub fn random_hex(bytes: usize) -> Result<String, RelayError> {
    Ok(random(bytes)?.iter().map(|b| format!("{b:02x}")).collect())
}

fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, RelayError> {
    let data = fs::read(path).map_err(RelayError::file(path))?;
    let certs = rustls_pemfile::certs(&mut &data[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(RelayError::file(path))?;
    if certs.is_empty() {
        return Err(RelayError::Key(format!(
            "{}: no PEM certificate found",
            path.display()
        )));
    }
    Ok(certs)
}

fn read_pem_key(path: &Path) -> Result<PrivateKeyDer<'static>, RelayError> {
    let data = fs::read(path).map_err(RelayError::file(path))?;
    rustls_pemfile::private_key(&mut &data[..])
        .map_err(RelayError::file(path))?
        .ok_or_else(|| RelayError::Key(format!("{}: no PEM private key found", path.display())))
}

/// Load the signing key, creating it (Ed25519, PKCS#8 PEM, 0600) on first use.
pub fn load_or_create_signing_key(path: &Path) -> Result<Vec<u8>, RelayError> {
    if path.exists() {
        return match read_pem_key(path)? {
            PrivateKeyDer::Pkcs8(k) => {
                let der = k.secret_pkcs8_der().to_vec();
                ring::signature::Ed25519KeyPair::from_pkcs8(&der).map_err(|_| {
                    RelayError::Key(format!("{}: not an Ed25519 PKCS#8 key", path.display()))
                })?;
                Ok(der)
            }
            _ => Err(RelayError::Key(format!(
                "{}: not an Ed25519 PKCS#8 key",
                path.display()
            ))),
        };
    }
    let doc = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
        .map_err(|_| RelayError::Key("generating the signing key failed".into()))?;
    let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", doc.as_ref()));
    if let Some(dir) = path.parent() {
        ensure_data_dir(dir)?;
    }
    write_private(path, pem.as_bytes())?;
    tracing::info!(path = %path.display(), "created token signing key");
    Ok(doc.as_ref().to_vec())
}

/// Load (or create) the whole identity for `config`.
pub fn load(config: &RelayConfig) -> Result<Identity, RelayError> {
    ensure_data_dir(&config.data_dir)?;
    let (certs, key) = match (&config.tls.cert, &config.tls.key) {
        (Some(c), Some(k)) => crate::certs::load_files(c, k)?,
        _ => self_signed(config)?,
    };
    let fingerprint = fingerprint(&certs[0]);
    let signing_pkcs8 = load_or_create_signing_key(&config.key_file())?;
    let reset_key = load_or_create_secret(&config.data_dir.join("quic-reset.key"), || random(32))?;
    Ok(Identity {
        certs,
        key,
        fingerprint,
        signing_pkcs8,
        reset_key,
    })
}

/// What `periscope check` reports of `tls.cert` / `tls.key`.
#[derive(Debug)]
pub struct CertFiles {
    /// The DNS names the certificate covers (its subject alternative names).
    pub names: Vec<String>,
    /// When it expires.
    pub not_after: std::time::SystemTime,
}

/// Read and check `tls.cert` and `tls.key` exactly as the relay does at start (chain, key,
/// the pair belonging together), so a bad file shows in `periscope check`, not at the next
/// restart; `None` when the relay uses ACME or its self-signed certificate.
pub fn check_cert_files(config: &RelayConfig) -> Result<Option<CertFiles>, RelayError> {
    let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) else {
        return Ok(None);
    };
    let (chain, _) = crate::certs::load_files(cert, key)?;
    let (_, not_after) = crate::certs::validity(&chain[0])?;
    let names = match x509_parser::parse_x509_certificate(&chain[0]) {
        Ok((_, c)) => match c.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        },
        Err(_) => Vec::new(),
    };
    Ok(Some(CertFiles { names, not_after }))
}

/// The self-signed certificate in the data directory, created on first start.
fn self_signed(
    config: &RelayConfig,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), RelayError> {
    let cert_path = config.data_dir.join("self-signed.crt");
    let key_path = config.data_dir.join("self-signed.key");
    if cert_path.exists() && key_path.exists() {
        return Ok((read_pem_certs(&cert_path)?, read_pem_key(&key_path)?));
    }
    let domain = config.domain.trim_end_matches('.').to_ascii_lowercase();
    let names = vec![domain.clone(), format!("*.{domain}"), "localhost".into()];
    let ck = rcgen::generate_simple_self_signed(names)
        .map_err(|e| RelayError::Key(format!("generating a self-signed certificate: {e}")))?;
    write_private(&key_path, ck.signing_key.serialize_pem().as_bytes())?;
    write_private(&cert_path, ck.cert.pem().as_bytes())?;
    tracing::info!(path = %cert_path.display(), "created self-signed certificate");
    Ok((read_pem_certs(&cert_path)?, read_pem_key(&key_path)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn identity_is_stable_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = RelayConfig::dev(dir.path().join("data"));
        let a = load(&cfg).unwrap();
        let b = load(&cfg).unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(a.signing_pkcs8, b.signing_pkcs8);
        assert_eq!(a.reset_key, b.reset_key);
        for f in ["relay.key", "quic-reset.key", "self-signed.key"] {
            let mode = fs::metadata(cfg.data_dir.join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let dmode = fs::metadata(&cfg.data_dir).unwrap().permissions().mode();
        assert_eq!(dmode & 0o777, 0o700);
    }
}
