//! The web client against the real binary: `GET /` and the assets are served with their types,
//! caching and security headers, then `web/e2e/chat.test.mjs` drives headless Chromium through it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lanes_test_support::TestServer;

/// The browser scenario takes about half a minute; this bounds a hung browser or server.
const BROWSER_TEST_TIMEOUT: Duration = Duration::from_secs(240);

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[tokio::test]
async fn serves_the_app_with_its_headers() {
    let server = TestServer::start(env!("CARGO_BIN_EXE_lanes"));
    let client = reqwest::Client::new();
    // One that leaves compressed answers as they came.
    let raw = reqwest::Client::builder().no_gzip().build().unwrap();
    let page = client.get(server.base_url()).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let policy = headers["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(policy.contains("default-src 'none'"), "{policy}");
    assert!(
        policy.contains(&format!("ws://{}", server.addr())),
        "{policy}"
    );
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"<script type="module" src="/assets/app.js">"#));

    for (name, content_type) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("lanes.js", "text/javascript; charset=utf-8"),
        ("ui.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("icon.svg", "image/svg+xml"),
    ] {
        let url = format!("{}/assets/{name}", server.base_url());
        let asset = client.get(&url).send().await.unwrap();
        assert_eq!(asset.status(), 200, "{name}");
        assert_eq!(asset.headers()["content-type"], content_type, "{name}");
        let etag = asset.headers()["etag"].clone();
        let on_disk = std::fs::read(repository().join("web").join(name)).unwrap();
        assert_eq!(
            asset.bytes().await.unwrap().as_ref(),
            on_disk,
            "{name}: the binary serves what is in web/"
        );
        let again = client
            .get(&url)
            .header("if-none-match", etag.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{name}: revalidation");
        // Gzip-compressed for a client that accepts it, with the same (weak) ETag.
        let compressed = raw
            .get(&url)
            .header("accept-encoding", "gzip")
            .send()
            .await
            .unwrap();
        assert_eq!(compressed.status(), 200, "{name}");
        assert_eq!(compressed.headers()["content-encoding"], "gzip", "{name}");
        assert_eq!(compressed.headers()["etag"], etag, "{name}");
        let gzipped = compressed.bytes().await.unwrap();
        assert!(gzipped.len() < on_disk.len(), "{name}: not smaller");
        let mut unzipped = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(gzipped.as_ref()),
            &mut unzipped,
        )
        .unwrap();
        assert_eq!(unzipped, on_disk, "{name}: gzip of what is in web/");
    }
    let missing = client
        .get(format!("{}/assets/nope.js", server.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert!(
        server
            .log_text()
            .contains(&format!("open http://{}/ in a browser", server.addr())),
        "serve prints where to open the client:\n{}",
        server.log_text()
    );
    server.assert_clean_log();
}

/// Runs the browser scenario. Without Chromium or the e2e packages it is skipped with a note,
/// unless `LANES_TEST_REQUIRE_BROWSER=1` (set by `scripts/test.sh`, which installs both).
#[test]
fn chat_in_a_real_browser() {
    let chromium =
        std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    let e2e = repository().join("web/e2e");
    let ready = Path::new(&chromium).exists() && e2e.join("node_modules/playwright-core").exists();
    if !ready {
        assert!(
            std::env::var("LANES_TEST_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "LANES_TEST_REQUIRE_BROWSER=1 but {chromium} or web/e2e/node_modules is missing \
             (scripts/test.sh installs them)"
        );
        eprintln!(
            "skipping the browser test: needs {chromium} and `npm ci --prefix web/e2e` \
             (scripts/test.sh installs both)"
        );
        return;
    }
    // An admin key, for the step that makes a group of more than 100 members.
    let admin_key = "web-test-admin-key-web-test-admin-key";
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        format!("[admin]\napi_keys = [\"{admin_key}\"]\n"),
    )
    .unwrap();
    let mut server = TestServer::start_with(
        env!("CARGO_BIN_EXE_lanes"),
        &["--config", config.path().to_str().unwrap()],
        &[],
    );
    let started = Instant::now();
    let mut child = Command::new("node")
        .arg(e2e.join("chat.test.mjs"))
        .arg(server.base_url())
        .env("CHROMIUM_PATH", &chromium)
        .env("LANES_ADMIN_KEY", admin_key)
        .current_dir(repository())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node (apt-get install nodejs)");
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > BROWSER_TEST_TIMEOUT {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    match status {
        Some(status) if status.success() => {
            eprintln!("{report}browser test took {:?}", started.elapsed());
        }
        Some(status) => panic!(
            "browser test failed ({status}):\n{report}\nserver log:\n{}",
            server.log_text()
        ),
        None => panic!(
            "browser test did not finish within {BROWSER_TEST_TIMEOUT:?}:\n{report}\nserver log:\n{}",
            server.log_text()
        ),
    }
    server.assert_clean_log();
    assert!(server.stop(), "server exits cleanly after the browser test");
}
