//! TLS between remote-shim's link and a real home-agent on 127.0.0.1: a session works end to end, and every
//! wrong setting (unknown CA, a certificate for another name or expired, no client certificate, one side
//! without TLS) is refused with an error that names the cause.

use home_agent::{AgentConfig, BoundAgent, TlsConfig};
use homeward_proto::pb::{self, call_request::Op, HelloRequest};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use remote_shim::client::{HomeLink, LinkConfig, LinkError};
use remote_shim::transport::ClientTls;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;

const TOKEN: &str = "tls-test-token-0123456789";

/// A certificate authority made for the test.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, PEM.
struct Leaf {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Ca { pem, issuer: Issuer::new(params, key) }
    }

    /// A certificate for `names` (DNS names or IP addresses), for a server or a client.
    fn leaf(&self, names: &[&str], purpose: ExtendedKeyUsagePurpose) -> Leaf {
        self.leaf_with(names, purpose, |_| {})
    }

    fn leaf_with(
        &self,
        names: &[&str],
        purpose: ExtendedKeyUsagePurpose,
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("client"));
        params.extended_key_usages.push(purpose);
        adjust(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap().pem();
        Leaf { cert, key: key.serialize_pem() }
    }

    fn server(&self) -> Leaf {
        self.leaf(&["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth)
    }
}

fn server_tls(leaf: &Leaf, client_ca: Option<&Ca>) -> TlsConfig {
    TlsConfig::from_pem(
        leaf.cert.as_bytes(),
        leaf.key.as_bytes(),
        client_ca.map(|ca| ca.pem.clone().into_bytes()),
    )
}

fn client_tls(ca: &Ca, domain: Option<&str>, identity: Option<&Leaf>) -> ClientTls {
    let identity = identity.map(|l| (l.cert.clone().into_bytes(), l.key.clone().into_bytes()));
    ClientTls::from_pem(ca.pem.as_bytes(), domain.map(str::to_string), identity)
}

async fn start(listen: &str, token: Option<&str>, tls: Option<TlsConfig>) -> SocketAddr {
    // A session's processes get deputies: remote-shim's binary is one, not this test harness.
    home_agent::deputy::set_program(env!("CARGO_BIN_EXE_remote-shim"));
    let config = AgentConfig { tls, ..AgentConfig::new(listen.parse().unwrap(), token.map(str::to_string)) };
    let agent = BoundAgent::bind(config).await.unwrap();
    let addr = agent.local_addr();
    tokio::spawn(agent.serve());
    addr
}

fn hello() -> HelloRequest {
    HelloRequest {
        version: homeward_proto::PROTOCOL_VERSION,
        cwd: std::env::temp_dir().as_os_str().as_bytes().to_vec().into(),
        umask: 0o022,
        description: "tls test".into(),
        resume_seconds: 0,
    }
}

async fn connect(addr: &str, token: Option<&str>, tls: Option<ClientTls>) -> Result<HomeLink, LinkError> {
    let link = LinkConfig::new(addr, token.map(str::to_string), tls).unwrap();
    HomeLink::connect(&link, hello(), remote_shim::client::HomeLoss::Kill).await
}

/// Asks home for its cwd: a call through the session's stream.
async fn getcwd(link: &HomeLink) -> Vec<u8> {
    let reply = link
        .call(pb::Proc { id: 1, parent: 0 }, Op::Getcwd(pb::Getcwd { size: 4096, lease: false }))
        .await
        .unwrap();
    reply.data.to_vec()
}

#[track_caller]
fn refused(result: Result<HomeLink, LinkError>) -> String {
    match result {
        Ok(_) => panic!("the connection should have been refused"),
        Err(err) => err.to_string(),
    }
}

#[tokio::test]
async fn a_session_over_tls_works() {
    let ca = Ca::new("home CA");
    let addr = start("127.0.0.1:0", Some(TOKEN), Some(server_tls(&ca.server(), None))).await;
    let link =
        connect(&format!("https://{addr}"), Some(TOKEN), Some(client_tls(&ca, None, None))).await.unwrap();
    assert_eq!(getcwd(&link).await, std::env::temp_dir().as_os_str().as_bytes());
    // A bare HOST:PORT with a CA is TLS too, and the name may be given apart from the address.
    let only_named = ca.leaf(&["home.example"], ExtendedKeyUsagePurpose::ServerAuth);
    let addr = start("127.0.0.1:0", Some(TOKEN), Some(server_tls(&only_named, None))).await;
    let tls = client_tls(&ca, Some("home.example"), None);
    let link = connect(&addr.to_string(), Some(TOKEN), Some(tls)).await.unwrap();
    assert_eq!(getcwd(&link).await, std::env::temp_dir().as_os_str().as_bytes());
}

#[tokio::test]
async fn the_token_is_still_checked_over_tls() {
    let ca = Ca::new("home CA");
    let addr = start("127.0.0.1:0", Some(TOKEN), Some(server_tls(&ca.server(), None))).await;
    let err =
        refused(connect(&format!("https://{addr}"), Some("wrong"), Some(client_tls(&ca, None, None))).await);
    assert!(err.contains("refused the token"), "{err}");
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let (ca, other) = (Ca::new("home CA"), Ca::new("someone else's CA"));
    let addr = start("127.0.0.1:0", Some(TOKEN), Some(server_tls(&ca.server(), None))).await;
    let err =
        refused(connect(&format!("https://{addr}"), Some(TOKEN), Some(client_tls(&other, None, None))).await);
    assert!(
        err.contains(&format!("cannot reach home at https://{addr}: TLS handshake failed: invalid peer certificate: UnknownIssuer")),
        "{err}"
    );
    assert!(err.contains("not signed by the CA given with --tls-ca"), "{err}");
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let ca = Ca::new("home CA");
    let elsewhere = ca.leaf(&["elsewhere.example"], ExtendedKeyUsagePurpose::ServerAuth);
    let addr = start("127.0.0.1:0", Some(TOKEN), Some(server_tls(&elsewhere, None))).await;
    let err =
        refused(connect(&format!("https://{addr}"), Some(TOKEN), Some(client_tls(&ca, None, None))).await);
    assert!(
        err.contains("TLS handshake failed: invalid peer certificate: certificate not valid for name"),
        "{err}"
    );
    assert!(err.contains("elsewhere.example") && err.contains("--tls-domain"), "{err}");
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let ca = Ca::new("home CA");
    let expired = ca.leaf_with(&["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth, |params| {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let addr = start("127.0.0.1:0", Some(TOKEN), Some(server_tls(&expired, None))).await;
    let err =
        refused(connect(&format!("https://{addr}"), Some(TOKEN), Some(client_tls(&ca, None, None))).await);
    assert!(err.contains("TLS handshake failed: invalid peer certificate: certificate expired"), "{err}");
    assert!(err.contains("validity period"), "{err}");
}

#[tokio::test]
async fn a_client_certificate_authenticates_in_place_of_a_token() {
    let (ca, clients) = (Ca::new("home CA"), Ca::new("clients CA"));
    let client = clients.leaf(&["builder"], ExtendedKeyUsagePurpose::ClientAuth);
    // Without a token, a public address is allowed only when client certificates are required.
    let no_client_certs = AgentConfig {
        tls: Some(server_tls(&ca.server(), None)),
        ..AgentConfig::new("0.0.0.0:0".parse().unwrap(), None)
    };
    let err = BoundAgent::bind(no_client_certs).await.err().expect("bind must refuse").to_string();
    assert!(err.contains("without a token") && err.contains("--tls-client-ca"), "{err}");
    let addr = start("0.0.0.0:0", None, Some(server_tls(&ca.server(), Some(&clients)))).await;
    let home = format!("https://127.0.0.1:{}", addr.port());
    let link = connect(&home, None, Some(client_tls(&ca, None, Some(&client)))).await.unwrap();
    assert_eq!(getcwd(&link).await, std::env::temp_dir().as_os_str().as_bytes());
}

#[tokio::test]
async fn a_missing_or_foreign_client_certificate_is_refused() {
    let (ca, clients) = (Ca::new("home CA"), Ca::new("clients CA"));
    let addr = start("127.0.0.1:0", Some(TOKEN), Some(server_tls(&ca.server(), Some(&clients)))).await;
    let home = format!("https://{addr}");
    let err = refused(connect(&home, Some(TOKEN), Some(client_tls(&ca, None, None))).await);
    // TLS 1.3 checks the client's certificate after the handshake: home's alert may come, or be lost to
    // the reset when home closes while the first request is on its way. Either way the hint is the same.
    assert!(err.contains("TLS handshake") && err.contains("pass --tls-cert and --tls-key"), "{err}");
    // Signed by the CA that signed home's certificate, but not by the one home trusts for clients.
    let foreign = ca.leaf(&["builder"], ExtendedKeyUsagePurpose::ClientAuth);
    let err = refused(connect(&home, Some(TOKEN), Some(client_tls(&ca, None, Some(&foreign)))).await);
    assert!(err.contains("TLS handshake") && err.contains("refused this client's certificate"), "{err}");
}

#[tokio::test]
async fn tls_on_one_side_only_is_refused_clearly() {
    let ca = Ca::new("home CA");
    let tls_home = start("127.0.0.1:0", Some(TOKEN), Some(server_tls(&ca.server(), None))).await;
    let err = refused(connect(&tls_home.to_string(), Some(TOKEN), None).await);
    assert!(
        err.contains(&format!("cannot reach home at {tls_home}")) && err.contains("home may require TLS"),
        "{err}"
    );
    let plain_home = start("127.0.0.1:0", Some(TOKEN), None).await;
    let err = refused(
        connect(&format!("https://{plain_home}"), Some(TOKEN), Some(client_tls(&ca, None, None))).await,
    );
    assert!(err.contains("TLS handshake failed") && err.contains("home does not speak TLS"), "{err}");
}

#[tokio::test]
async fn unusable_certificates_stop_the_agent_before_it_listens() {
    let ca = Ca::new("home CA");
    let (server, other) = (ca.server(), ca.server());
    // The key of another certificate.
    let mismatched = TlsConfig::from_pem(server.cert.as_bytes(), other.key.as_bytes(), None);
    let config = AgentConfig { tls: Some(mismatched), ..AgentConfig::default() };
    let err = format!("{:#}", BoundAgent::bind(config).await.err().expect("bind must refuse"));
    assert!(err.contains("the TLS certificate, key or client CA is not usable"), "{err}");
    let garbage = TlsConfig::from_pem(
        server.cert.as_bytes(),
        &b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"[..],
        None,
    );
    let config = AgentConfig { tls: Some(garbage), ..AgentConfig::default() };
    let err = format!("{:#}", BoundAgent::bind(config).await.err().expect("bind must refuse"));
    assert!(err.contains("the TLS certificate, key or client CA is not usable"), "{err}");
}
