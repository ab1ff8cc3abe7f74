//! `ctxd watch` as a real process against real folders.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use crate::util::*;

mod api;
mod stream;

struct Daemon {
    dir: Dir,
    config: PathBuf,
}

impl Daemon {
    fn new() -> Daemon {
        Daemon::with(0.3, 0.3, "", "")
    }

    /// A daemon with its own folders; `global` and `mapping` add config lines.
    fn with(settle: f64, grace: f64, global: &str, mapping: &str) -> Daemon {
        let dir = Dir::new();
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        std::fs::write(
            dir.path("quick.toml"),
            "steps = 4\nguidance = 1.0\ncontext = \"off\"\nwindow = 8\nshort_side = 64\nmultiple = 16\n",
        )
        .unwrap();
        let config = dir.path("watch.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = \"state\"\npoll_seconds = 0.1\nshutdown_grace_seconds = 20\n{global}\n\
                 [api]\nlisten = \"127.0.0.1:0\"\n\
                 [[mapping]]\nname = \"main\"\ninbox = \"inbox\"\noutbox = \"outbox\"\nfailed = \"failed\"\ndone = \"done\"\n\
                 preset = \"{}\"\nbundle = \"{}\"\nsettle_seconds = {settle}\nsidecar_grace_seconds = {grace}\n{mapping}\n",
                dir.path("quick.toml").display(),
                root.join("models/oracle").display()
            ),
        )
        .unwrap();
        for d in ["inbox", "outbox", "failed", "done"] {
            std::fs::create_dir_all(dir.path(d)).unwrap();
        }
        std::fs::write(
            dir.path("inbox/_defaults.toml"),
            "source = \"gray\"\n[[edit]]\nprompt = \"red\"\n",
        )
        .unwrap();
        Daemon { dir, config }
    }

    fn start(&self) -> Running {
        self.start_with(&[])
    }

    /// Starts the daemon; its log goes to `daemon.log`, shown if the test fails.
    fn start_with(&self, env: &[(&str, &str)]) -> Running {
        let log = self.path("daemon.log");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = ctxd()
            .args(["watch", "--config"])
            .arg(&self.config)
            .envs(env.iter().copied())
            .stderr(file)
            .spawn()
            .unwrap();
        Running {
            child: Some(child),
            log,
        }
    }

    /// Native size and more steps: jobs slow enough to be caught running.
    fn slow_jobs(&self) {
        self.slow_jobs_steps(20);
    }

    /// Native size and `steps` steps: the oracle's work grows with both (at 20 steps a 60-s
    /// 64x48 clip takes 0.7 s in the test build).
    fn slow_jobs_steps(&self, steps: u32) {
        std::fs::write(
            self.path("quick.toml"),
            format!("steps = {steps}\nguidance = 1.0\ncontext = \"off\"\nwindow = 8\nshort_side = 0\nmultiple = 16\n"),
        )
        .unwrap();
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path(p)
    }

    fn list(&self, sub: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.path(sub))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// Makes a clip elsewhere, then moves it in atomically (as a careful uploader would).
    fn drop_clip(&self, name: &str, seconds: f64) {
        let tmp = self.make_clip(name, seconds);
        std::fs::rename(tmp, self.path(&format!("inbox/{name}"))).unwrap();
    }

    /// A gray clip outside the watched folders.
    fn make_clip(&self, name: &str, seconds: f64) -> PathBuf {
        self.make_clip_sized(name, seconds, "64x48")
    }

    fn make_clip_sized(&self, name: &str, seconds: f64, size: &str) -> PathBuf {
        self.dir.ffmpeg(
            &format!("make-{name}"),
            &strs(&args(
                &[&[
                    "-f".into(),
                    "lavfi".into(),
                    "-i".into(),
                    format!("color=c=0x808080:size={size}:rate=10:duration={seconds}"),
                ]],
                &["-c:v", "libx264", "-f", "mp4"],
            )),
        )
    }

    /// The status API's address, once the daemon has written it.
    fn api(&self) -> String {
        let file = self.path("state/api.addr");
        wait_for("the API address", || file.exists());
        std::fs::read_to_string(file).unwrap()
    }
}

