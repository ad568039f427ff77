//! The transport edge: TLS with a certificate from the configuration (HTTPS requests and a
//! WebSocket over it), and clients that open a connection and never finish their request headers
//! (slowloris) being dropped after the header-read timeout.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lanes_test_support::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

/// A self-signed certificate for `localhost` / 127.0.0.1, made with openssl (scripts/test.sh
/// installs it).
fn certificate(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        // A server certificate, not a CA (rustls refuses a CA as the server's own).
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run openssl");
    assert!(status.success());
    (cert, key)
}

/// A TLS client that trusts only `cert`.
fn connector(cert: &std::path::Path) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(cert).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn tls_serves_https_and_secure_websockets() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let config = dir.path().join("lanes.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\ncert_path = {:?}\nkey_path = {:?}\n",
            cert.to_str().unwrap(),
            key.to_str().unwrap()
        ),
    )
    .unwrap();
    let server = TestServer::start_with(
        env!("CARGO_BIN_EXE_lanes"),
        &["--config", config.to_str().unwrap()],
        &[],
    );
    let connector = connector(&cert);
    let name = ServerName::try_from("localhost").unwrap();

    // HTTPS.
    let tcp = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let mut tls = connector.connect(name.clone(), tcp).await.unwrap();
    tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tls.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"status\":\"ok\""), "{response}");

    // A WebSocket over the same TLS: the upgrade and a frame both ways.
    let tcp = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let url = format!("wss://localhost:{}/v1/ws", server.addr().port());
    let (mut ws, response) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    assert_eq!(response.status(), 101);
    use futures_util::{SinkExt, StreamExt};
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        r#"{"type":"ping","request_id":"over-tls"}"#,
    ))
    .await
    .unwrap();
    let pong = loop {
        match ws.next().await.unwrap().unwrap() {
            tokio_tungstenite::tungstenite::Message::Text(text) => break text,
            _ => continue,
        }
    };
    assert!(pong.contains("over-tls"), "{pong}");

    // Plain HTTP to the TLS port gets nothing useful.
    let mut plain = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    assert!(!String::from_utf8_lossy(&answer).contains("\"status\":\"ok\""));
}

#[tokio::test]
async fn a_client_that_never_finishes_its_body_is_answered_and_dropped() {
    let (server, http, _config) = common::start_with_config("body_read_timeout_ms = 500\n");
    let token = http.register("slow").await;
    // Whole headers, then a body that trickles a byte at a time and never ends: to a route
    // without authentication, and to one with it.
    for (path, authorization) in [
        ("/v1/login", String::new()),
        (
            "/v1/conversations/group",
            format!("authorization: Bearer {token}\r\n"),
        ),
    ] {
        let mut slow = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
        slow.write_all(
            format!(
                "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
                 {authorization}content-length: 1000\r\n\r\n{{"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let started = Instant::now();
        let mut answer = Vec::new();
        let mut closed = false;
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if slow.write_all(b" ").await.is_err() {
                closed = true;
                break;
            }
            let mut bytes = [0u8; 1024];
            match tokio::time::timeout(Duration::from_millis(1), slow.read(&mut bytes)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    closed = true;
                    break;
                }
                Ok(Ok(read)) => answer.extend_from_slice(&bytes[..read]),
                Err(_) => {}
            }
        }
        let answer = String::from_utf8_lossy(&answer);
        assert!(closed, "{path}: still connected after 4 s; got {answer}");
        assert!(started.elapsed() < Duration::from_secs(4));
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
        assert!(answer.contains("\"bad_frame\""), "{path}: {answer}");
        assert!(
            answer.contains("did not arrive within 500 ms"),
            "{path}: {answer}"
        );
    }
    // A body sent in time, in pieces, is read as usual.
    let mut prompt = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let body = r#"{"username":"slow","password":"not the password"}"#;
    prompt
        .write_all(
            format!(
                "POST /v1/login HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    for piece in body.as_bytes().chunks(8) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        prompt.write_all(piece).await.unwrap();
    }
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), prompt.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.contains("wrong username or password"), "{answer}");
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_dropped() {
    let (server, _http, _config) = common::start_with_config("header_read_timeout_ms = 500\n");
    // Half a request line, then a byte at a time, never the blank line that ends the headers.
    let mut slow = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut closed = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if slow.write_all(b"x").await.is_err() {
            closed = true;
            break;
        }
        let mut byte = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(1), slow.read(&mut byte)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            // hyper answers 408 before closing.
            Ok(Ok(_)) => {}
            Err(_) => {}
        }
    }
    assert!(closed, "a trickling client was still connected after 4 s");
    assert!(started.elapsed() < Duration::from_secs(4));
    // Meanwhile normal requests are served.
    let response = reqwest::get(format!("{}/healthz", server.base_url()))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}
