//! How the agent verifies the relay before it sends its token: a pinned certificate
//! fingerprint, a CA file, or the public web PKI roots.

use std::sync::{Arc, Mutex};

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
    DigitallySignedStruct, SignatureScheme,
};

use crate::{config::parse_fingerprint, AgentConfig, AgentError};

/// Accepts exactly one certificate, by SHA-256 of its DER bytes, and checks the handshake
/// signature with it. Remembers a mismatch so the agent can report it in plain words.
#[derive(Debug)]
pub(crate) struct PinnedVerifier {
    want: [u8; 32],
    provider: Arc<CryptoProvider>,
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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
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
            provider,
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
