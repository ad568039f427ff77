//! `lanes bench`: the load generator every performance claim is measured with. It talks to a
//! server over real sockets (starting one itself with `--spawn`), mints its users' tokens as an
//! application backend would (HS256 JWTs), and prints a human summary plus one JSON line per run.

mod crash;
mod fanout;
mod floor;
mod idle;
mod longpoll;
mod net;
mod pairs;
mod report;
mod storm;
mod sync;
mod ws;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

pub(crate) use net::Target;

/// The secret `--spawn` servers and bench tokens share when none is given.
const DEFAULT_SECRET: &str = "lanes-bench-secret-lanes-bench-secret";

#[derive(Args)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    scenario: Scenario,
    /// Server to load, e.g. http://127.0.0.1:8080 (ignored with --spawn).
    #[arg(long, global = true, default_value = "http://127.0.0.1:8080")]
    addr: String,
    /// Start a local `lanes serve` with a temporary data dir for the run.
    #[arg(long, global = true)]
    spawn: bool,
    /// HS256 secret the server accepts, used to mint the bench users' tokens.
    #[arg(long, global = true, env = "LANES_BENCH_JWT_SECRET", default_value = DEFAULT_SECRET)]
    jwt_secret: String,
    /// With --spawn: the server's durability (`full` or `normal`).
    #[arg(long, global = true, default_value = "full")]
    durability: String,
    /// Spread client sockets over this many source addresses 127.0.0.1..=127.0.0.N. With one,
    /// the kernel's search for a free ephemeral port dominated connects past ~10,000 sockets
    /// (perf: 81% of the driver in `__inet_hash_connect`).
    #[arg(long, global = true, default_value_t = 8)]
    sources: u8,
    /// Hard limit on the whole run, in seconds; the bench stops by itself.
    #[arg(long, global = true, default_value_t = 300)]
    time_limit_secs: u64,
}

#[derive(Subcommand)]
enum Scenario {
    /// U online users in 1:1 pairs, each sending to its partner with a window of unacked sends.
    Pairs(pairs::PairsArgs),
    /// C authenticated connections held idle: connect rate and server memory per connection.
    Idle(idle::IdleArgs),
    /// Internal: a helper process of `idle` holding part of the connections.
    #[command(hide = true)]
    IdleWorker(idle::IdleWorkerArgs),
    /// One group of G online members, senders at a fixed rate: deliveries/s and time to reach all.
    Fanout(fanout::FanoutArgs),
    /// N connected clients while the spawned server is killed and restarted: time to resync.
    Storm(storm::StormArgs),
    /// A user offline while K messages arrive, in a store pre-filled with H: resync time.
    Sync(sync::SyncArgs),
    /// Clients send while the spawned server is SIGKILLed and restarted N times; an independent
    /// checker then verifies every acked message against the store.
    Crash(crash::CrashArgs),
    /// W long-poll waiters held at once: server memory per waiter, then all woken by one message.
    Longpoll(longpoll::LongpollArgs),
    /// No server: the kernel's own cost of a fan-out over M loopback connections, the floor
    /// under `fanout`'s reach on this machine.
    Floor(floor::FloorArgs),
}

/// A `lanes serve` started by the bench.
pub(crate) struct SpawnedServer {
    child: Child,
    pub(crate) base_url: String,
    data_dir: tempfile::TempDir,
    secret: String,
    durability: String,
}

impl SpawnedServer {
    fn start(secret: &str, durability: &str) -> anyhow::Result<SpawnedServer> {
        let data_dir = tempfile::tempdir().context("create temp data dir")?;
        let (child, base_url) =
            SpawnedServer::spawn(data_dir.path(), "127.0.0.1:0", secret, durability)?;
        Ok(SpawnedServer {
            child,
            base_url,
            data_dir,
            secret: secret.to_owned(),
            durability: durability.to_owned(),
        })
    }

    /// Kills the server with SIGKILL (a crash) and starts it again on the same address and data.
    pub(crate) fn crash_and_restart(&mut self) -> anyhow::Result<()> {
        self.child.kill().context("SIGKILL server")?;
        self.child.wait().context("reap server")?;
        let listen = self.base_url.trim_start_matches("http://").to_owned();
        let (child, _) = SpawnedServer::spawn(
            self.data_dir.path(),
            &listen,
            &self.secret,
            &self.durability,
        )?;
        self.child = child;
        Ok(())
    }

    fn spawn(
        data_dir: &std::path::Path,
        listen: &str,
        secret: &str,
        durability: &str,
    ) -> anyhow::Result<(Child, String)> {
        let exe = std::env::current_exe().context("find own executable")?;
        // The bench measures the server's capacity, not its rate limits.
        let config = data_dir.join("bench.toml");
        std::fs::write(&config, "[rate_limits]\nenabled = false\n")
            .context("write the bench server's config")?;
        let mut child = Command::new(exe)
            .args(["serve", "--listen", listen, "--durability", durability])
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(data_dir)
            .env("LANES_JWT_HS256_SECRET", secret)
            .env("LANES_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawn lanes serve")?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
            .context("read server address")?;
        let Some(addr) = line
            .strip_prefix("lanes listening on ")
            .and_then(|rest| rest.split_whitespace().next())
        else {
            let _ = child.kill();
            bail!("unexpected server output: {line:?}");
        };
        Ok((child, addr.to_owned()))
    }

