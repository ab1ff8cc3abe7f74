//! The malformed-input corpus (scripts/malformed-corpus: 50+ broken videos and prompt files)
//! through `ctxd edit` and `ctxd watch`: every case ends, with an output or one clear error
//! naming the file; nothing panics or hangs; the daemon stays up with bounded memory.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

struct Case {
    kind: String,
    name: OsString,
    what: String,
    may_succeed: bool,
}

fn corpus(d: &Dir) -> (PathBuf, Vec<Case>) {
    let root = d.path("corpus");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/malformed-corpus");
    let st = Command::new(script).arg(&root).status().unwrap();
    assert!(st.success(), "scripts/malformed-corpus failed");
    let list: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("cases.json")).unwrap()).unwrap();
    let cases: Vec<Case> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let hex = c["name_hex"].as_str().unwrap();
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            Case {
                kind: c["kind"].as_str().unwrap().into(),
                name: OsString::from_vec(bytes),
                what: c["what"].as_str().unwrap().into(),
                may_succeed: c["may_succeed"].as_bool().unwrap(),
            }
        })
        .collect();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    (root, cases)
}

/// Runs `cmd` with a time limit; (exit code, stderr). A hang or a signal fails the test.
fn bounded(cmd: &mut Command, what: &str) -> (i32, String) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("{what}: still running after 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let code = out
        .status
        .code()
        .unwrap_or_else(|| panic!("{what}: killed by a signal ({:?})", out.status));
    (code, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The lines of stderr that are messages, not progress.
fn messages(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| !l.contains(" done, ") && !l.trim().is_empty())
        .collect()
}

/// A child killed and reaped when the test ends, passing or not (no daemon left behind).
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn quick_edit(input: &Path, out: &Path) -> Command {
    let mut c = ctxd();
    c.arg("edit")
        .arg(input)
        .args(["--source", "gray", "--prompt", "red", "--steps", "2"])
        .args(["--guidance", "1", "--short-side", "32", "-o"])
        .arg(out);
    c
}

#[test]
fn every_malformed_input_ends_with_an_output_or_one_clear_error() {
    let d = Dir::new();
    let (root, cases) = corpus(&d);
    let good = d.ffmpeg(
        "good.mp4",
        &strs(&args(&[&pattern("64x48", "10", 1.0)], &["-c:v", "libx264"])),
    );
    let mut refused = 0;
    for (i, c) in cases.iter().enumerate() {
        let shown = Path::new(&c.name).display().to_string();
        let what = format!("{} ({})", shown, c.what);
        let out = d.path(&format!("out-{i}.mp4"));
        let (code, err) = match c.kind.as_str() {
            "video" => bounded(
                &mut quick_edit(&root.join("videos").join(&c.name), &out),
                &what,
            ),
            _ => bounded(
                quick_edit(&good, &out)
                    .arg("--prompt-file")
                    .arg(root.join("prompts").join(&c.name)),
                &what,
            ),
        };
        assert_ne!(code, 101, "{what}: panicked: {err}");
        if code == 0 {
            assert!(c.may_succeed, "{what}: accepted, expected a refusal");
            assert!(out.is_file(), "{what}: exit 0 without an output");
            continue;
        }
        refused += 1;
        let lines = messages(&err);
        assert_eq!(lines.len(), 1, "{what}: one message, got {lines:?}");
        let names_it = lines[0].contains(&shown)
            // A strange but valid input may fail on the output side; it is named then.
            || (c.may_succeed && lines[0].contains(&out.display().to_string()));
        assert!(names_it, "{what}: the message names the file: {}", lines[0]);
        assert!(!out.exists(), "{what}: nothing half-written");
    }
    assert!(refused >= 30, "only {refused} refusals");
}

#[test]
fn the_daemon_files_every_malformed_input_and_stays_up() {
    let d = Dir::new();
    let (root, cases) = corpus(&d);
    let watch = d.path("watch");
    for f in ["inbox", "outbox", "failed", "done", "stage"] {
        std::fs::create_dir_all(watch.join(f)).unwrap();
    }
    let oracle = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/oracle");
    std::fs::write(
        watch.join("quick.toml"),
        "steps = 2\nguidance = 1.0\ncontext = \"off\"\nwindow = 8\nshort_side = 32\nmultiple = 16\n",
    )
    .unwrap();
    let config = watch.join("watch.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"state\"\npoll_seconds = 0.1\nconcurrency = 2\n[api]\nlisten = \"127.0.0.1:0\"\n\
             [[mapping]]\nname = \"m\"\ninbox = \"inbox\"\noutbox = \"outbox\"\nfailed = \"failed\"\ndone = \"done\"\n\
             preset = \"{}\"\nbundle = \"{}\"\nsettle_seconds = 0.2\nsidecar_grace_seconds = 0.2\n",
            watch.join("quick.toml").display(),
            oracle.display()
        ),
    )
    .unwrap();
    std::fs::write(
        watch.join("inbox/_defaults.toml"),
        "source = \"gray\"\n[[edit]]\nprompt = \"red\"\n",
    )
    .unwrap();
    let good = d.ffmpeg(
        "good.mp4",
        &strs(&args(&[&pattern("64x48", "10", 1.0)], &["-c:v", "libx264"])),
    );
    let log = std::fs::File::create(d.path("daemon.log")).unwrap();
    let mut daemon = Reaped(
        ctxd()
            .args(["watch", "--config"])
            .arg(&config)
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let inbox = watch.join("inbox");
    // Every video case under its own name; every prompt case as the sidecar of a good
    // video. Staged beside the inbox, then renamed in, as an uploader would.
    let mut expected: Vec<(OsString, &Case)> = Vec::new();
    for c in &cases {
        let (video, sidecar) = if c.kind == "video" {
            (c.name.clone(), None)
        } else {
            let name = c.name.to_string_lossy().into_owned();
            let (stem, suffix) = name.split_once(".prompt.").unwrap();
            (
                OsString::from(format!("pc-{stem}.mp4")),
                Some((
                    format!("pc-{stem}.prompt.{suffix}"),
                    root.join("prompts").join(&c.name),
                )),
            )
        };
        if let Some((side, from)) = sidecar {
            // `mv` keeps what it is: a pipe stays a pipe, a link a link.
            let st = Command::new("mv")
                .arg(&from)
                .arg(inbox.join(side))
                .status()
                .unwrap();
            assert!(st.success());
            std::fs::copy(&good, watch.join("stage").join(&video)).unwrap();
            std::fs::rename(watch.join("stage").join(&video), inbox.join(&video)).unwrap();
        } else {
            let st = Command::new("mv")
                .arg(root.join("videos").join(&c.name))
                .arg(inbox.join(&video))
                .status()
                .unwrap();
            assert!(st.success());
        }
        expected.push((video, c));
    }
    // Each video ends with an output (named from the stem as text, lossy where it is not
    // UTF-8; the container may be kept), a failure record, or filed in done/ with the job
    // whose content it repeats. A folder is not a video and is left alone; an empty file is
    // an upload not yet written and is waited for.
    let record_of = |name: &OsString| {
        let mut record = name.clone();
        record.push(".error.json");
        watch.join("failed").join(record)
    };
    let ended = |name: &OsString| {
        let stem = Path::new(name).file_stem().unwrap().to_string_lossy();
        let prefix = format!("{stem}.red.");
        let output = std::fs::read_dir(watch.join("outbox"))
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(&prefix));
        output || record_of(name).exists() || watch.join("done").join(name).exists()
    };
    let waits = |c: &Case| c.what == "a folder named .mp4" || c.what == "zero bytes";
    let start = Instant::now();
    loop {
        let open: Vec<String> = expected
            .iter()
            .filter(|(v, c)| !waits(c) && !ended(v))
            .map(|(v, _)| Path::new(v).display().to_string())
            .collect();
        if open.is_empty() {
            break;
        }
        assert!(
            daemon.0.try_wait().unwrap().is_none(),
            "the daemon exited; log: {}",
            std::fs::read_to_string(d.path("daemon.log")).unwrap_or_default()
        );
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "not ended: {open:?}; log: {}",
            std::fs::read_to_string(d.path("daemon.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // What must be refused was refused; the rest is whatever the daemon made of it.
    for (v, c) in &expected {
        if !c.may_succeed && !waits(c) {
            assert!(
                record_of(v).exists(),
                "{} ({}): no failure record",
                Path::new(v).display(),
                c.what
            );
        }
    }
    assert!(
        inbox.join("empty.mp4").exists(),
        "an empty file is left to be written"
    );
    // Failure records say which input and why.
    for e in std::fs::read_dir(watch.join("failed")).unwrap().flatten() {
        if e.file_name().to_string_lossy().ends_with(".error.json") {
            let r: serde_json::Value =
                serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
            assert!(r["input"].as_str().unwrap().contains("/inbox/"), "{r}");
            assert!(!r["cause"].as_str().unwrap().is_empty(), "{r}");
        }
    }
    // The daemon answers, and its memory stayed bounded.
    let addr = std::fs::read_to_string(watch.join("state/api.addr")).unwrap();
    let mut conn = std::net::TcpStream::connect(addr.trim()).unwrap();
    use std::io::{Read, Write};
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.0.id())).unwrap();
    let hwm_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(hwm_kb < 2 << 20, "daemon peak memory {} MB", hwm_kb >> 10);
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGTERM) };
    assert_eq!(daemon.0.wait().unwrap().code(), Some(0));
}
