//! The OpenAPI document against the real binary: served at `/openapi.json`, valid OpenAPI 3.1
//! (parsed by `oas3`), equal to docs/openapi.json, and listing exactly the routes served.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::Http;
use lanes_test_support::TestServer;
use serde_json::Value;

/// How to bring docs/openapi.json up to date, for failure messages.
const REGENERATE: &str = "cargo run -p lanes -- openapi > docs/openapi.json";

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative)
}

/// The document as the server serves it, as text.
async fn served_document(server: &TestServer) -> String {
    let response = reqwest::get(format!("{}/openapi.json", server.base_url()))
        .await
        .expect("GET /openapi.json");
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "content-type {content_type:?}"
    );
    response.text().await.expect("document body")
}

/// Every operation of the document as `METHOD /path`, as the OpenAPI parser lists them.
fn operations(spec: &oas3::Spec) -> BTreeSet<String> {
    spec.operations()
        .map(|(path, method, _)| format!("{} {path}", method.as_str()))
        .collect()
}

/// Every `"$ref"` in `value`.
fn refs<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                match (key.as_str(), inner) {
                    ("$ref", Value::String(reference)) => found.push(reference),
                    _ => refs(inner, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| refs(item, found)),
        _ => {}
    }
}

#[tokio::test]
async fn the_served_document_is_valid_openapi_and_is_kept_in_docs() {
    let server = TestServer::start(env!("CARGO_BIN_EXE_lanes"));
    let text = served_document(&server).await;

    let spec = oas3::from_json(&text).expect("the document parses as OpenAPI");
    assert!(spec.openapi.starts_with("3."), "openapi {}", spec.openapi);
    spec.validate_version()
        .expect("an OpenAPI version the parser supports");
    assert_eq!(spec.info.title, "Lanes");
    let document: Value = serde_json::from_str(&text).unwrap();

    // Every reference resolves inside the document.
    let mut found = Vec::new();
    refs(&document, &mut found);
    assert!(!found.is_empty());
    for reference in found {
        let pointer = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{reference} points outside the document"));
        assert!(
            document.pointer(pointer).is_some(),
            "{reference} does not resolve"
        );
    }

    // Operation ids are unique, and every operation's security scheme is defined.
    let schemes = spec
        .components
        .as_ref()
        .map(|components| components.security_schemes.clone())
        .unwrap_or_default();
    assert!(schemes.contains_key("user_token") && schemes.contains_key("admin_api_key"));
    let mut operation_ids = BTreeSet::new();
    for (path, method, operation) in spec.operations() {
        let id = operation
            .operation_id
            .clone()
            .unwrap_or_else(|| panic!("{method} {path} has no operationId"));
        assert!(operation_ids.insert(id.clone()), "operationId {id} twice");
        for requirement in &operation.security {
            for scheme in requirement.0.keys() {
                assert!(
                    schemes.contains_key(scheme),
                    "{method} {path}: undefined security scheme {scheme}"
                );
            }
        }
        assert!(
            !operation.responses(&spec).is_empty(),
            "{method} {path} documents no response"
        );
    }

    let kept = std::fs::read_to_string(repo_path("docs/openapi.json")).expect("docs/openapi.json");
    let kept: Value = serde_json::from_str(&kept).expect("docs/openapi.json is JSON");
    assert!(
        kept == document,
        "docs/openapi.json differs from the served document; regenerate it with `{REGENERATE}`"
    );
    server.assert_clean_log();
}

/// The router's fallback answer: the route does not exist.
fn is_fallback(status: u16, body: &Value) -> bool {
    status == 404 && body["code"] == "not_found" && body["message"] == "no such route"
}

#[tokio::test]
async fn every_documented_operation_is_served() {
    let server = TestServer::start(env!("CARGO_BIN_EXE_lanes"));
    let http = Http::new(&server.base_url());
    let spec = oas3::from_json(served_document(&server).await).unwrap();

    // The probe tells a route that does not exist from one that does.
    let (status, body) = http.call("GET", "/v1/no-such-route", None, None).await;
    assert!(is_fallback(status, &body), "{status} {body}");
    let (status, _) = http.call("DELETE", "/healthz", None, None).await;
    assert_eq!(status, 405, "a wrong method on a known route");

    let operations = operations(&spec);
    assert!(operations.len() > 30, "only {operations:?}");
    for operation in &operations {
        let (method, path) = operation.split_once(' ').unwrap();
        let path = path
            .replace("{id}", "1")
            .replace("{seq}", "1")
            .replace("{user_id}", "alice")
            .replace("{name}", "app.js");
        assert!(!path.contains('{'), "{operation}: unknown path parameter");
        // Without credentials: a served route answers (mostly 401), never the fallback or 405.
        let (status, body) = http.call(method, &path, None, None).await;
        assert!(
            !is_fallback(status, &body) && status != 405,
            "{operation} is documented but not served: {status} {body}"
        );
    }
    server.assert_clean_log();
}

/// `METHOD /path` of every row of docs/PROTOCOL.md's HTTP table, without query strings.
fn protocol_routes() -> BTreeSet<String> {
    let protocol = std::fs::read_to_string(repo_path("docs/PROTOCOL.md")).expect("PROTOCOL.md");
    protocol
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|row| row.split_once('`').map(|(route, _)| route))
        .filter_map(|route| {
            let (method, path) = route.split_once(' ')?;
            let known = ["GET", "PUT", "POST", "DELETE", "PATCH"].contains(&method);
            known.then(|| {
                let path = path.split('?').next().unwrap_or(path);
                format!("{method} {path}")
            })
        })
        .collect()
}

/// A route reaches the router only through `routes!`, which takes only handlers annotated with
/// `#[utoipa::path]` and serves each on its annotation's method and path. So the document
/// lists every route served as long as nothing registers one around it: this test fails when
/// a plain axum route is added to the server, and when a route is served (so documented) but
/// missing from docs/PROTOCOL.md's table, or listed there but not served.
#[tokio::test]
async fn every_route_is_documented() {
    let sources = repo_path("crates/lanes-server/src");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&sources)
        .expect("lanes-server sources")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "rs"))
        .collect();
    files.sort();
    assert!(files.len() > 10, "found only {files:?}");
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for bypass in [
            ".route(",
            ".route_service(",
            ".nest(",
            ".nest_service(",
            ".merge(",
            "axum::routing",
        ] {
            assert!(
                !text.contains(bypass),
                "{} uses `{bypass}`: register routes only with `routes!` and a \
                 `#[utoipa::path]`, so that the OpenAPI document lists them",
                file.display()
            );
        }
    }

    let server = TestServer::start(env!("CARGO_BIN_EXE_lanes"));
    let spec = oas3::from_json(served_document(&server).await).unwrap();
    let documented = operations(&spec);
    let listed = protocol_routes();
    assert!(listed.len() > 30, "PROTOCOL.md's table: only {listed:?}");
    let unlisted: Vec<_> = documented.difference(&listed).collect();
    let undocumented: Vec<_> = listed.difference(&documented).collect();
    assert!(
        unlisted.is_empty() && undocumented.is_empty(),
        "served and documented but not in docs/PROTOCOL.md: {unlisted:?}; \
         in docs/PROTOCOL.md but not served: {undocumented:?}"
    );
    server.assert_clean_log();
}