    /// Stops the server (SIGKILL, as a crash) and runs the store's integrity check on its data.
    pub(crate) fn stop_and_check_integrity(&mut self) -> anyhow::Result<()> {
        self.child.kill().context("SIGKILL server")?;
        self.child.wait().context("reap server")?;
        let store = lanes_store_sqlite::SqliteStore::open(
            self.data_dir.path(),
            lanes_store_sqlite::Durability::Full,
        )
        .context("reopen the store")?;
        store.integrity_check().context("integrity check")?;
        Ok(())
    }

    /// The server's resident memory, from /proc.
    pub(crate) fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.child.id())
    }

    /// The server's CPU time so far, from /proc.
    pub(crate) fn cpu_time(&self) -> Option<CpuTime> {
        CpuTime::of(Some(self.child.id()))
    }
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time a process has used (all its threads, live or gone), from /proc.
#[derive(Clone, Copy)]
pub(crate) struct CpuTime {
    user_ticks: u64,
    system_ticks: u64,
}

impl CpuTime {
    /// Of process `pid`, or of this process with `None`.
    pub(crate) fn of(pid: Option<u32>) -> Option<CpuTime> {
        let path = pid.map_or_else(
            || "/proc/self/stat".to_owned(),
            |pid| format!("/proc/{pid}/stat"),
        );
        CpuTime::parse(&std::fs::read_to_string(path).ok()?)
    }

    /// From the text of `/proc/<pid>/stat`.
    fn parse(stat: &str) -> Option<CpuTime> {
        // Fields after the command name, which may hold spaces and parentheses: state is field
        // 3, utime 14, stime 15.
        let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
        Some(CpuTime {
            user_ticks: fields.next()?.parse().ok()?,
            system_ticks: fields.next()?.parse().ok()?,
        })
    }

    /// Microseconds of user and system time per item since `earlier`, as a report field.
    /// /proc counts in USER_HZ ticks, which Linux fixes at 100 per second for userspace.
    pub(crate) fn per_item_since(&self, earlier: &CpuTime, items: u64) -> serde_json::Value {
        const MICROS_PER_TICK: f64 = 10_000.0;
        let per = |now: u64, then: u64| {
            let micros = now.saturating_sub(then) as f64 * MICROS_PER_TICK;
            (micros / items.max(1) as f64 * 100.0).round() / 100.0
        };
        serde_json::json!({
            "user": per(self.user_ticks, earlier.user_ticks),
            "system": per(self.system_ticks, earlier.system_ticks),
        })
    }
}

/// VmRSS of a process, in KiB.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(PathBuf::from(format!("/proc/{pid}/status"))).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Runs one scenario.
pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    // Client sockets need descriptors: take everything the hard limit allows.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!("RLIMIT_NOFILE raised to {limit}"),
        Err(err) => tracing::warn!("could not raise RLIMIT_NOFILE: {err}"),
    }
    if let Scenario::Floor(floor) = args.scenario {
        // Blocking threads of its own; it stops by itself (its sends, then a grace period).
        let report = tokio::task::spawn_blocking(move || floor::run(floor))
            .await
            .context("floor")??;
        return finish(&report);
    }
    let mut spawned = if args.spawn {
        Some(SpawnedServer::start(&args.jwt_secret, &args.durability)?)
    } else {
        None
    };
    let base_url = spawned
        .as_ref()
        .map_or_else(|| args.addr.clone(), |server| server.base_url.clone());
    let target = std::sync::Arc::new(Target::new(&base_url, &args.jwt_secret, args.sources));
    let time_limit = Duration::from_secs(args.time_limit_secs);
    if let Scenario::IdleWorker(worker) = args.scenario {
        return tokio::time::timeout(time_limit, idle::worker(&target, worker))
            .await
            .context("the worker hit --time-limit-secs")?;
    }
    let work = async {
        match args.scenario {
            Scenario::Pairs(pairs) => pairs::run(&target, spawned.as_ref(), pairs).await,
            Scenario::Idle(idle) => idle::run(&target, spawned.as_ref(), idle).await,
            Scenario::IdleWorker(_) | Scenario::Floor(_) => {
                unreachable!("handled before the server starts")
            }
            Scenario::Fanout(fanout) => fanout::run(&target, spawned.as_ref(), fanout).await,
            Scenario::Storm(storm) => storm::run(&target, spawned.as_mut(), storm).await,
            Scenario::Sync(sync) => sync::run(&target, spawned.as_ref(), sync).await,
            Scenario::Crash(crash) => crash::run(&target, spawned.as_mut(), crash).await,
            Scenario::Longpoll(longpoll) => {
                longpoll::run(&target, spawned.as_ref(), longpoll).await
            }
        }
    };
    let report = tokio::time::timeout(time_limit, work)
        .await
        .context("the run hit --time-limit-secs")??;
    finish(&report)
}

/// Prints the report; an error if the run lost or duplicated anything.
fn finish(report: &report::Report) -> anyhow::Result<()> {
    report.print();
    if report.failed() {
        bail!("lost or duplicated messages (or unanswered waiters): see the report above");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::CpuTime;

    #[test]
    fn cpu_time_is_read_past_a_command_name_with_spaces() {
        let stat = "4242 (lanes (x) y) S 1 2 3 4 5 6 7 8 9 10 7 9 11 12 20 0 3";
        let cpu = CpuTime::parse(stat).expect("parses");
        assert_eq!((cpu.user_ticks, cpu.system_ticks), (7, 9));
        let later = CpuTime {
            user_ticks: 9,
            system_ticks: 10,
        };
        assert_eq!(
            later.per_item_since(&cpu, 4),
            serde_json::json!({"user": 5000.0, "system": 2500.0})
        );
        assert!(CpuTime::parse("4242 (truncated").is_none());
        assert!(CpuTime::of(None).is_some(), "this process's own");
    }
}
