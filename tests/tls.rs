//! remote-shim over TLS: a real program (`cat`) reads home's file through a home-agent that serves TLS and
//! requires a client certificate (and the token); without the client certificate, or trusting another CA,
//! the job never starts and the message says why.

use std::path::{Path, PathBuf};

use homeward::{skip_unless_root, Hosts};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};

/// A certificate authority made for the test.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
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

    /// Writes `NAME.pem` (this CA's certificate) into `dir`.
    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        write(dir, &format!("{name}.pem"), &self.pem)
    }

    /// Writes a certificate for `names` signed by this CA and its key, `NAME.pem` and `NAME.key`, into `dir`.
    fn leaf(&self, dir: &Path, name: &str, names: &[&str], purpose: ExtendedKeyUsagePurpose) -> [PathBuf; 2] {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages.push(purpose);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap().pem();
        [write(dir, &format!("{name}.pem"), &cert), write(dir, &format!("{name}.key"), &key.serialize_pem())]
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

fn arg(path: &Path) -> String {
    path.display().to_string()
}

#[test]
fn cat_over_tls_with_a_client_certificate() {
    skip_unless_root!();
    let certs = tempfile::Builder::new().prefix("homeward-tls-").tempdir().unwrap();
    let dir = certs.path();
    let (home_ca, client_ca, other_ca) = (Ca::new("home CA"), Ca::new("client CA"), Ca::new("other CA"));
    let [server_cert, server_key] =
        home_ca.leaf(dir, "home", &["127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
    let [client_cert, client_key] = client_ca.leaf(dir, "builder", &[], ExtendedKeyUsagePurpose::ClientAuth);
    let (home_ca, client_ca, other_ca) =
        (home_ca.write(dir, "home-ca"), client_ca.write(dir, "client-ca"), other_ca.write(dir, "other-ca"));

    let hosts = Hosts::builder()
        .agent_arg("--tls-cert")
        .agent_arg(arg(&server_cert))
        .agent_arg("--tls-key")
        .agent_arg(arg(&server_key))
        .agent_arg("--tls-client-ca")
        .agent_arg(arg(&client_ca))
        .start();
    hosts.write("greeting.txt", "hello over TLS\n");
    let native = hosts.native_copy();
    let cat = || hosts.cmd(&["cat", "greeting.txt"]);
    let both = cat()
        .shim_arg("--tls-ca")
        .shim_arg(&arg(&home_ca))
        .shim_arg("--tls-cert")
        .shim_arg(&arg(&client_cert))
        .shim_arg("--tls-key")
        .shim_arg(&arg(&client_key))
        .check(&native);
    assert_eq!(both.remote.stdout(), "hello over TLS\n", "{}", both.remote);

    let addr = hosts.addr();
    let no_client_cert = cat().shim_arg("--tls-ca").shim_arg(&arg(&home_ca)).remote();
    assert_eq!(no_client_cert.code(), 125, "{no_client_cert}");
    assert!(
        no_client_cert.stderr().contains(&format!("cannot reach home at {addr}:"))
            && no_client_cert.stderr().contains("pass --tls-cert and --tls-key"),
        "{no_client_cert}"
    );
    let other = cat()
        .shim_arg("--tls-ca")
        .shim_arg(&arg(&other_ca))
        .shim_arg("--tls-cert")
        .shim_arg(&arg(&client_cert))
        .shim_arg("--tls-key")
        .shim_arg(&arg(&client_key))
        .remote();
    assert_eq!(other.code(), 125, "{other}");
    assert!(other.stderr().contains("invalid peer certificate: UnknownIssuer"), "{other}");
    let plaintext = cat().remote();
    assert_eq!(plaintext.code(), 125, "{plaintext}");
    assert!(plaintext.stderr().contains("home may require TLS"), "{plaintext}");
}