/// One HTTP/1.1 request; returns the status and the body.
pub(crate) fn http(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req += &format!("Authorization: Bearer {t}\r\n");
    }
    let body = body.unwrap_or("");
    if !body.is_empty() {
        req += "Content-Type: application/json\r\n";
    }
    req += &format!("Content-Length: {}\r\n\r\n{body}", body.len());
    conn.write_all(req.as_bytes()).unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {answer}"));
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_string())
}

pub(crate) fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A daemon process; killed (and its log printed) if the test fails while it runs.
struct Running {
    child: Option<Child>,
    log: PathBuf,
}

impl Running {
    fn kill_9(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- daemon log (last lines) ---");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

fn stop(mut running: Running) {
    let mut child = running.child.take().unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "graceful stop exits 0");
}

fn exists(p: &Path) -> bool {
    p.exists()
}

#[test]
fn a_batch_with_a_bad_file_and_a_duplicate() {
    let d = Daemon::new();
    let child = d.start();
    d.drop_clip("a.mp4", 1.0);
    // The sidecar first: written after its clip, it had to arrive within this daemon's 0.3-s
    // grace, which a loaded CI host once missed (b was then edited red, the same job as a).
    // A sidecar that follows its clip is tested with a generous grace below.
    std::fs::write(
        d.path("inbox/b.prompt.toml"),
        "[[edit]]\nprompt = \"blue\"\n",
    )
    .unwrap();
    d.drop_clip("b.mp4", 1.0);
    std::fs::write(d.path("inbox/notes.mp4"), "not a video\n".repeat(20)).unwrap();
    wait_for("outputs and the failure record", || {
        exists(&d.path("outbox/a.red.mp4"))
            && exists(&d.path("outbox/b.blue.mp4"))
            && exists(&d.path("failed/notes.mp4.error.json"))
    });
    wait_for("inputs moved to done", || {
        d.list("done").contains(&"b.mp4".to_string())
            && d.list("done").contains(&"a.mp4".to_string())
    });
    let err: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path("failed/notes.mp4.error.json")).unwrap())
            .unwrap();
    assert!(
        err["cause"].as_str().unwrap().contains("not a media file"),
        "{err}"
    );
    assert!(d.list("failed").contains(&"notes.mp4".to_string()));

    // The same content again, under another name: one job, not redone.
    std::fs::copy(d.path("done/a.mp4"), d.path("make-copy")).unwrap();
    std::fs::rename(d.path("make-copy"), d.path("inbox/a-again.mp4")).unwrap();
    wait_for("the duplicate to be set aside", || {
        d.list("done").contains(&"a-again.mp4".to_string())
    });
    // Two copies of one new clip at once: one job, and both inputs filed with it.
    let c = d.make_clip("c.mp4", 1.5);
    std::fs::copy(&c, d.path("c-copy.mp4")).unwrap();
    std::fs::rename(&c, d.path("inbox/c.mp4")).unwrap();
    std::fs::rename(d.path("c-copy.mp4"), d.path("inbox/c-copy.mp4")).unwrap();
    wait_for("both copies to be filed", || {
        let done = d.list("done");
        done.contains(&"c.mp4".to_string()) && done.contains(&"c-copy.mp4".to_string())
    });
    stop(child);
    let mut outputs = d.list("outbox");
    outputs.retain(|n| n.starts_with('c'));
    assert!(
        outputs == ["c.red.json", "c.red.mp4"] || outputs == ["c-copy.red.json", "c-copy.red.mp4"],
        "one output set for the two copies: {outputs:?}"
    );
    let mut outputs = d.list("outbox");
    outputs.retain(|n| !n.starts_with('c'));
    assert_eq!(
        outputs,
        vec!["a.red.json", "a.red.mp4", "b.blue.json", "b.blue.mp4"],
        "exactly one output set per job"
    );
    assert_eq!(d.list("inbox"), vec!["_defaults.toml"]);
}

