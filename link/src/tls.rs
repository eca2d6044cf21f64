//! TLS for the link: the controller's identity and the node-side pinning verifier.
//!
//! Nodes do not use a CA: they pin the controller's exact end-entity certificate (byte
//! equality) and still verify the TLS 1.3 handshake signature against it, so only the holder of
//! the matching private key can pose as the controller. Names and validity dates are not checked
//! (the pin is the whole trust decision; rotate by distributing a new pin).
//!
//! Every rustls config here is built with an explicit *ring* provider, never the process default,
//! so the link works whatever other crates install.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// ALPN protocol id of the link.
pub const ALPN: &[u8] = b"fleet-link/1";

/// Why a certificate, key or TLS config could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Generating a self-signed certificate failed.
    #[error("generating a self-signed certificate failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A PEM file could not be read or parsed.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// rustls refused the configuration (e.g. a key that does not match the certificate).
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
    /// The TLS config cannot be used for QUIC.
    #[error("TLS configuration unusable for QUIC: {0}")]
    Quic(String),
}

/// The ring crypto provider used for every link config.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The controller's certificate chain and private key.
#[derive(Debug)]
pub struct ControllerIdentity {
    /// End-entity certificate first.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The end-entity certificate's private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for ControllerIdentity {
    fn clone(&self) -> Self {
        Self {
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl ControllerIdentity {
    /// A fresh self-signed certificate for `names` (for development and tests).
    pub fn self_signed(names: &[String]) -> Result<Self, TlsError> {
        let certified = rcgen::generate_simple_self_signed(names.to_vec())?;
        let key = PrivateKeyDer::try_from(certified.signing_key.serialize_der()).map_err(|e| {
            TlsError::Quic(format!("generated key is not a usable private key: {e}"))
        })?;
        Ok(Self {
            cert_chain: vec![certified.cert.der().clone()],
            key,
        })
    }

    /// Loads a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let cert_chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| pem_error(cert, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error(cert, e))?;
        if cert_chain.is_empty() {
            return Err(TlsError::Pem {
                path: cert.to_owned(),
                reason: "no CERTIFICATE block found".to_owned(),
            });
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error(key, e))?;
        Ok(Self { cert_chain, key })
    }

    /// The certificate chain as PEM (write it where nodes read their pin).
    pub fn cert_pem(&self) -> String {
        self.cert_chain
            .iter()
            .map(|c| pem_encode("CERTIFICATE", c.as_ref()))
            .collect()
    }

    /// The private key as PEM.
    pub fn key_pem(&self) -> String {
        let label = match &self.key {
            PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
            PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
            _ => "PRIVATE KEY",
        };
        pem_encode(label, self.key.secret_der())
    }
}

fn pem_error(path: &Path, e: impl fmt::Display) -> TlsError {
    TlsError::Pem {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The first certificate of a PEM file: the controller certificate a node pins.
pub fn load_pinned_cert(path: &Path) -> Result<CertificateDer<'static>, TlsError> {
    CertificateDer::from_pem_file(path).map_err(|e| pem_error(path, e))
}

/// Accepts exactly one end-entity certificate and checks handshake signatures against it.
struct PinnedCertVerifier {
    pinned: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for PinnedCertVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedCertVerifier").finish_non_exhaustive()
    }
}

impl ServerCertVerifier for PinnedCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.pinned.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The node-side rustls config: TLS 1.3, ALPN `fleet-link/1`, trusting only `pinned`.
pub fn client_crypto(pinned: CertificateDer<'static>) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let verifier = PinnedCertVerifier {
        pinned,
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The controller-side rustls config: TLS 1.3, ALPN `fleet-link/1`, no client certificates.
pub fn server_crypto(identity: &ControllerIdentity) -> Result<rustls::ServerConfig, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(identity.cert_chain.clone(), identity.key.clone_key())?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_through_files() {
        let id =
            ControllerIdentity::self_signed(&["fleet-controller".to_owned()]).expect("self-signed");
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, id.cert_pem()).expect("write cert");
        std::fs::write(&key, id.key_pem()).expect("write key");
        let loaded = ControllerIdentity::from_pem_files(&cert, &key).expect("load");
        assert_eq!(loaded.cert_chain, id.cert_chain);
        assert_eq!(loaded.key.secret_der(), id.key.secret_der());
        assert_eq!(load_pinned_cert(&cert).ok(), id.cert_chain.first().cloned());
        assert!(server_crypto(&loaded).is_ok());
    }

    #[test]
    fn bad_files_say_what_was_wrong() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem at all\n").expect("write");
        let missing = dir.path().join("missing.pem");
        let err = load_pinned_cert(&empty).err().map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains("empty.pem")),
            "{err:?}"
        );
        let err = ControllerIdentity::from_pem_files(&missing, &empty).err();
        assert!(matches!(err, Some(TlsError::Pem { .. })), "{err:?}");
        let err = ControllerIdentity::from_pem_files(&empty, &empty).err();
        assert!(matches!(err, Some(TlsError::Pem { .. })), "{err:?}");
    }

    #[test]
    fn mismatched_key_is_refused() {
        let a = ControllerIdentity::self_signed(&["a".to_owned()]).expect("a");
        let b = ControllerIdentity::self_signed(&["b".to_owned()]).expect("b");
        let mixed = ControllerIdentity {
            cert_chain: a.cert_chain.clone(),
            key: b.key.clone_key(),
        };
        assert!(server_crypto(&mixed).is_err());
    }
}
