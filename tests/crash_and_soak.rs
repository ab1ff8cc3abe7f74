//! The daemon's long-run promises in their CI forms: `ctxd bench chaos` (SIGKILL at random
//! moments, restarts, inputs arriving throughout) and `ctxd bench soak` (steady drops with
//! the API polled; memory, descriptors and threads flat). The full campaigns are the same
//! commands with larger numbers (README, "Reliability").

use crate::util::*;

fn models() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/oracle")
}

fn bench_json(args: &[&str]) -> serde_json::Value {
    let d = Dir::new();
    let out = ctxd()
        .args(["bench"])
        .args(args)
        .arg("--bundle")
        .arg(models())
        .arg("--work-dir")
        .arg(d.path("work"))
        .arg("--json")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let r: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "ctxd bench {args:?}: no JSON ({e}); stdout: {text}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    // On a violation the command prints its findings and exits non-zero; keep both.
    assert!(
        out.status.success(),
        "ctxd bench {args:?} failed: {r:#}; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    r
}

#[test]
fn kill_9_at_random_moments_loses_nothing_and_doubles_nothing() {
    // Jobs long enough, and lives short enough, for kills to land inside jobs: with 20 steps
    // and the default lives (up to 2.5 s) the faster sampler finished the jobs between kills
    // (1 kill of 16 mid-job; 6 with these).
    let r = bench_json(&[
        "chaos",
        "--jobs",
        "6",
        "--bad",
        "2",
        "--kills",
        "16",
        "--seed",
        "7",
        "--steps",
        "40",
        "--max-life-ms",
        "800",
    ]);
    assert_eq!(r["violations"].as_array().unwrap().len(), 0, "{r:#}");
    // The kills must have hit running jobs, or the check proves nothing about them.
    assert!(r["kills_mid_job"].as_u64().unwrap() >= 3, "{r:#}");
    assert!(r["interrupted_runs"].as_u64().unwrap() >= 3, "{r:#}");
    assert_eq!(r["jobs_done"].as_u64().unwrap(), 4, "{r:#}");
}

#[test]
fn kill_9_during_a_batch_and_reruns_leave_one_output_set_per_clip() {
    let r = bench_json(&[
        "chaos",
        "--mode",
        "batch",
        "--jobs",
        "10",
        "--bad",
        "2",
        "--kills",
        "12",
        "--seed",
        "3",
        // Kills inside jobs on a fast machine too: ten inputs arriving over the kills, lives
        // of at most 0.4 s (with 6 inputs and 0.8 s lives the faster sampler finished the
        // jobs between kills: 1 kill of 12 mid-job; 9 with these).
        "--steps",
        "40",
        "--max-life-ms",
        "400",
    ]);
    assert_eq!(r["violations"].as_array().unwrap().len(), 0, "{r:#}");
    assert!(r["kills_mid_job"].as_u64().unwrap() >= 3, "{r:#}");
    assert_eq!(r["jobs_done"].as_u64().unwrap(), 8, "{r:#}");
    assert_eq!(r["jobs_failed"].as_u64().unwrap(), 2, "{r:#}");
}

#[test]
fn kill_9_during_a_stream_never_lists_a_partial_segment() {
    let r = bench_json(&["chaos", "--mode", "stream", "--kills", "6", "--seed", "5"]);
    assert_eq!(r["violations"].as_array().unwrap().len(), 0, "{r:#}");
    assert!(r["kills_mid_job"].as_u64().unwrap() >= 2, "{r:#}");
    assert_eq!(r["jobs_done"].as_u64().unwrap(), 1, "{r:#}");
}

#[test]
fn five_minutes_of_drops_leave_memory_descriptors_and_threads_flat() {
    let minutes = std::env::var("CTXD_SOAK_MINUTES").unwrap_or_else(|_| "5".into());
    let r = bench_json(&[
        "soak",
        "--minutes",
        &minutes,
        "--every",
        "4",
        "--bad-every",
        "5",
        "--sample-seconds",
        "2",
    ]);
    assert_eq!(r["daemon_exited"], false, "{r:#}");
    assert_eq!(r["api_errors"].as_u64().unwrap(), 0, "{r:#}");
    assert!(r["api_requests"].as_u64().unwrap() > 100, "{r:#}");
    assert_eq!(r["unended"].as_u64().unwrap(), 0, "{r:#}");
    assert!(r["drops"].as_u64().unwrap() >= 10, "{r:#}");
    assert_eq!(
        r["failure_records"].as_u64().unwrap(),
        r["bad_drops"].as_u64().unwrap(),
        "{r:#}"
    );
    assert_eq!(r["flat"], true, "{r:#}");
}