#[test]
fn bad_input_found_partway_fails_at_once_and_edits_that_cannot_share_an_inversion_are_refused() {
    let d = Daemon::with(0.3, 0.3, "max_attempts = 3", "");
    let child = d.start();
    // The index is in front, so the file probes whole and fails partway through decoding.
    let full = d.dir.ffmpeg(
        "full.mp4",
        &strs(&args(
            &[&pattern("160x120", "10", 4.0)],
            &["-c:v", "libx264", "-movflags", "+faststart", "-f", "mp4"],
        )),
    );
    let bytes = std::fs::read(&full).unwrap();
    std::fs::write(d.path("cut.tmp"), &bytes[..bytes.len() * 6 / 10]).unwrap();
    std::fs::rename(d.path("cut.tmp"), d.path("inbox/cut.mp4")).unwrap();
    // Two edits with different step counts cannot share one inversion.
    std::fs::write(
        d.path("inbox/odd.prompt.toml"),
        "[[edit]]\nprompt = \"red\"\n[[edit]]\nprompt = \"blue\"\nsteps = 6\n",
    )
    .unwrap();
    d.drop_clip("odd.mp4", 1.0);
    wait_for("both failure records", || {
        exists(&d.path("failed/cut.mp4.error.json")) && exists(&d.path("failed/odd.mp4.error.json"))
    });
    stop(child);
    let cut = json(&std::fs::read_to_string(d.path("failed/cut.mp4.error.json")).unwrap());
    assert_eq!(cut["stage"], "input", "{cut}");
    assert_eq!(cut["attempts"], 1, "a bad file is not tried again: {cut}");
    assert!(
        cut["cause"].as_str().unwrap().contains("truncated"),
        "{cut}"
    );
    let odd = json(&std::fs::read_to_string(d.path("failed/odd.mp4.error.json")).unwrap());
    assert_eq!(odd["stage"], "spec", "{odd}");
    let cause = odd["cause"].as_str().unwrap();
    assert!(
        cause.contains("odd.mp4") && cause.contains("steps") && cause.contains("odd.prompt.toml"),
        "names the video, the field and the file that set it: {odd}"
    );
    assert_eq!(d.list("outbox"), Vec::<String>::new());
}

