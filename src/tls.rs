//! TLS with rustls and its `ring` crypto provider: the main listener's
//! certificate (loaded from PEM files, swapped on reload without touching
//! open connections) and the upstream client's trust roots (the system's
//! plus `upstream.ca_file`).
//!
//! Fail closed (SPEC §9): a certificate that does not load stops the start,
//! and a reload with one keeps the certificate that is serving. Error
//! messages name the file and the problem, never key material.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};

use crate::config::TlsConfig;

/// ALPN on the main listener: HTTP/2 first, then HTTP/1.1 (hyper-util's
/// auto builder serves both on one connection type).
const SERVER_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why a certificate, key or CA file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{field}: cannot read {}: {source}", path.display())]
    Read {
        field: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The PEM text itself is broken, or holds nothing of the kind wanted.
    #[error("{field}: {}: {problem}", path.display())]
    Pem { field: &'static str, path: PathBuf, problem: PemProblem },
    /// rustls refused the key (an unsupported algorithm) or the pair.
    #[error("{field}: {}: {problem}", path.display())]
    Refused { field: &'static str, path: PathBuf, problem: String },
    #[error("tls: the key in {} does not belong to the certificate in {}", key.display(), cert.display())]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("tls: {0}")]
    Config(String),
}

/// What is wrong with a PEM file, in words that quote none of its content
/// (a key file's lines are secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PemProblem {
    NoCertificate,
    NoPrivateKey,
    MissingEnd,
    BadBegin,
    BadBase64,
    TooLarge,
}

impl fmt::Display for PemProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PemProblem::NoCertificate => "no PEM CERTIFICATE section found",
            PemProblem::NoPrivateKey => {
                "no PEM private key found (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)"
            }
            PemProblem::MissingEnd => "a PEM section has no END line",
            PemProblem::BadBegin => "a PEM BEGIN line is malformed",
            PemProblem::BadBase64 => "a PEM section is not valid base64",
            PemProblem::TooLarge => "a PEM section is too large",
        })
    }
}

/// The one crypto provider keyward uses (no process-wide default is
/// installed or relied on).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { field, path: path.to_owned(), source })
}

fn pem_problem(e: &pem::Error, none: PemProblem) -> PemProblem {
    match e {
        pem::Error::MissingSectionEnd { .. } => PemProblem::MissingEnd,
        pem::Error::IllegalSectionStart { .. } => PemProblem::BadBegin,
        pem::Error::Base64Decode(_) => PemProblem::BadBase64,
        pem::Error::SectionTooLarge => PemProblem::TooLarge,
        // NoItemsFound, and reading a slice cannot fail with Io.
        _ => none,
    }
}

/// Every certificate in a PEM file, in order; at least one.
pub fn load_certs(
    field: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(field, path)?;
    let certs =
        CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>().map_err(|e| {
            TlsError::Pem {
                field,
                path: path.to_owned(),
                problem: pem_problem(&e, PemProblem::NoCertificate),
            }
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            field,
            path: path.to_owned(),
            problem: PemProblem::NoCertificate,
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read("tls.key", path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Pem {
        field: "tls.key",
        path: path.to_owned(),
        problem: pem_problem(&e, PemProblem::NoPrivateKey),
    })
}

/// The listener's certificate chain and key from `tls.cert` / `tls.key`,
/// checked to belong together (a mismatched pair would fail every
/// handshake; refusing it keeps the old pair serving on reload).
pub fn load_certified_key(tls: &TlsConfig) -> Result<Arc<CertifiedKey>, TlsError> {
    let certs = load_certs("tls.cert", &tls.cert)?;
    let key = load_key(&tls.key)?;
    let provider = provider();
    let signing_key = provider.key_provider.load_private_key(key).map_err(|e| {
        TlsError::Refused { field: "tls.key", path: tls.key.clone(), problem: e.to_string() }
    })?;
    let certified = CertifiedKey::new(certs, signing_key);
    match certified.keys_match() {
        Ok(()) => Ok(Arc::new(certified)),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::Mismatch { cert: tls.cert.clone(), key: tls.key.clone() })
        }
        // ring knows the public half of every key it loads; `Unknown`
        // would mean it could not tell, which rustls itself accepts.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(Arc::new(certified))
        }
        // The leaf certificate does not parse as X.509.
        Err(e) => Err(TlsError::Refused {
            field: "tls.cert",
            path: tls.cert.clone(),
            problem: e.to_string(),
        }),
    }
}

/// SHA-256 of the leaf certificate, hex: names a certificate in logs
/// (public information, unlike the key).
pub fn fingerprint(key: &CertifiedKey) -> String {
    let leaf = key.cert.first().map(|c| c.as_ref()).unwrap_or_default();
    let digest = Sha256::digest(leaf);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The listener's certificate: every new handshake reads the current one;
/// `set` swaps it, and connections already open keep the one they
/// negotiated with (a certificate is only used during the handshake).
#[derive(Debug)]
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl CertResolver {
    pub fn new(key: Arc<CertifiedKey>) -> CertResolver {
        CertResolver { current: ArcSwap::new(key) }
    }

    pub fn set(&self, key: Arc<CertifiedKey>) {
        self.current.store(key);
    }

    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // One certificate for every server name (SNI is not consulted).
        Some(self.current.load_full())
    }
}

