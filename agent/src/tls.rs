//! How the agent verifies the relay before it sends its token: a pinned certificate
//! fingerprint, a CA file, or the public web PKI roots. Also the TLS the agent speaks to an
//! HTTPS target (`target_tls`).

use std::sync::{Arc, Mutex};

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
    DigitallySignedStruct, SignatureScheme,
};

use crate::{
    config::{parse_fingerprint, split_host_port, TunnelConfig},
    AgentConfig, AgentError,
};

/// Accepts any certificate but checks that the handshake is signed by the key in it, so the
/// session is at least bound to that certificate. For `target_tls_verify = false` (a recorder
/// with a self-signed certificate on the LAN), and the signature half of [`PinnedVerifier`].
#[derive(Debug)]
pub(crate) struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// TLS toward one tunnel's target.
pub(crate) struct TargetTls {
    pub(crate) connector: tokio_rustls::TlsConnector,
    pub(crate) name: ServerName<'static>,
    pub(crate) verify: bool,
}

impl std::fmt::Debug for TargetTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetTls")
            .field("name", &self.name)
            .field("verify", &self.verify)
            .finish_non_exhaustive()
    }
}

/// The TLS client for a tunnel with `target_tls = true` (TLS 1.2 and 1.3: recorders are old).
pub(crate) fn target_tls(t: &TunnelConfig) -> Result<Option<TargetTls>, AgentError> {
    if t.target_tls != Some(true) {
        return Ok(None);
    }
    let bad = |e: String| AgentError::Config(format!("tunnel `{}`: {e}", t.name));
    let host = match &t.target_sni {
        Some(sni) => sni.clone(),
        None => split_host_port(&t.target)
            .map(|(h, _)| h)
            .ok_or_else(|| bad("target: expected HOST:PORT".into()))?,
    };
    let name = ServerName::try_from(host).map_err(|e| bad(format!("target_sni: {e}")))?;
    let provider = proto::transport::quic::provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| AgentError::Tls(e.to_string()))?;
    let verify = t.target_tls_verify != Some(false);
    let mut cfg = if verify {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth()
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TargetTls {
        connector: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
        name,
        verify,
    }))
}

/// Accepts exactly one certificate, by SHA-256 of its DER bytes, and checks the handshake
/// signature with it. Remembers a mismatch so the agent can report it in plain words.
#[derive(Debug)]
pub(crate) struct PinnedVerifier {
    want: [u8; 32],
    signatures: AnyCertificate,
    pub(crate) mismatch: Mutex<Option<String>>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = ring::digest::digest(&ring::digest::SHA256, end_entity);
        if got.as_ref() == self.want {
            return Ok(ServerCertVerified::assertion());
        }
        let msg = format!(
            "the relay's certificate is sha256:{}, but this agent pins sha256:{}; \
             if the relay's certificate changed on purpose, update `fingerprint`",
            hex(got.as_ref()),
            hex(&self.want)
        );
        *self.mismatch.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg.clone());
        Err(rustls::Error::General(msg))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.supported_verify_schemes()
    }
}

/// The rustls client config for `config`, and the pinned verifier if one is used.
pub(crate) fn client_tls(
    config: &AgentConfig,
) -> Result<(rustls::ClientConfig, Option<Arc<PinnedVerifier>>), AgentError> {
    let provider = proto::transport::quic::provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| AgentError::Tls(e.to_string()))?;
    if let Some(fp) = &config.fingerprint {
        let want = parse_fingerprint(fp)
            .ok_or_else(|| AgentError::Config("fingerprint: not a sha256 fingerprint".into()))?;
        let v = Arc::new(PinnedVerifier {
            want,
            signatures: AnyCertificate(provider),
            mismatch: Mutex::new(None),
        });
        let tls = builder
            .dangerous()
            .with_custom_certificate_verifier(v.clone())
            .with_no_client_auth();
        return Ok((tls, Some(v)));
    }
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca_file {
        Some(path) => {
            let data = std::fs::read(path).map_err(|source| AgentError::File {
                path: path.clone(),
                error: source,
            })?;
            for cert in rustls_pemfile::certs(&mut &data[..]) {
                let cert = cert.map_err(|source| AgentError::File {
                    path: path.clone(),
                    error: source,
                })?;
                roots
                    .add(cert)
                    .map_err(|e| AgentError::Tls(format!("{}: {e}", path.display())))?;
            }
            if roots.is_empty() {
                return Err(AgentError::Tls(format!(
                    "{}: no PEM certificates found",
                    path.display()
                )));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok((
        builder.with_root_certificates(roots).with_no_client_auth(),
        None,
    ))
}
