//! `TestServer`: runs the real `lanes` binary on 127.0.0.1 with a free port and a temporary data
//! directory, captures its log, and can kill (SIGKILL), stop (SIGTERM) and restart it on the same
//! port and data. Only ever a dev-dependency.

// Test scaffolding: a failure to start the server is a failed test, so panicking is the point.
#![allow(clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long the binary may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `lanes serve`.
pub struct TestServer {
    binary: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    data_dir: PathBuf,
    /// The temporary directory behind `data_dir`, unless the caller chose the directory.
    _temp_dir: Option<tempfile::TempDir>,
    /// The configuration used when the test gives none (see `start_in`).
    _default_config: Option<tempfile::NamedTempFile>,
    addr: SocketAddr,
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
    allowed_log: Vec<String>,
}

impl TestServer {
    /// Starts `binary serve` with default settings.
    pub fn start(binary: &str) -> TestServer {
        TestServer::start_with(binary, &[], &[])
    }

    /// Starts `binary serve` with extra arguments and environment variables.
    pub fn start_with(binary: &str, args: &[&str], env: &[(&str, &str)]) -> TestServer {
        let temp_dir = tempfile::tempdir().expect("create temp data dir");
        let data_dir = temp_dir.path().to_owned();
        TestServer::start_in(binary, data_dir, Some(temp_dir), args, env)
    }

    /// Starts `binary serve` on the data directory `data_dir` (for example on a filesystem the
    /// test mounted), which the caller cleans up.
    pub fn start_with_data_dir(
        binary: &str,
        data_dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> TestServer {
        TestServer::start_in(binary, data_dir.to_owned(), None, args, env)
    }

    fn start_in(
        binary: &str,
        data_dir: PathBuf,
        temp_dir: Option<tempfile::TempDir>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> TestServer {
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        // Tests that give no configuration run without rate limits: they create users and send
        // in bursts no person would. Tests of the limits pass their own `--config`.
        let default_config =
            if args.contains(&"--config") || env.iter().any(|(key, _)| key == "LANES_CONFIG") {
                None
            } else {
                let file = tempfile::NamedTempFile::new().expect("create a config file");
                std::fs::write(file.path(), "[rate_limits]\nenabled = false\n")
                    .expect("write the config file");
                env.push((
                    "LANES_CONFIG".to_owned(),
                    file.path().to_string_lossy().into_owned(),
                ));
                Some(file)
            };
        let mut server = TestServer {
            binary: PathBuf::from(binary),
            args: args.iter().map(|arg| (*arg).to_owned()).collect(),
            env,
            data_dir,
            _temp_dir: temp_dir,
            _default_config: default_config,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            child: None,
            log: Arc::new(Mutex::new(Vec::new())),
            allowed_log: Vec::new(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "server already running");
        let mut child = Command::new(&self.binary)
            .arg("serve")
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.args)
            .envs(self.env.iter().map(|(key, value)| (key, value)))
            .env("NO_COLOR", "1")
            .env("LANES_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lanes binary");
        let stdout = child.stdout.take().expect("stdout piped");
        let stderr = child.stderr.take().expect("stderr piped");
        let (addr_sender, addr_receiver) = mpsc::channel();
        let log = Arc::clone(&self.log);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let listening = line
                    .strip_prefix("lanes listening on http://")
                    .or_else(|| line.strip_prefix("lanes listening on https://"));
                if let Some(rest) = listening {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let _ = addr_sender.send(addr);
                }
                log.lock().expect("log lock").push(line);
            }
        });
        let log = Arc::clone(&self.log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log.lock().expect("log lock").push(line);
            }
        });
        let addr = match addr_receiver.recv_timeout(START_TIMEOUT) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!("lanes did not start; log:\n{}", self.log_text());
            }
        };
        self.addr = addr.parse().expect("printed address parses");
        self.child = Some(child);
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `ws://addr/v1/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    /// The data directory (survives restarts).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the process with SIGKILL: no shutdown, no flush, like a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL lanes");
            child.wait().expect("reap lanes");
        }
    }

    /// Sends SIGTERM and waits for a graceful exit; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM failed");
        for _ in 0..200 {
            if let Some(status) = child.try_wait().expect("poll lanes") {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        panic!(
            "lanes did not exit within 10 s of SIGTERM; log:\n{}",
            self.log_text()
        );
    }

    /// Starts the binary again on the same address and data directory.
    pub fn restart(&mut self) {
        self.spawn();
    }

    /// Everything the server printed so far.
    pub fn log_text(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }

    /// Lets log lines containing `fragment` pass `assert_clean_log` (for tests that provoke a
    /// warning on purpose).
    pub fn allow_log(&mut self, fragment: &str) {
        self.allowed_log.push(fragment.to_owned());
    }

    /// Fails the test if the server logged an unexpected WARN or ERROR line.
    pub fn assert_clean_log(&self) {
        let log = self.log.lock().expect("log lock");
        let bad: Vec<&String> = log
            .iter()
            .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
            .filter(|line| {
                !self
                    .allowed_log
                    .iter()
                    .any(|allowed| line.contains(allowed))
            })
            .collect();
        assert!(bad.is_empty(), "unexpected WARN/ERROR log lines:\n{bad:#?}");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
