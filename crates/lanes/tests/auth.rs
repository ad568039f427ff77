//! Application JWTs end to end: HS256, RS256 and EdDSA tokens minted by "an application backend"
//! (keys generated with openssl per run) are accepted on HTTP and WebSocket; expired, unsigned,
//! wrongly signed, algorithm-confused and `exp`-less tokens are refused; modes follow config.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::{Http, RawWs};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use lanes_test_support::TestServer;
use serde_json::json;

const SECRET: &str = "an application secret of at least 32 bytes";

fn openssl(args: &[&str]) -> String {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A private key PEM and its public key PEM.
fn keypair(algorithm: &str) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("private.pem");
    let private_path = private.to_str().unwrap();
    match algorithm {
        "RSA" => openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            private_path,
        ]),
        _ => openssl(&["genpkey", "-algorithm", "ed25519", "-out", private_path]),
    };
    let public = openssl(&["pkey", "-in", private_path, "-pubout"]);
    (std::fs::read_to_string(&private).unwrap(), public)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn mint(algorithm: Algorithm, key: &EncodingKey, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(&Header::new(algorithm), &claims, key).unwrap()
}

fn start_with_config(toml: &str) -> (TestServer, tempfile::NamedTempFile) {
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), toml).unwrap();
    let server = TestServer::start_with(
        env!("CARGO_BIN_EXE_lanes"),
        &["--config", config.path().to_str().unwrap()],
        &[],
    );
    (server, config)
}

