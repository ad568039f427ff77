//! Smoke runs of every `lanes bench` scenario at a tiny size against a spawned server: the run
//! must finish, print its JSON report, and find 0 lost and 0 duplicated messages. No timing checks.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn bench(args: &[&str]) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_lanes"))
        .arg("bench")
        .arg("--spawn")
        .args(["--time-limit-secs", "120"])
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run lanes bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench {args:?} failed:\n{stderr}\n{stdout}"
    );
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|err| panic!("no JSON report ({err}):\n{stdout}\n{stderr}"));
    assert_eq!(report["scenario"], args[0]);
    report
}

#[test]
fn pairs() {
    let report = bench(&[
        "pairs",
        "--users",
        "6",
        "--window",
        "4",
        "--duration-secs",
        "1",
    ]);
    assert_eq!(report["lost"], 0);
    assert_eq!(report["duplicated"], 0);
    assert!(report["acked"].as_u64().unwrap() > 0);
    assert_eq!(report["acked"], report["delivered"]);
    for side in ["server_cpu_us_per_message", "bench_cpu_us_per_message"] {
        assert!(report[side]["user"].as_f64().is_some(), "{side}: {report}");
    }
    // Confirming receipts: a `received` the server refused would fail the run.
    let report = bench(&[
        "pairs",
        "--users",
        "4",
        "--window",
        "2",
        "--duration-secs",
        "0.5",
        "--receipts",
    ]);
    assert_eq!(report["params"]["receipts"], true);
    assert_eq!(
        (report["lost"].as_u64(), report["duplicated"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(report["acked"], report["delivered"]);
}

#[test]
fn idle() {
    let report = bench(&["idle", "--connections", "20", "--hold-secs", "0.1"]);
    assert_eq!(report["still_open"], 20);
    assert!(report["server_bytes_per_connection"].as_u64().is_some());
}

#[test]
fn idle_over_several_processes() {
    let report = bench(&[
        "idle",
        "--connections",
        "30",
        "--processes",
        "3",
        "--hold-secs",
        "0.1",
    ]);
    assert_eq!(report["params"]["processes"], 3);
    assert_eq!(
        report["still_open"], 30,
        "every helper process held its share"
    );
}

#[test]
fn fanout() {
    let tiny = [
        "fanout",
        "--members",
        "8",
        "--rate",
        "20",
        "--duration-secs",
        "0.5",
    ];
    let report = bench(&tiny);
    assert_eq!(report["lost"], 0);
    assert_eq!(report["messages"], 10);
    assert_eq!(report["deliveries"], 70, "10 messages × 7 receivers");
    assert_eq!(report["other_bytes_per_member"], 0, "no receipts asked for");
    assert_eq!(report["confirmations"], 0);
    for side in ["server_cpu_us_per_delivery", "bench_cpu_us_per_delivery"] {
        for kind in ["user", "system"] {
            assert!(report[side][kind].as_f64().is_some(), "{side}: {report}");
        }
    }
    // Members confirming every message: each hears the others' positions (8 ≤ 100 members).
    let every = ["--receipts", "--receipts-interval-ms", "0"];
    // As the SDK does: the first at once, then at most one per second (the run lasts 0.5 s).
    let throttled = ["--receipts"];
    for (receipts, confirmations) in [(&every[..], 70..=70), (&throttled[..], 7..=14)] {
        let mut args = tiny.to_vec();
        args.extend(receipts);
        let report = bench(&args);
        assert_eq!(report["lost"], 0);
        assert_eq!(report["deliveries"], 70);
        assert!(
            report["other_bytes_per_member"].as_u64() > Some(0),
            "{report}"
        );
        let sent = report["confirmations"].as_u64().unwrap_or(0);
        assert!(confirmations.contains(&sent), "{receipts:?}: {report}");
        assert_eq!(report["members_told_large"], 0, "8 members are not large");
    }
    // Past receipts_members_max (100), `synced` calls the group large, and members confirm as
    // the SDK does there: even the first after a random part of 30 s, so few in a short run
    // (all 101 at once before).
    let report = bench(&[
        "fanout",
        "--members",
        "102",
        "--rate",
        "20",
        "--duration-secs",
        "0.5",
        "--receipts",
    ]);
    assert_eq!(report["lost"], 0);
    assert_eq!(report["deliveries"], 1010, "10 messages × 101 receivers");
    assert_eq!(report["members_told_large"], 102, "{report}");
    let sent = report["confirmations"].as_u64().unwrap_or(u64::MAX);
    assert!(
        sent <= 30,
        "{sent} confirmations in a large group: {report}"
    );
}

#[test]
fn floor() {
    for (model, fsync) in [("threads", true), ("tasks", false), ("inline", false)] {
        let mut args = vec![
            "floor",
            "--members",
            "8",
            "--rate",
            "20",
            "--duration-secs",
            "0.5",
            "--model",
            model,
        ];
        if fsync {
            args.push("--fsync");
        }
        let report = bench(&args);
        assert_eq!(report["params"]["model"], model);
        assert_eq!(report["params"]["fsync"], fsync);
        assert_eq!(report["lost"], 0, "{model}");
        assert_eq!(report["messages"], 10);
        assert_eq!(report["deliveries"], 80, "10 messages × 8 members, {model}");
        assert_eq!(report["reach_all_ms"]["count"], 10);
        assert!(report["cpu_us_per_delivery"]["system"].as_f64().is_some());
    }
}

#[test]
fn storm() {
    let report = bench(&[
        "storm",
        "--clients",
        "12",
        "--group-size",
        "4",
        "--rate",
        "50",
        "--settle-secs",
        "0.3",
    ]);
    assert_eq!(report["lost"], 0);
    assert_eq!(report["duplicated"], 0);
    assert_eq!(report["resynced_clients"], 12);
    assert!(report["messages_acked"].as_u64().unwrap() > 0);
}

#[test]
fn sync() {
    let report = bench(&[
        "sync",
        "--conversations",
        "5",
        "--missed",
        "20",
        "--prefill",
        "50",
        "--repeats",
        "2",
    ]);
    assert!(report["resync_ms_median"].as_f64().unwrap() > 0.0);
}

#[test]
fn longpoll() {
    let report = bench(&["longpoll", "--waiters", "20", "--hold-secs", "0.1"]);
    assert_eq!(report["answered"], 20);
    assert_eq!(report["still_waiting_before_wake"], 20);
    assert!(report["server_bytes_per_waiter"].as_u64().is_some());
}

/// The short version of the crash-safety proof (docs/RELIABILITY.md records a long run).
#[test]
fn crash() {
    let report = bench(&[
        "crash",
        "--kills",
        "3",
        "--clients",
        "8",
        "--group-size",
        "4",
    ]);
    for finding in [
        "lost",
        "duplicated",
        "misplaced",
        "gaps",
        "out_of_order",
        "not_resumed",
    ] {
        assert_eq!(report[finding], 0, "{finding}: {report}");
    }
    assert_eq!(report["integrity"], "ok");
    assert!(report["acked"].as_u64().unwrap() > 0);
}