/// The listener's rustls config: TLS 1.2 and 1.3, no client certificates,
/// ALPN h2 and http/1.1, certificates from `resolver`.
pub fn server_config(resolver: Arc<CertResolver>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = SERVER_ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The upstream client's rustls config: the system's trust roots (what
/// `update-ca-certificates` manages; distroless ships them) plus every
/// certificate in `ca_file`. The certificate must name the host of
/// `upstream.url` (an IP address needs an IP SAN).
pub fn upstream_client_config(ca_file: Option<&Path>) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    // Unparsable system certificates are skipped, as browsers do; a
    // missing system store is fine when ca_file names the upstream's CA.
    let (system, _skipped) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(system_roots = system, "system trust roots loaded");
    if let Some(path) = ca_file {
        for cert in load_certs("upstream.ca_file", path)? {
            roots.add(cert).map_err(|e| TlsError::Refused {
                field: "upstream.ca_file",
                path: path.to_owned(),
                problem: e.to_string(),
            })?;
        }
    }
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// `check-config`: the files `serve` would read at start load (the
/// listener's pair and `upstream.ca_file`; the system roots are not
/// checked, a missing store being no error).
pub fn check(config: &crate::config::Config) -> Result<(), TlsError> {
    if let Some(tls) = &config.tls {
        load_certified_key(tls)?;
    }
    if let Some(ca_file) = &config.upstream.ca_file {
        load_certs("upstream.ca_file", ca_file)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, name: &str, contents: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).expect("write test file");
        path
    }

    fn pair(names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let c = rcgen::generate_simple_self_signed(names).expect("rcgen");
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    fn tls(dir: &tempfile::TempDir, cert: &str, key: &str) -> TlsConfig {
        TlsConfig { cert: write(dir, "tls.crt", cert), key: write(dir, "tls.key", key) }
    }

    fn err(dir: &tempfile::TempDir, cert: &str, key: &str) -> String {
        match load_certified_key(&tls(dir, cert, key)) {
            Ok(_) => panic!("the pair must be refused"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_matching_pair_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = pair(&["localhost"]);
        let key = load_certified_key(&tls(&dir, &cert, &key)).expect("loads");
        assert_eq!(key.cert.len(), 1);
        assert_eq!(fingerprint(&key).len(), 64);
    }

    #[test]
    fn a_missing_cert_file_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, key) = pair(&["localhost"]);
        let config =
            TlsConfig { cert: dir.path().join("absent.crt"), key: write(&dir, "tls.key", &key) };
        let e = load_certified_key(&config).expect_err("refused").to_string();
        assert!(e.starts_with("tls.cert: cannot read "), "{e}");
        assert!(e.contains("absent.crt"), "{e}");
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, key) = pair(&["localhost"]);
        let e = err(&dir, "not a certificate\n", &key);
        assert!(e.starts_with("tls.cert: "), "{e}");
        assert!(e.contains("tls.crt: no PEM CERTIFICATE section found"), "{e}");
    }

    #[test]
    fn a_key_file_holding_a_certificate_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, _) = pair(&["localhost"]);
        let e = err(&dir, &cert, &cert);
        assert!(e.starts_with("tls.key: "), "{e}");
        assert!(e.contains("no PEM private key found"), "{e}");
    }

    #[test]
    fn a_truncated_pem_is_refused_without_quoting_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = pair(&["localhost"]);
        let cut = &key[..key.len() / 2];
        let e = err(&dir, &cert, cut);
        assert!(e.contains("tls.key"), "{e}");
        assert!(e.contains("has no END line"), "{e}");
        // No line of the key reaches the message.
        for line in cut.lines().skip(1) {
            assert!(!e.contains(line), "the error quotes key material: {e}");
        }
    }

    #[test]
    fn a_certificate_with_a_foreign_key_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, _) = pair(&["localhost"]);
        let (_, other_key) = pair(&["localhost"]);
        let e = err(&dir, &cert, &other_key);
        assert!(e.contains("does not belong to the certificate"), "{e}");
    }

    #[test]
    fn a_garbled_certificate_body_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, key) = pair(&["localhost"]);
        let bogus = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let e = err(&dir, bogus, &key);
        assert!(e.starts_with("tls."), "{e}");
    }

    #[test]
    fn the_resolver_hands_out_the_latest_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (c1, k1) = pair(&["one.test"]);
        let first = load_certified_key(&tls(&dir, &c1, &k1)).expect("first");
        let (c2, k2) = pair(&["two.test"]);
        let second = load_certified_key(&tls(&dir, &c2, &k2)).expect("second");
        let resolver = CertResolver::new(first.clone());
        assert!(Arc::ptr_eq(&resolver.current(), &first));
        resolver.set(second.clone());
        assert!(Arc::ptr_eq(&resolver.current(), &second));
        assert!(server_config(Arc::new(resolver)).is_ok());
    }

    #[test]
    fn ca_file_adds_roots_and_a_bad_one_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, _) = pair(&["upstream.test"]);
        let ca = write(&dir, "ca.pem", &cert);
        assert!(upstream_client_config(Some(&ca)).is_ok());
        let bad = write(&dir, "bad.pem", "nothing here");
        let e = upstream_client_config(Some(&bad)).expect_err("refused").to_string();
        assert!(e.starts_with("upstream.ca_file: "), "{e}");
        assert!(e.contains("bad.pem"), "{e}");
        let e = upstream_client_config(Some(&dir.path().join("none.pem")))
            .expect_err("refused")
            .to_string();
        assert!(e.contains("cannot read"), "{e}");
    }
}