#[tokio::test]
async fn hs256_and_rs256_tokens_are_accepted_and_bad_ones_refused() {
    let (rsa_private, rsa_public) = keypair("RSA");
    let (server, _config) = start_with_config(&format!(
        "[auth]\njwt_hs256_secret = \"{SECRET}\"\njwt_algorithm = \"RS256\"\njwt_public_key_pem = '''\n{rsa_public}'''\n"
    ));
    let http = Http::new(&server.base_url());
    let hs = EncodingKey::from_secret(SECRET.as_bytes());
    let rs = EncodingKey::from_rsa_pem(rsa_private.as_bytes()).unwrap();
    let valid_hs = mint(
        Algorithm::HS256,
        &hs,
        json!({"sub": "app-user-1", "exp": now() + 3600}),
    );
    let valid_rs = mint(
        Algorithm::RS256,
        &rs,
        json!({"sub": "app-user-2", "exp": now() + 3600}),
    );
    for token in [&valid_hs, &valid_rs] {
        let (status, body) = http
            .call("GET", "/v1/conversations", Some(token), None)
            .await;
        assert_eq!(status, 200, "{body}");
    }
    // JWT users exist once seen: a password user can start a chat with them, and they chat over WS.
    let carol = http.register("carol").await;
    let conversation = http.direct(&carol, "app-user-1").await;
    let (mut app_ws, _) = RawWs::hello(&server.ws_url(), &valid_hs, json!([]), None).await;
    let (mut carol_ws, _) = RawWs::hello(&server.ws_url(), &carol, json!([]), None).await;
    carol_ws
        .send_message(conversation, "c1", "hello app user")
        .await;
    assert_eq!(app_ws.until("message").await.0["body"], "hello app user");

    // Ids are one namespace: registering an id first does not make the application's tokens
    // for it sign in to that account, and an id the application used cannot be registered.
    let squatter = http.register("app-user-3").await;
    let squatted = mint(
        Algorithm::HS256,
        &hs,
        json!({"sub": "app-user-3", "exp": now() + 3600}),
    );
    let (status, body) = http
        .call("GET", "/v1/conversations", Some(&squatted), None)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("unauthorized")),
        "{body}"
    );
    let mut ws = RawWs::connect(&server.ws_url()).await;
    ws.send(json!({"type": "hello", "token": squatted})).await;
    assert_eq!(ws.frame().await["code"], "unauthorized");
    let (status, _) = http
        .call("GET", "/v1/conversations", Some(&squatter), None)
        .await;
    assert_eq!(status, 200, "the password account itself is unharmed");
    let (status, body) = http
        .call(
            "POST",
            "/v1/register",
            None,
            Some(json!({"username": "app-user-1", "password": "a long enough password"})),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );

    let wrong_secret = EncodingKey::from_secret(b"another secret that is long enough!!");
    let forged_unsigned = {
        use base64::Engine;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            engine.encode(r#"{"alg":"none","typ":"JWT"}"#),
            engine.encode(json!({"sub": "app-user-1", "exp": now() + 3600}).to_string())
        )
    };
    // The RSA public key used as an HMAC secret: the classic algorithm-confusion forgery.
    let confused = mint(
        Algorithm::HS256,
        &EncodingKey::from_secret(rsa_public.as_bytes()),
        json!({"sub": "app-user-1", "exp": now() + 3600}),
    );
    let other_rsa = {
        let (other_private, _) = keypair("RSA");
        mint(
            Algorithm::RS256,
            &EncodingKey::from_rsa_pem(other_private.as_bytes()).unwrap(),
            json!({"sub": "x", "exp": now() + 3600}),
        )
    };
    let refused = [
        (
            "expired",
            mint(
                Algorithm::HS256,
                &hs,
                json!({"sub": "app-user-1", "exp": now() - 3600}),
            ),
        ),
        (
            "no exp",
            mint(Algorithm::HS256, &hs, json!({"sub": "app-user-1"})),
        ),
        (
            "no sub",
            mint(Algorithm::HS256, &hs, json!({"exp": now() + 3600})),
        ),
        (
            "bad sub",
            mint(
                Algorithm::HS256,
                &hs,
                json!({"sub": "not a valid id", "exp": now() + 3600}),
            ),
        ),
        (
            "wrong secret",
            mint(
                Algorithm::HS256,
                &wrong_secret,
                json!({"sub": "app-user-1", "exp": now() + 3600}),
            ),
        ),
        ("alg none", forged_unsigned),
        ("key confusion", confused),
        ("other rsa key", other_rsa),
        (
            "HS384 not configured",
            mint(
                Algorithm::HS384,
                &hs,
                json!({"sub": "app-user-1", "exp": now() + 3600}),
            ),
        ),
        ("garbage", "a.b.c".to_owned()),
    ];
    for (name, token) in refused {
        let (status, body) = http
            .call("GET", "/v1/conversations", Some(&token), None)
            .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("unauthorized")),
            "{name}: {body}"
        );
        let mut ws = RawWs::connect(&server.ws_url()).await;
        ws.send(json!({"type": "hello", "token": token})).await;
        assert_eq!(ws.frame().await["code"], "unauthorized", "{name}");
    }
    server.assert_clean_log();
}

#[tokio::test]
async fn eddsa_only_server_refuses_password_accounts() {
    let (ed_private, ed_public) = keypair("ed25519");
    let (server, _config) = start_with_config(&format!(
        "[auth]\npassword = false\njwt_algorithm = \"EdDSA\"\njwt_public_key_pem = '''\n{ed_public}'''\n"
    ));
    let http = Http::new(&server.base_url());
    let (status, body) = http
        .call(
            "POST",
            "/v1/register",
            None,
            Some(json!({"username": "alice", "password": "correct horse"})),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    let key = EncodingKey::from_ed_pem(ed_private.as_bytes()).unwrap();
    let token = mint(
        Algorithm::EdDSA,
        &key,
        json!({"sub": "edd", "exp": now() + 60}),
    );
    let (status, body) = http
        .call("GET", "/v1/conversations", Some(&token), None)
        .await;
    assert_eq!(status, 200, "{body}");
    server.assert_clean_log();
}

#[test]
fn a_server_with_no_auth_mode_refuses_to_start() {
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "[auth]\npassword = false\n").unwrap();
    let data = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_lanes"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            config.path().to_str().unwrap(),
        ])
        .arg("--data-dir")
        .arg(data.path())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no authentication mode enabled"),
        "{stderr}"
    );
}
