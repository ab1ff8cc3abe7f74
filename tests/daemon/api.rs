//! The daemon's HTTP API: submits, cancels, refusals, and what it does while busy or idle.

use std::time::{Duration, Instant};

use super::*;

#[test]
fn the_api_answers_submits_cancels_and_refuses_traversal() {
    // A settle interval long enough that the scan never takes the files: the API does.
    let d = Daemon::with(600.0, 0.3, "", "");
    let token = "s3cret-token";
    // No optimized-model cache: /metrics must count the sessions optimized at load (below).
    let child = d.start_with(&[("CTXD_API_TOKEN", token), ("CTXD_ORT_CACHE", "off")]);
    let addr = d.api();
    let t = Some(token);

    assert_eq!(
        http(&addr, "GET", "/healthz", None, None).0,
        200,
        "health needs no token"
    );
    assert_eq!(http(&addr, "GET", "/jobs", None, None).0, 401);
    assert_eq!(http(&addr, "GET", "/jobs", Some("wrong"), None).0, 401);
    assert_eq!(http(&addr, "GET", "/metrics", None, None).0, 401);
    let (code, body) = http(&addr, "GET", "/jobs", t, None);
    assert_eq!((code, json(&body)), (200, serde_json::json!([])));

    // Traversal and other escapes.
    std::fs::create_dir(d.path("inbox/sub")).unwrap();
    let outside = d.make_clip("outside.mp4", 1.0);
    // A link in the inbox is filed in failed/ by the next scan (racing this request), so the
    // link a request names sits in done/, which the daemon never scans.
    std::fs::create_dir_all(d.path("done")).unwrap();
    std::os::unix::fs::symlink(&outside, d.path("done/link.mp4")).unwrap();
    for (path, code) in [
        ("../watch.toml", 403),
        ("/etc/passwd", 403),
        (outside.to_str().unwrap(), 403),
        ("sub/../../watch.toml", 403),
        ("link.mp4", 403),
        ("sub", 403),
        ("missing.mp4", 404),
        ("_defaults.toml", 400),
    ] {
        let body = if path == "link.mp4" {
            serde_json::json!({ "path": path, "folder": "done" })
        } else {
            serde_json::json!({ "path": path })
        }
        .to_string();
        let (got, answer) = http(&addr, "POST", "/jobs", t, Some(&body));
        assert_eq!(got, code, "{path}: {answer}");
        assert!(json(&answer)["error"].is_string(), "{answer}");
    }
    std::fs::remove_file(d.path("done/link.mp4")).unwrap();
    let bad_folder = serde_json::json!({ "path": "x.mp4", "folder": "../.." }).to_string();
    assert_eq!(http(&addr, "POST", "/jobs", t, Some(&bad_folder)).0, 400);
    let unknown = serde_json::json!({ "path": "x.mp4", "output": "/tmp/x" }).to_string();
    assert!(
        http(&addr, "POST", "/jobs", t, Some(&unknown)).0 >= 400,
        "unknown fields refused"
    );

    // Submit with a prompt whose edit name tries to leave the outbox.
    std::fs::rename(d.make_clip("api.mp4", 1.0), d.path("inbox/api.mp4")).unwrap();
    let submit = serde_json::json!({
        "path": "api.mp4",
        "prompt": { "source": "gray", "edit": [{ "prompt": "blue", "name": "../../escape" }] },
    })
    .to_string();
    let (code, body) = http(&addr, "POST", "/jobs", t, Some(&submit));
    assert_eq!(code, 201, "{body}");
    let id = json(&body)["id"].as_i64().unwrap();
    let job_url = format!("/jobs/{id}");
    wait_for("the submitted job", || {
        json(&http(&addr, "GET", &job_url, t, None).1)["state"] == "done"
    });
    let job = json(&http(&addr, "GET", &job_url, t, None).1);
    let outputs: Vec<PathBuf> = job["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| PathBuf::from(p.as_str().unwrap()))
        .collect();
    assert_eq!(outputs.len(), 1, "{job}");
    assert_eq!(outputs[0].parent().unwrap(), d.path("outbox"), "{job}");
    assert!(job["timings"]["wall_s"].as_f64().unwrap() > 0.0, "{job}");
    assert!(
        job["timings"]["stages"].as_object().unwrap().len() >= 3,
        "{job}"
    );
    assert_eq!(job["prompt"]["edit"][0]["prompt"], "blue");
    assert_eq!(job["attempts"], 1);
    assert_eq!(d.list("done"), vec!["api.mp4"]);

    // Again: the same job, not redone; with "redo" (the input now in done/), edited again.
    let again = serde_json::json!({ "path": "api.mp4", "folder": "done", "prompt": { "source": "gray", "edit": [{ "prompt": "blue", "name": "../../escape" }] } });
    let (code, body) = http(&addr, "POST", "/jobs", t, Some(&again.to_string()));
    assert_eq!(
        (
            code,
            json(&body)["id"].as_i64(),
            json(&body)["new"].as_bool()
        ),
        (200, Some(id), Some(false)),
        "{body}"
    );
    let mut redo = again.clone();
    redo["redo"] = true.into();
    let (code, body) = http(&addr, "POST", "/jobs", t, Some(&redo.to_string()));
    assert_eq!(
        (code, json(&body)["state"].as_str()),
        (200, Some("queued")),
        "{body}"
    );
    wait_for("the redone job", || {
        json(&http(&addr, "GET", &job_url, t, None).1)["state"] == "done"
    });

    // Cancel a long job while it runs (about 3.5 s of work: at 20 steps it could end first).
    d.slow_jobs_steps(100);
    std::fs::rename(d.make_clip("long.mp4", 60.0), d.path("inbox/long.mp4")).unwrap();
    let (code, body) = http(&addr, "POST", "/jobs", t, Some(r#"{"path": "long.mp4"}"#));
    assert_eq!(code, 201, "{body}");
    let long = format!("/jobs/{}", json(&body)["id"]);
    wait_for("progress on the long job", || {
        json(&http(&addr, "GET", &long, t, None).1)["live"]["frames_done"].as_u64() > Some(0)
    });
    let running = json(&http(&addr, "GET", &long, t, None).1);
    assert_eq!(
        (running["state"].as_str(), running["stage"].as_str()),
        (Some("running"), Some("editing")),
        "a running job says where it is: {running}"
    );
    let (code, body) = http(&addr, "DELETE", &long, t, None);
    assert_eq!(
        (code, json(&body)["state"].as_str()),
        (200, Some("cancelled")),
        "{body}"
    );
    assert_eq!(
        http(&addr, "DELETE", &long, t, None).0,
        409,
        "already cancelled"
    );
    assert_eq!(http(&addr, "DELETE", "/jobs/9999", t, None).0, 404);
    assert_eq!(http(&addr, "GET", "/jobs/9999", t, None).0, 404);
    wait_for("the worker to let go", || {
        json(&http(&addr, "GET", &long, t, None).1)["live"].is_null()
    });
    assert!(
        d.list("inbox").contains(&"long.mp4".to_string()),
        "a cancelled input stays"
    );

    let (code, listing) = http(&addr, "GET", "/jobs?state=done", t, None);
    assert_eq!((code, json(&listing).as_array().unwrap().len()), (200, 1));
    assert_eq!(http(&addr, "GET", "/jobs?state=bogus", t, None).0, 400);
    let (code, metrics) = http(&addr, "GET", "/metrics", t, None);
    assert_eq!(code, 200);
    for line in [
        "ctxd_jobs{state=\"done\"} 1",
        "ctxd_jobs{state=\"cancelled\"} 1",
        "ctxd_queue_depth 0",
        "ctxd_jobs_finished_total{outcome=\"done\"} 2",
        "ctxd_jobs_finished_total{outcome=\"cancelled\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing:\n{metrics}"
        );
    }
    let frames: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ctxd_frames_processed_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        frames >= 20.0,
        "two 10-frame edits and part of a long one: {frames}"
    );
    assert!(
        metrics.contains("ctxd_stage_seconds_total{stage=\""),
        "{metrics}"
    );
    // Later jobs took the first one's models, already loaded.
    let reused: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ctxd_model_loads_total{how=\"reused\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(reused >= 5.0, "{metrics}");
    // This daemon runs with CTXD_ORT_CACHE=off: every session was optimized without the
    // cache, and the time it took is counted.
    let sample = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert!(sample("ctxd_model_builds_total{optimized=\"uncached\"}") >= 1.0);
    assert_eq!(sample("ctxd_model_builds_total{optimized=\"cached\"}"), 0.0);
    assert!(sample("ctxd_model_build_seconds_total{optimized=\"uncached\"}") > 0.0);
    stop(child);
    assert_eq!(
        d.list("outbox").len(),
        2,
        "one output set, written twice in place"
    );
}

#[test]
fn a_second_daemon_on_the_same_state_folder_is_refused_and_the_first_keeps_working() {
    let d = Daemon::new();
    let first = d.start();
    let api = d.api();
    let (code, err) = run_err(ctxd().args(["watch", "--config"]).arg(&d.config));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("another ctxd watch") && err.contains("state"),
        "{err}"
    );
    // Nothing of the first one was touched: its address file and its API.
    assert_eq!(
        std::fs::read_to_string(d.path("state/api.addr")).unwrap(),
        api
    );
    let (status, _) = http(&api, "GET", "/healthz", None, None);
    assert_eq!(status, 200);
    stop(first);
}

/// Regression (issue 16 item 6): the API ran SQLite calls on its only async thread, so a
/// request waiting on the database (the daemon writing, a backup holding a lock) stalled
/// every other request, `/healthz` among them.
#[test]
fn the_api_answers_while_the_database_is_locked() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let d = Daemon::new();
    let child = d.start();
    let addr = d.api();
    d.drop_clip("a.mp4", 0.5);
    wait_for("the job", || {
        state_of(&addr, "a.mp4").as_deref() == Some("done")
    });
    // Another process holds the database's write lock for 3 s (inside the 10 s busy wait).
    let db = rusqlite::Connection::open(d.path("state/jobs.db")).unwrap();
    db.execute_batch("BEGIN IMMEDIATE; UPDATE jobs SET updated_at = updated_at;")
        .unwrap();
    let released = Arc::new(AtomicBool::new(false));
    let release = {
        let released = released.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(3));
            released.store(true, Ordering::SeqCst);
            db.execute_batch("ROLLBACK").unwrap();
            drop(db);
        })
    };
    let waiting = {
        let addr = addr.clone();
        // A cancel writes: it waits for the lock.
        std::thread::spawn(move || http(&addr, "DELETE", "/jobs/1", None, None).0)
    };
    std::thread::sleep(Duration::from_millis(300));
    let (code, _) = http(&addr, "GET", "/healthz", None, None);
    assert_eq!(code, 200);
    assert!(
        !released.load(Ordering::SeqCst),
        "/healthz answered only once the database was free"
    );
    release.join().unwrap();
    assert_eq!(
        waiting.join().unwrap(),
        409,
        "the waiting request is answered: the job is already done"
    );
    stop(child);
}

