//! How remote-shim reaches home ([`LinkConfig`]): home-agent's address, the token, and TLS ([`ClientTls`]: the
//! CA that must have signed home's certificate, the name to check it against, the client's own certificate).
//! Also the reading of a failed TLS handshake into a cause a user can act on.

use crate::client::LinkError;
use std::path::Path;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// Everything needed to open a session at home.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// home-agent's address as the user gave it: `HOST:PORT`, `http://HOST:PORT` or `https://HOST:PORT`.
    pub addr: String,
    pub token: Option<String>,
    /// `None`: plaintext HTTP/2.
    pub tls: Option<ClientTls>,
}

/// TLS as the client does it. The server's certificate is checked against `ca` only: no system roots (a
/// homeward user runs their own CA, and a public one would vouch for any host it certified).
#[derive(Clone)]
pub struct ClientTls {
    ca: Vec<u8>,
    domain: Option<String>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ClientTls")
            .field("domain", &self.domain)
            .field("client_cert", &self.identity.is_some())
            .finish()
    }
}

/// Why the link's settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(transparent)]
    File(#[from] homeward_proto::text::PemFileError),
    #[error("--home {0} asks for TLS: pass --tls-ca FILE, the CA that signed home-agent's certificate")]
    NoCa(String),
    #[error("--home {0} asks for plaintext, but TLS options were given: use --home https://…")]
    PlaintextWithTls(String),
}

impl ClientTls {
    /// From PEM text: the CA, the name home's certificate must hold (default: the host of `--home`), and
    /// the client's certificate and key, for a home that requires client certificates.
    pub fn from_pem(
        ca: impl Into<Vec<u8>>,
        domain: Option<String>,
        identity: Option<(Vec<u8>, Vec<u8>)>,
    ) -> Self {
        ClientTls { ca: ca.into(), domain, identity }
    }

    /// Reads `--tls-ca`, and `--tls-cert` with `--tls-key`, checking that each holds what it should.
    pub fn from_files(
        ca: &Path,
        domain: Option<String>,
        identity: Option<(&Path, &Path)>,
    ) -> Result<ClientTls, TransportError> {
        let ca = homeward_proto::text::read_pem("CA file", ca, "CERTIFICATE")?;
        let identity = match identity {
            Some((cert, key)) => Some((
                homeward_proto::text::read_pem("client certificate file", cert, "CERTIFICATE")?,
                homeward_proto::text::read_pem("client key file", key, "PRIVATE KEY")?,
            )),
            None => None,
        };
        Ok(ClientTls { ca, domain, identity })
    }

    fn config(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca));
        if let Some(domain) = &self.domain {
            config = config.domain_name(domain.clone());
        }
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        config
    }
}

impl LinkConfig {
    /// `home` as given to `--home`. An `https://` address needs `tls`; a bare `HOST:PORT` is TLS when `tls`
    /// is given, plaintext otherwise; `http://` is plaintext.
    pub fn new(
        home: &str,
        token: Option<String>,
        tls: Option<ClientTls>,
    ) -> Result<LinkConfig, TransportError> {
        if home.starts_with("https://") && tls.is_none() {
            return Err(TransportError::NoCa(home.to_string()));
        }
        if home.starts_with("http://") && tls.is_some() {
            return Err(TransportError::PlaintextWithTls(home.to_string()));
        }
        Ok(LinkConfig { addr: home.to_string(), token, tls })
    }

    /// The endpoint to connect to (the caller adds timeouts and window sizes); the error says why the
    /// address or the TLS settings cannot be used.
    pub(crate) fn endpoint(&self) -> Result<Endpoint, LinkError> {
        let host_port = self.addr.trim_start_matches("https://").trim_start_matches("http://");
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let endpoint = Endpoint::from_shared(format!("{scheme}://{host_port}")).map_err(|e| {
            LinkError::Unreachable { addr: self.addr.clone(), cause: format!("bad address: {e}") }
        })?;
        match &self.tls {
            // rustls checks the client's key against its certificate here.
            Some(tls) => endpoint.tls_config(tls.config()).map_err(|e| LinkError::Tls {
                addr: self.addr.clone(),
                cause: format!("the TLS settings are not usable: {}", homeward_proto::text::error_chain(&e)),
                hint: "check the files of --tls-ca, --tls-cert and --tls-key".into(),
            }),
            None => Ok(endpoint),
        }
    }