/// The state of the job on input file `name` (the newest one), if there is one.
fn state_of(addr: &str, name: &str) -> Option<String> {
    let (_, body) = http(addr, "GET", "/jobs", None, None);
    json(&body)
        .as_array()
        .unwrap()
        .iter()
        .find(|j| {
            j["input_path"]
                .as_str()
                .unwrap()
                .ends_with(&format!("/{name}"))
        })
        .map(|j| j["state"].as_str().unwrap().to_string())
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Regression (issue 16 item 2): the worker re-read prompt files and reopened the input by
/// name at run time, so a job ran something other than what it was keyed by (and a link
/// swapped in led out of the inbox); the key held file names but not the bundle.
#[test]
fn what_runs_is_what_was_keyed() {
    let d = Daemon::with(0.3, 0.3, "concurrency = 1", "");
    // The first job must outlast the others' settling (about 3.5 s of work; 0.7 s at 20 steps).
    d.slow_jobs_steps(100);
    // A bundle of its own, to change later.
    let oracle = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/oracle");
    let bundle = d.path("bundle");
    copy_dir(&oracle, &bundle);
    let config = std::fs::read_to_string(&d.config)
        .unwrap()
        .replace(&oracle.display().to_string(), &bundle.display().to_string());
    std::fs::write(&d.config, config).unwrap();
    let outside = d.make_clip("outside.mp4", 0.7);
    let child = d.start();
    let addr = d.api();
    // Long enough to be cancelled while the others wait behind it.
    d.drop_clip("first.mp4", 60.0);
    wait_for("the first job to run", || {
        state_of(&addr, "first.mp4").as_deref() == Some("running")
    });
    // Queued behind it: a clip with its sidecar, and a clip that will become a link.
    std::fs::write(
        d.path("inbox/b.prompt.toml"),
        "[[edit]]\nprompt = \"blue\"\n",
    )
    .unwrap();
    d.drop_clip("b.mp4", 0.5);
    d.drop_clip("c.mp4", 0.6);
    wait_for("both to be queued", || {
        state_of(&addr, "b.mp4").as_deref() == Some("queued")
            && state_of(&addr, "c.mp4").as_deref() == Some("queued")
    });
    // Changed while queued: the sidecar's prompt (the job keeps what it was keyed by), and
    // c.mp4 swapped for a link to a file outside the inbox (never followed).
    std::fs::write(
        d.path("inbox/b.prompt.toml"),
        "[[edit]]\nprompt = \"green\"\n",
    )
    .unwrap();
    std::fs::remove_file(d.path("inbox/c.mp4")).unwrap();
    std::os::unix::fs::symlink(&outside, d.path("inbox/c.mp4")).unwrap();
    assert_eq!(http(&addr, "DELETE", "/jobs/1", None, None).0, 200);
    wait_for("b done and c failed", || {
        exists(&d.path("outbox/b.blue.mp4")) && exists(&d.path("failed/c.mp4.error.json"))
    });
    let c = json(&std::fs::read_to_string(d.path("failed/c.mp4.error.json")).unwrap());
    assert!(
        c["cause"].as_str().unwrap().contains("symbolic link"),
        "{c}"
    );
    assert!(!exists(&d.path("outbox/b.green.mp4")));
    assert!(
        !exists(&d.path("outbox/c.red.mp4")),
        "the link was not followed"
    );
    assert!(exists(&outside), "the link's target is untouched");

    // The same content and sidecar text under another name: the same job, not redone.
    std::fs::copy(d.path("done/b.mp4"), d.path("b2.tmp")).unwrap();
    std::fs::write(
        d.path("inbox/b2.prompt.toml"),
        "[[edit]]\nprompt = \"blue\"\n",
    )
    .unwrap();
    std::fs::rename(d.path("b2.tmp"), d.path("inbox/b2.mp4")).unwrap();
    wait_for("the copy to be set aside", || {
        exists(&d.path("done/b2.mp4"))
    });
    assert!(!exists(&d.path("outbox/b2.blue.mp4")), "not edited twice");

    // A new model is new work: the same file and prompt submitted again run again.
    let submit = r#"{"path": "b.mp4", "folder": "done", "prompt": {"edit": [{"prompt": "blue"}]}}"#;
    let (code, body) = http(&addr, "POST", "/jobs", None, Some(submit));
    assert_eq!(
        (code, json(&body)["new"].as_bool()),
        (200, Some(false)),
        "{body}"
    );
    let manifest = bundle.join("bundle.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replacen("description = \"", "description = \"v2: ", 1),
    )
    .unwrap();
    let (code, body) = http(&addr, "POST", "/jobs", None, Some(submit));
    assert_eq!(
        (code, json(&body)["new"].as_bool()),
        (201, Some(true)),
        "{body}"
    );
    let id = json(&body)["id"].as_i64().unwrap();
    wait_for("the new model's job", || {
        json(&http(&addr, "GET", &format!("/jobs/{id}"), None, None).1)["state"] == "done"
    });
    stop(child);
}

