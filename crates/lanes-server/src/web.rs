//! The web client: the static files under `web/` at the repository root, embedded in the binary
//! when it is built and served at `GET /` and `GET /assets/{name}`. It holds no state and reads
//! no store: the client speaks only the public protocol (`docs/PROTOCOL.md`).

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $content_type:literal) => {
        Asset {
            name: $name,
            content_type: $content_type,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../web/", $name)),
        }
    };
}

/// Everything `index.html` loads. A file added under `web/` is served only once it is listed
/// here (the unit test below checks that every asset the page names is).
const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("lanes.js", "text/javascript; charset=utf-8"),
    asset!("ui.js", "text/javascript; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
];

/// The page may load only its own files and talk only to this server. `'self'` covers
/// same-host WebSockets in current browsers; the explicit `ws:`/`wss:` sources for the request's
/// host cover older ones.
const CSP_BASE: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; manifest-src 'self'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'; connect-src 'self'";

/// The routes of the web client; merged into the main router.
/// `GET /`
#[utoipa::path(
    get,
    path = "/",
    tag = "web",
    operation_id = "web_client",
    summary = "The web client's page",
    responses(
        (status = 200, description = "The page (text/html) with a content-security-policy allowing only this server", content_type = "text/html"),
        (status = 304, description = "Not modified (If-None-Match)"),
    )
)]
pub(crate) async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

/// `GET /assets/{name}`
#[utoipa::path(
    get,
    path = "/assets/{name}",
    tag = "web",
    operation_id = "web_asset",
    summary = "A file of the web client",
    params(("name" = String, Path, description = "app.js, lanes.js, ui.js, style.css or icon.svg")),
    responses(
        (status = 200, description = "The file, with cache-control: no-cache and an ETag"),
        (status = 304, description = "Not modified (If-None-Match)"),
        (status = 404, description = "No such file"),
    )
)]
pub(crate) async fn asset(
    name: Result<Path<String>, axum::extract::rejection::PathRejection>,
    headers: HeaderMap,
) -> Response {
    // A name that does not decode (`%FF`) is no file either.
    match name {
        Ok(Path(name)) if name != "index.html" => serve(&name, &headers),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

fn serve(name: &str, request: &HeaderMap) -> Response {
    let Some((index, asset)) = ASSETS
        .iter()
        .enumerate()
        .find(|(_, asset)| asset.name == name)
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let etag = etags().get(index).cloned().unwrap_or_default();
    let mut response = if request
        .get(header::IF_NONE_MATCH)
        .is_some_and(|value| value.as_bytes() == etag.as_bytes())
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.body.into_response()
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    // The names are not versioned, so browsers revalidate every time; the ETag makes that a
    // body-less 304 when nothing changed.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if let Ok(value) = HeaderValue::from_str(&content_security_policy(request)) {
        headers.insert(header::CONTENT_SECURITY_POLICY, value);
    }
    response
}

/// Weak ETags (the same file goes out gzip-compressed or not, which a strong one would have to
/// tell apart), one per asset in `ASSETS` order, hashed once on first use.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|asset| {
                let digest = Sha256::digest(asset.body);
                let hex: String = digest
                    .iter()
                    .take(12)
                    .map(|byte| format!("{byte:02x}"))
                    .collect();
                format!("W/\"{hex}\"")
            })
            .collect()
    })
}

/// The policy, with `ws://host wss://host` when the `Host` header is a plain host[:port] (it is
/// the client's own header, so anything else is left out rather than echoed).
fn content_security_policy(request: &HeaderMap) -> String {
    let host = request
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .filter(|host| {
            !host.is_empty()
                && host.len() <= 255
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        });
    match host {
        Some(host) => format!("{CSP_BASE} ws://{host} wss://{host}"),
        None => CSP_BASE.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `/assets/…` the page or a module names is embedded, so a new file cannot be
    /// forgotten in `ASSETS`.
    #[test]
    fn every_referenced_asset_is_embedded() {
        for asset in ASSETS {
            let Ok(text) = std::str::from_utf8(asset.body) else {
                continue;
            };
            for (start, _) in text.match_indices("/assets/") {
                let rest = &text[start + "/assets/".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '-')
                    .collect();
                assert!(
                    ASSETS.iter().any(|known| known.name == name),
                    "{} refers to /assets/{name}, which is not embedded",
                    asset.name
                );
            }
            for (start, _) in text.match_indices("from \"./") {
                let rest = &text[start + "from \"./".len()..];
                let name: String = rest.chars().take_while(|c| *c != '"').collect();
                assert!(
                    ASSETS.iter().any(|known| known.name == name),
                    "{} imports ./{name}, which is not embedded",
                    asset.name
                );
            }
        }
    }

    #[test]
    fn policy_names_only_plain_hosts() {
        let check = |host: &str, expected_ws: bool| {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::HOST,
                HeaderValue::from_str(host).unwrap_or(HeaderValue::from_static("")),
            );
            let policy = content_security_policy(&headers);
            assert_eq!(policy.contains("ws://"), expected_ws, "{host}: {policy}");
            assert!(policy.contains("script-src 'self'"));
        };
        check("127.0.0.1:8080", true);
        check("[::1]:8080", true);
        check("evil; script-src *", false);
    }
}
