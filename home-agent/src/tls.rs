//! TLS for the listener (rustls, through tonic): the agent's certificate and key, and optionally the CA whose
//! client certificates it requires. tonic applies it to every accepted connection, the handshake done on its
//! own task, before HTTP/2 and before the token check.

use homeward_proto::text::read_pem;
use std::path::Path;
use std::time::Duration;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// How long a client may take over the TLS handshake before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The agent's TLS settings, as PEM text.
#[derive(Clone)]
pub struct TlsConfig {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("TlsConfig").field("requires_client_certs", &self.client_ca.is_some()).finish()
    }
}

/// Why a certificate, key or CA file cannot be used.
pub type TlsFileError = homeward_proto::text::PemFileError;

impl TlsConfig {
    /// From PEM text: the certificate chain (the agent's certificate first), its private key (PKCS#8,
    /// PKCS#1 or SEC1), and the CA that must have signed every client's certificate (`None`: no client
    /// certificates asked for).
    pub fn from_pem(
        cert: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
        client_ca: Option<Vec<u8>>,
    ) -> TlsConfig {
        TlsConfig { cert: cert.into(), key: key.into(), client_ca }
    }

    /// Reads `--tls-cert`, `--tls-key` and `--tls-client-ca`, checking that each holds what it should.
    pub fn from_files(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<TlsConfig, TlsFileError> {
        let cert = read_pem("TLS certificate file", cert, "CERTIFICATE")?;
        let key = read_pem("TLS key file", key, "PRIVATE KEY")?;
        let client_ca = client_ca.map(|ca| read_pem("client CA file", ca, "CERTIFICATE")).transpose()?;
        Ok(TlsConfig { cert, key, client_ca })
    }

    /// Whether a client must present a certificate signed by the client CA (which authenticates it).
    pub fn requires_client_certs(&self) -> bool {
        self.client_ca.is_some()
    }

    pub(crate) fn server_config(&self) -> ServerTlsConfig {
        let config = ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert, &self.key))
            .timeout(HANDSHAKE_TIMEOUT);
        match &self.client_ca {
            Some(ca) => config.client_ca_root(Certificate::from_pem(ca)),
            None => config,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_labels() {
        let dir = std::env::temp_dir().join(format!("home-agent-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let cert = write("cert.pem", "-----BEGIN CERTIFICATE-----\nMII=\n-----END CERTIFICATE-----\n");
        let key = write("key.pem", "-----BEGIN EC PRIVATE KEY-----\nMII=\n-----END EC PRIVATE KEY-----\n");
        let der = write("cert.der", "0\u{82}\u{1}");
        assert!(TlsConfig::from_files(&cert, &key, None).is_ok());
        assert!(TlsConfig::from_files(&cert, &key, Some(&cert)).unwrap().requires_client_certs());
        let err = TlsConfig::from_files(&der, &key, None).unwrap_err().to_string();
        assert!(err.contains("cert.der holds no PEM `CERTIFICATE` block"), "{err}");
        let err = TlsConfig::from_files(&cert, &cert, None).unwrap_err().to_string();
        assert!(err.contains("TLS key file"), "{err}");
        let err = TlsConfig::from_files(&cert, &dir.join("missing"), None).unwrap_err().to_string();
        assert!(err.starts_with("cannot read the TLS key file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