    /// The cause of a failed connection (`first_call` false) or first call when it is TLS's (or the lack of
    /// it), and what to do about it. `None` for other causes (nobody listening, a timeout, a refused token).
    pub(crate) fn tls_failure(
        &self,
        err: &(dyn std::error::Error + 'static),
        first_call: bool,
    ) -> Option<(String, String)> {
        let text = homeward_proto::text::error_chain(err);
        let last = std::iter::successors(Some(err), |e| e.source()).last().map(ToString::to_string);
        let Some(tls) = &self.tls else {
            // A plaintext client meeting a TLS server: the server drops the connection at the HTTP/2
            // preface (or answers with a TLS alert the client cannot read as HTTP/2).
            let lower = text.to_lowercase();
            let plaintext_to_tls =
                ["broken pipe", "frame with invalid size", "connection closed", "connection reset"]
                    .iter()
                    .any(|sign| lower.contains(sign));
            let cause = format!("home dropped the connection as HTTP/2 began: {}", last.unwrap_or_default());
            let hint = "home may require TLS: pass --tls-ca FILE, the CA that signed its certificate";
            return plaintext_to_tls.then(|| (cause, hint.to_string()));
        };
        if let Some(found) = rustls_error(err) {
            let hint = match found {
                rustls::Error::InvalidCertificate(cert) => certificate_hint(cert, tls, &self.addr),
                rustls::Error::AlertReceived(alert) => alert_hint(&format!("{alert:?}"), tls),
                rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
                    "home does not speak TLS: start home-agent with --tls-cert and --tls-key, or connect \
                     without --tls-ca"
                        .to_string()
                }
                _ => String::new(),
            };
            return Some((format!("TLS handshake failed: {found}"), hint));
        }
        // An alert after the handshake (TLS 1.3 checks the client's certificate then) reaches us through
        // HTTP/2, which keeps only its text.
        const ALERT: &str = "received fatal alert: ";
        if let Some(at) = text.find(ALERT) {
            let alert = text[at + ALERT.len()..].split(|c: char| !c.is_alphanumeric()).next().unwrap_or("");
            return Some((format!("TLS handshake failed: {ALERT}{alert}"), alert_hint(alert, tls)));
        }
        // Or the alert is lost: home closes the connection while our first request is on its way, and the
        // reset discards the alert. A connection that fails right after a good handshake, before any answer
        // (an answer, such as a refused token, has no transport error as its source), is that.
        if first_call && err.source().is_some() {
            let cause = format!(
                "home closed the connection right after the TLS handshake: {}",
                last.unwrap_or_default()
            );
            let hint = if tls.identity.is_none() {
                "home may require a client certificate: pass --tls-cert and --tls-key"
            } else {
                "home may have refused this client's certificate: is it signed by home-agent's \
                 --tls-client-ca, and still valid?"
            };
            return Some((cause, hint.to_string()));
        }
        None
    }
}

/// What to do about home's certificate being refused.
fn certificate_hint(err: &rustls::CertificateError, tls: &ClientTls, addr: &str) -> String {
    use rustls::CertificateError as E;
    match err {
        E::UnknownIssuer | E::BadSignature => {
            "home's certificate is not signed by the CA given with --tls-ca".into()
        }
        E::NotValidForName | E::NotValidForNameContext { .. } => match &tls.domain {
            Some(name) => format!("home's certificate does not hold the name {name} given with --tls-domain"),
            None => format!(
                "home's certificate does not hold the host of {addr}: connect by a name it holds, or pass \
                     --tls-domain NAME"
            ),
        },
        E::Expired | E::ExpiredContext { .. } | E::NotValidYet | E::NotValidYetContext { .. } => {
            "home's certificate is outside its validity period: renew it, or check both clocks".into()
        }
        _ => "home's certificate was refused".into(),
    }
}

/// What to do about a fatal alert from home (by the alert's name, as rustls spells it).
fn alert_hint(alert: &str, tls: &ClientTls) -> String {
    match alert {
        "CertificateRequired" | "HandshakeFailure" if tls.identity.is_none() => {
            "home requires a client certificate: pass --tls-cert and --tls-key".into()
        }
        "UnknownCA" | "BadCertificate" | "CertificateExpired" | "CertificateUnknown" | "AccessDenied"
        | "DecryptError" => "home refused this client's certificate: is it signed by home-agent's \
                             --tls-client-ca, and still valid?"
            .into(),
        _ => String::new(),
    }
}

/// The rustls error in `err`'s chain. rustls's errors travel inside `std::io::Error`s, whose `source()`
/// skips the error they carry, so each `io::Error` is opened.
fn rustls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(found) = e.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        if let Some(found) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(found);
        }
        cur = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheme_and_tls_agree() {
        let tls = || Some(ClientTls::from_pem(Vec::new(), None, None));
        assert!(LinkConfig::new("10.0.0.1:7070", None, None).unwrap().tls.is_none());
        assert!(LinkConfig::new("10.0.0.1:7070", None, tls()).unwrap().tls.is_some());
        assert!(LinkConfig::new("https://home:7070", None, tls()).is_ok());
        let err = LinkConfig::new("https://home:7070", None, None).unwrap_err().to_string();
        assert!(err.contains("pass --tls-ca"), "{err}");
        let err = LinkConfig::new("http://home:7070", None, tls()).unwrap_err().to_string();
        assert!(err.contains("asks for plaintext"), "{err}");
    }

    #[test]
    fn rustls_error_inside_io_error() {
        let rustls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, rustls);
        let found = rustls_error(&io).map(ToString::to_string);
        assert_eq!(found.as_deref(), Some("invalid peer certificate: UnknownIssuer"));
    }
}
