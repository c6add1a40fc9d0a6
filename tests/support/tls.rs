//! TLS for tests: certificates minted with rcgen at test time (a test CA and
//! leaves it signs, for `localhost` and `127.0.0.1`), and a client over
//! tokio-rustls that keeps one connection open, negotiates ALPN, and
//! reports the certificate the server presented.
//!
//! Nothing here is a secret worth guarding: every key is made for one test.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::http::{Response, TIMEOUT};

/// A certificate authority made for one test.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate and its key, PEM, plus the DER the server presents.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("CA key");
        TestCa { issuer: CertifiedIssuer::self_signed(params, key).expect("self-sign the CA") }
    }

    /// The CA certificate, PEM (for `upstream.ca_file` or a client's roots).
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `localhost` and `127.0.0.1`, with `cn` as
    /// its common name (so two leaves differ visibly).
    pub fn leaf(&self, cn: &str) -> Leaf {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign the leaf");
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().to_vec() }
    }
}

/// A rustls client config trusting only `ca_pem`, offering `alpn`.
pub fn client_config(ca_pem: &str, alpn: &[&str]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("add CA root");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    config
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// One TLS connection to keyward, kept open across requests.
pub struct TlsConnection {
    sender: Sender,
    authority: String,
    /// The ALPN protocol the server picked, if any.
    pub alpn: Option<Vec<u8>>,
    /// The leaf certificate the server presented, DER.
    pub peer_cert: Vec<u8>,
    driver: tokio::task::JoinHandle<()>,
}

impl TlsConnection {
    /// TLS handshake with `addr` as `localhost`, trusting `ca_pem`, offering
    /// `alpn`; then HTTP/2 if the server chose `h2`, else HTTP/1.1.
    pub async fn open(addr: SocketAddr, ca_pem: &str, alpn: &[&str]) -> Result<Self, String> {
        let connector = TlsConnector::from(Arc::new(client_config(ca_pem, alpn)));
        let handshake = async {
            let tcp = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
            let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
            connector.connect(name, tcp).await.map_err(|e| format!("TLS handshake: {e}"))
        };
        let tls = tokio::time::timeout(TIMEOUT, handshake)
            .await
            .map_err(|_| format!("no TLS handshake within {TIMEOUT:?}"))??;
        let (_, session) = tls.get_ref();
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let peer_cert = session
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec())
            .ok_or("the server presented no certificate")?;
        let io = TokioIo::new(tls);
        let (sender, driver) = if alpn.as_deref() == Some(b"h2") {
            let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("h2 handshake: {e}"))?;
            (
                Sender::H2(sender),
                tokio::spawn(async move {
                    let _ = conn.await;
                }),
            )
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| format!("http/1.1 handshake: {e}"))?;
            (
                Sender::H1(sender),
                tokio::spawn(async move {
                    let _ = conn.await;
                }),
            )
        };
        Ok(TlsConnection {
            sender,
            authority: format!("localhost:{}", addr.port()),
            alpn,
            peer_cert,
            driver,
        })
    }

    /// `GET path` on this connection; `Err` when the connection is gone.
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Response, String> {
        let h2 = matches!(self.sender, Sender::H2(_));
        // HTTP/2 carries scheme and authority as pseudo-headers; HTTP/1.1
        // sends origin-form with a Host header.
        let uri = if h2 { format!("https://{}{path}", self.authority) } else { path.to_owned() };
        let mut req = Request::builder()
            .uri(uri)
            .version(if h2 { Version::HTTP_2 } else { Version::HTTP_11 })
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("build request: {e}"))?;
        if !h2 {
            req.headers_mut().insert(
                http::header::HOST,
                HeaderValue::from_str(&self.authority).map_err(|e| e.to_string())?,
            );
        }
        for (name, value) in headers {
            req.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?,
                HeaderValue::from_str(value).map_err(|e| e.to_string())?,
            );
        }
        let exchange = async {
            let resp = match &mut self.sender {
                Sender::H1(s) => {
                    s.ready().await.map_err(|e| format!("connection not ready: {e}"))?;
                    s.send_request(req).await
                }
                Sender::H2(s) => {
                    s.ready().await.map_err(|e| format!("connection not ready: {e}"))?;
                    s.send_request(req).await
                }
            }
            .map_err(|e| format!("request failed: {e}"))?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.map_err(|e| format!("read body: {e}"))?.to_bytes();
            Ok(Response {
                status: parts.status.as_u16(),
                version: parts.version,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no complete response within {TIMEOUT:?}"))?
    }
}

impl Drop for TlsConnection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// One request on a fresh TLS connection (HTTP/1.1), returning the
/// response and the certificate the server presented.
pub async fn get(
    addr: SocketAddr,
    ca_pem: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (Response, Vec<u8>) {
    let mut conn = TlsConnection::open(addr, ca_pem, &["http/1.1"])
        .await
        .unwrap_or_else(|e| panic!("TLS connection to {addr}: {e}"));
    let resp = conn.get(path, headers).await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
    (resp, conn.peer_cert.clone())
}

/// The certificate a fresh handshake with `addr` presents (no request).
pub async fn presented_cert(addr: SocketAddr, ca_pem: &str) -> Result<Vec<u8>, String> {
    TlsConnection::open(addr, ca_pem, &["http/1.1"]).await.map(|c| c.peer_cert.clone())
}

/// A rustls server config for a test upstream serving `leaf`.
pub fn server_config(leaf: &Leaf) -> Arc<rustls::ServerConfig> {
    let certs = vec![CertificateDer::from(leaf.der.clone())];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes())
        .expect("leaf key PEM");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("test upstream certificate");
    Arc::new(config)
}