#[test]
fn kill_9_mid_job_then_restart_ends_with_one_output_set() {
    let d = Daemon::new();
    // Slow enough to be caught running: 30 s of video, native size, more steps (about 1.4 s).
    d.slow_jobs_steps(80);
    let child = d.start();
    d.drop_clip("long.mp4", 30.0);
    wait_for("the job to start writing", || {
        d.list("outbox").iter().any(|n| n.ends_with(".part"))
    });
    child.kill_9();
    assert!(
        d.list("outbox").iter().all(|n| n.ends_with(".part")),
        "no finished output yet"
    );

    let child = d.start();
    wait_for("the resumed job's output", || {
        exists(&d.path("outbox/long.red.json"))
    });
    stop(child);
    assert_eq!(
        d.list("outbox"),
        vec!["long.red.json", "long.red.mp4"],
        "one output set, no leftovers"
    );
    assert_eq!(frame_times(&d.path("outbox/long.red.mp4")).len(), 300);
}

#[test]
fn a_growing_file_waits_and_a_late_sidecar_is_used() {
    let d = Daemon::with(1.5, 2.0, "", "");
    let child = d.start();
    // Written in place, a piece at a time, never pausing as long as the settle interval: a
    // partial mp4 (no index yet) taken early would end in failed/.
    let clip = std::fs::read(d.make_clip("grow.mp4", 2.0)).unwrap();
    {
        use std::io::Write;
        let mut f = std::fs::File::create(d.path("inbox/grow.mp4")).unwrap();
        for piece in clip.chunks(clip.len() / 8 + 1) {
            f.write_all(piece).unwrap();
            f.flush().unwrap();
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    // Moved in atomically; its sidecar follows 0.5 s later, within the grace period.
    d.drop_clip("late.mp4", 1.0);
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(d.path("late.tmp"), "[[edit]]\nprompt = \"blue\"\n").unwrap();
    std::fs::rename(d.path("late.tmp"), d.path("inbox/late.prompt.toml")).unwrap();
    wait_for("both outputs", || {
        exists(&d.path("outbox/grow.red.json")) && exists(&d.path("outbox/late.blue.json"))
    });
    stop(child);
    assert_eq!(
        d.list("failed"),
        Vec::<String>::new(),
        "nothing taken early"
    );
    assert_eq!(
        d.list("outbox"),
        vec![
            "grow.red.json",
            "grow.red.mp4",
            "late.blue.json",
            "late.blue.mp4"
        ]
    );
    assert_eq!(frame_times(&d.path("outbox/grow.red.mp4")).len(), 20);
    assert_eq!(
        d.list("done"),
        vec!["grow.mp4", "late.mp4", "late.prompt.toml"],
        "the sidecar goes with its video"
    );
}

/// A small tmpfs, unmounted when dropped (also when the test fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("mount");
        assert!(
            status.success(),
            "this test mounts a tmpfs as a full disk, which needs root (CAP_SYS_ADMIN)"
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_outbox_fails_the_job_with_the_reason_and_keeps_the_input() {
    let d = Daemon::with(0.3, 0.3, "max_attempts = 2", "");
    let disk = Tmpfs::mount(&d.path("outbox"), "12k");
    let child = d.start();
    // Noise compresses badly: the output cannot fit in 12 kB.
    let noisy = d.dir.ffmpeg(
        "noisy.mp4",
        &[
            "-f",
            "lavfi",
            "-i",
            "nullsrc=s=256x192:r=10:d=4,geq=random(1)*255:128:128",
            "-c:v",
            "libx264",
            "-f",
            "mp4",
        ],
    );
    let original = std::fs::read(&noisy).unwrap();
    std::fs::rename(&noisy, d.path("inbox/big.mp4")).unwrap();
    wait_for("the failure record", || {
        exists(&d.path("failed/big.mp4.error.json"))
    });
    let err = json(&std::fs::read_to_string(d.path("failed/big.mp4.error.json")).unwrap());
    let cause = err["cause"].as_str().unwrap();
    assert!(cause.contains("No space left on device"), "{err}");
    assert!(cause.contains("outbox"), "names the output: {err}");
    assert_eq!(err["attempts"], 2, "retried up to the cap: {err}");
    assert_eq!(
        std::fs::read(d.path("failed/big.mp4")).unwrap(),
        original,
        "the input is kept, byte for byte"
    );
    assert_eq!(
        d.list("outbox"),
        Vec::<String>::new(),
        "nothing half-written"
    );

    // Space again: the user asks for the failed input to be tried again.
    drop(disk);
    let redo = r#"{"path": "big.mp4", "folder": "failed", "redo": true}"#;
    let (code, body) = http(&d.api(), "POST", "/jobs", None, Some(redo));
    assert_eq!(code, 200, "{body}");
    wait_for("the output", || exists(&d.path("outbox/big.red.json")));
    stop(child);
    assert_eq!(d.list("outbox"), vec!["big.red.json", "big.red.mp4"]);
    assert_eq!(
        d.list("failed"),
        Vec::<String>::new(),
        "the old failure record is gone"
    );
    assert_eq!(d.list("done"), vec!["big.mp4"]);
}

#[test]
fn graceful_stop_requeues_a_long_job_that_the_next_start_finishes() {
    let d = Daemon::with(0.3, 0.3, "", "");
    std::fs::write(
        d.path("watch.toml"),
        std::fs::read_to_string(d.path("watch.toml"))
            .unwrap()
            .replace(
                "shutdown_grace_seconds = 20",
                "shutdown_grace_seconds = 0.5",
            ),
    )
    .unwrap();
    // About 3.5 s of work: at 20 steps the whole job took 0.7 s and could end inside the grace.
    d.slow_jobs_steps(100);
    let child = d.start();
    d.drop_clip("long.mp4", 60.0);
    wait_for("the job to start writing", || {
        d.list("outbox").iter().any(|n| n.ends_with(".part"))
    });
    // The job needs far longer than the 0.5 s grace: stopped and queued again, not finished.
    stop(child); // asserts exit status 0
    assert_eq!(
        d.list("outbox"),
        Vec::<String>::new(),
        "no partial output left"
    );
    assert_eq!(
        d.list("inbox"),
        vec!["_defaults.toml", "long.mp4"],
        "the input waits"
    );

    let child = d.start();
    wait_for("the resumed job's output", || {
        exists(&d.path("outbox/long.red.json"))
    });
    stop(child);
    assert_eq!(d.list("outbox"), vec!["long.red.json", "long.red.mp4"]);
}

#[test]
fn limits_refuse_long_inputs_and_stop_slow_jobs() {
    let d = Daemon::with(
        0.3,
        0.3,
        "",
        "max_duration_seconds = 5\nmax_job_seconds = 1.5",
    );
    d.slow_jobs();
    let child = d.start();
    d.drop_clip("too-long.mp4", 8.0);
    // Large frames at native size: many seconds of work.
    let slow = d.make_clip_sized("slow.mp4", 4.5, "640x480");
    std::fs::rename(slow, d.path("inbox/slow.mp4")).unwrap();
    wait_for("both failure records", || {
        exists(&d.path("failed/too-long.mp4.error.json"))
            && exists(&d.path("failed/slow.mp4.error.json"))
    });
    stop(child);
    let long = json(&std::fs::read_to_string(d.path("failed/too-long.mp4.error.json")).unwrap());
    assert!(
        long["cause"]
            .as_str()
            .unwrap()
            .contains("max_duration_seconds"),
        "{long}"
    );
    assert_eq!(long["attempts"], 0, "refused before it took a worker");
    let slow = json(&std::fs::read_to_string(d.path("failed/slow.mp4.error.json")).unwrap());
    assert_eq!(slow["stage"], "timeout", "{slow}");
    assert!(
        slow["cause"].as_str().unwrap().contains("max_job_seconds"),
        "{slow}"
    );
    assert_eq!(slow["attempts"], 1, "a time-out is not retried");
    assert_eq!(d.list("outbox"), Vec::<String>::new());
}