/// Regression (issue 16 item 5): the daemon's loop probed and hashed each new file itself,
/// so one large file held up every other file, finished jobs and a stop until it was read.
#[test]
fn a_large_file_being_admitted_holds_up_no_other() {
    let d = Daemon::new();
    let child = d.start();
    let addr = d.api();
    // A real clip padded (sparse) to 512 MB: reading and hashing it takes seconds here.
    let big = d.dir.ffmpeg(
        "big.ts",
        &strs(&args(
            &[&pattern("64x48", "10", 1.0)],
            &["-c:v", "libx264", "-f", "mpegts"],
        )),
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(&big)
        .unwrap()
        .set_len(512 << 20)
        .unwrap();
    std::fs::rename(&big, d.path("inbox/big.ts")).unwrap();
    d.drop_clip("small.mp4", 0.5);
    wait_for("the small clip's output", || {
        exists(&d.path("outbox/small.red.mp4"))
    });
    assert_eq!(
        state_of(&addr, "big.ts"),
        None,
        "the small clip was edited while the large one was still being read"
    );
    stop(child);
    assert!(exists(&d.path("inbox/big.ts")), "left for the next start");
}

#[test]
fn an_idle_daemon_sleeps() {
    // Regression: the watcher reported our own reads of the inbox, and each scan woke the
    // next (a core busy while idle). A sleeping daemon uses next to no CPU.
    let d = Daemon::new();
    let child = d.start();
    d.api();
    std::thread::sleep(Duration::from_secs(1));
    let pid = child.child.as_ref().unwrap().id();
    let cpu = || ctxd::bench::cpu_seconds(pid).unwrap();
    let (cpu0, t0) = (cpu(), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let busy = (cpu() - cpu0) / t0.elapsed().as_secs_f64();
    stop(child);
    assert!(
        busy < 0.2,
        "idle daemon used {busy:.2} CPU-seconds per second"
    );
}
