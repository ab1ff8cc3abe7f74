//! `ctxd batch` as a user runs it: a generated tree (nested folders, a bad file, a copy of a
//! clip), the mirrored outputs, the summary, reruns, a second prompt through the inversion
//! cache, kill -9 mid-batch, a manifest, and report.html in a real headless browser.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{ctxd, run_err, run_ok, strs, Dir};

/// Small and quick: the tiny bundle (real ONNX networks), 4 steps, 64 px.
const PRESET: &str =
    "steps = 4\nguidance = 1.0\ncontext = \"source\"\nwindow = 4\nshort_side = 64\nmultiple = 16\n";

fn clip(d: &Dir, name: &str, pattern: &str, seconds: f64) -> PathBuf {
    let path = d.path(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    d.ffmpeg(
        name,
        &strs(&[
            "-f".into(),
            "lavfi".into(),
            "-i".into(),
            format!("{pattern}=size=96x64:rate=12:duration={seconds}"),
            "-pix_fmt".into(),
            "yuv420p".into(),
        ]),
    )
}

/// src/a/one.mp4, src/a/b/two.mp4, src/c/dup.mp4 (a copy of one), src/c/bad.mp4 (text),
/// src/_defaults.toml (source and one edit for every video below it).
fn tree(d: &Dir) -> PathBuf {
    let one = clip(d, "src/a/one.mp4", "testsrc2", 1.0);
    clip(d, "src/a/b/two.mp4", "rgbtestsrc", 1.0);
    std::fs::create_dir_all(d.path("src/c")).unwrap();
    std::fs::copy(&one, d.path("src/c/dup.mp4")).unwrap();
    std::fs::write(d.path("src/c/bad.mp4"), "not a video").unwrap();
    std::fs::write(
        d.path("src/_defaults.toml"),
        "source = \"a video\"\n[[edit]]\nprompt = \"red\"\n",
    )
    .unwrap();
    std::fs::write(d.path("preset.toml"), PRESET).unwrap();
    d.path("src")
}

fn batch(d: &Dir) -> Command {
    let mut c = ctxd();
    c.arg("batch")
        .arg("--bundle")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny"))
        .arg("--preset")
        .arg(d.path("preset.toml"))
        .arg("--cache-dir")
        .arg(d.path("cache"))
        .arg("--out")
        .arg(d.path("out"));
    c
}

fn summary(d: &Dir) -> Vec<Value> {
    std::fs::read_to_string(d.path("out/summary.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn row<'a>(rows: &'a [Value], rel: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["rel"] == rel)
        .unwrap_or_else(|| panic!("no summary row for {rel}: {rows:?}"))
}

/// Every file under `dir`, relative, sorted (the batch's own state folder left out).
fn files(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if e.file_name() == ".ctxd-batch" {
                continue;
            }
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, dir, &mut v);
    v.sort();
    v
}

#[test]
fn a_tree_is_mirrored_a_bad_file_fails_alone_reruns_skip_and_a_second_prompt_hits_the_cache() {
    let d = Dir::new();
    let src = tree(&d);
    let (code, err) = run_err(batch(&d).arg(&src));
    assert_eq!(code, 1, "a failed job makes the exit status 1: {err}");
    assert!(
        err.contains("c/bad.mp4: failed:") && err.contains("bad.mp4: not a media file"),
        "one line naming the file and the cause: {err}"
    );
    let out = d.path("out");
    let listed = files(&out);
    for want in [
        "a/one.red.mp4",
        "a/one.red.json",
        "a/b/two.red.mp4",
        "a/b/two.red.json",
        "c/dup.red.mp4",
        "report.html",
        "summary.csv",
        "summary.jsonl",
    ] {
        assert!(
            listed.contains(&want.to_string()),
            "{want} missing: {listed:?}"
        );
    }
    assert!(!listed.iter().any(|f| f.contains("bad.")), "{listed:?}");
    assert!(!listed.iter().any(|f| f.ends_with(".part")), "{listed:?}");
    let rows = summary(&d);
    assert_eq!(rows.len(), 4);
    let bad = row(&rows, "c/bad.mp4");
    assert_eq!(bad["status"], "failed");
    assert!(bad["error"].as_str().unwrap().contains("not a media file"));
    for rel in ["a/one.mp4", "a/b/two.mp4", "c/dup.mp4"] {
        assert_eq!(row(&rows, rel)["status"], "done", "{rel}");
        assert_eq!(row(&rows, rel)["frames"], 12);
    }
    // The copy has the same content: its inversion came from the cache.
    let dup = row(&rows, "c/dup.mp4");
    assert_eq!(
        (dup["cache_hits"].as_u64(), dup["inverted_windows"].as_u64()),
        (Some(3), Some(0))
    );
    assert_eq!(row(&rows, "a/b/two.mp4")["inverted_windows"], 3);
    let csv = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    assert!(csv.starts_with("input,rel,status,attempts,outputs,frames,wall_s,decode_s,"));
    assert_eq!(csv.lines().count(), 5);

    // A rerun does nothing new: the outputs are untouched, the failure is still reported.
    let stamp = |p: &str| std::fs::metadata(out.join(p)).unwrap().modified().unwrap();
    let before = stamp("a/one.red.mp4");
    let (code, err) = run_err(batch(&d).arg(&src));
    assert_eq!(code, 1);
    assert!(
        err.contains("3 done, 1 failed, 0 not run (0 ran now, 3 done before)"),
        "{err}"
    );
    assert_eq!(stamp("a/one.red.mp4"), before);

    // A second prompt over the archive: new outputs, and not one window inverted again.
    let (code, err) = run_err(batch(&d).arg(&src).args(["--prompt", "blue"]));
    assert_eq!(code, 1, "{err}");
    let rows = summary(&d);
    for rel in ["a/one.mp4", "a/b/two.mp4", "c/dup.mp4"] {
        let r = row(&rows, rel);
        assert_eq!(r["status"], "done");
        assert!(r["outputs"][0].as_str().unwrap().ends_with(".blue.mp4"));
        assert_eq!(
            (r["cache_hits"].as_u64(), r["cache_misses"].as_u64()),
            (Some(3), Some(0)),
            "{rel}"
        );
        assert_eq!(r["inverted_windows"], 0, "{rel}: the invert stage ran");
    }
    assert!(out.join("a/b/two.blue.mp4").is_file());
    assert!(
        out.join("a/b/two.red.mp4").is_file(),
        "the first prompt's outputs stay"
    );

    // A dry run plans without running, and now has measured times to estimate from.
    let o = run_ok(batch(&d).arg(&src).args(["--prompt", "green", "--dry-run"]));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("4 to run (36 frames), 0 done, 0 failed before"),
        "{text}"
    );
    assert!(text.contains("estimated"), "{text}");
    assert!(!out.join("a/one.green.mp4").exists());
}

#[test]
fn kill_9_mid_batch_then_a_rerun_leaves_exactly_one_output_set_per_clip() {
    let d = Dir::new();
    for (i, p) in ["testsrc2", "rgbtestsrc", "smptebars", "testsrc"]
        .iter()
        .enumerate()
    {
        clip(&d, &format!("src/v{i}.mp4"), p, 1.0);
    }
    std::fs::write(
        d.path("preset.toml"),
        PRESET
            .replace("steps = 4", "steps = 25")
            .replace("short_side = 64", "short_side = 0"),
    )
    .unwrap();
    let mut cmd = batch(&d);
    cmd.arg(d.path("src"))
        .args(["--prompt", "red", "--source", "a video"])
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let out = d.path("out");
    let outputs: Vec<PathBuf> = (0..4).map(|i| out.join(format!("v{i}.red.mp4"))).collect();
    // Kill while the second job is writing its output (its temporary file exists).
    let partial = || {
        std::fs::read_dir(&out).ok().and_then(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .find(|n| n.starts_with(".v1.red.mp4.") && n.ends_with(".part"))
        })
    };
    let t0 = Instant::now();
    while partial().is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the second job never started"
        );
        assert!(child.try_wait().unwrap().is_none(), "the batch ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(outputs[0].exists() && !outputs[1].exists());
    assert!(partial().is_some(), "the kill left a partial file behind");

    run_ok(
        batch(&d)
            .arg(d.path("src"))
            .args(["--prompt", "red", "--source", "a video"]),
    );
    let mut want: Vec<String> = (0..4)
        .flat_map(|i| [format!("v{i}.red.json"), format!("v{i}.red.mp4")])
        .collect();
    want.extend(["report.html", "summary.csv", "summary.jsonl"].map(String::from));
    let listed: Vec<String> = files(&out)
        .into_iter()
        .filter(|f| !f.starts_with("report-files/"))
        .collect();
    want.sort();
    assert_eq!(listed, want, "one output set per clip, no partial file");
    let rows = summary(&d);
    assert!(rows
        .iter()
        .all(|r| r["status"] == "done" && r["frames"] == 12));
    assert_eq!(
        row(&rows, "v0.mp4")["attempts"],
        1,
        "a finished job is not redone"
    );
    assert_eq!(
        row(&rows, "v1.mp4")["attempts"],
        2,
        "the job cut off by the kill was redone"
    );
    assert_eq!(
        row(&rows, "v0.mp4")["attempts"],
        1,
        "a finished job is not redone"
    );
}

#[test]
fn a_manifest_gives_per_row_prompts_and_overrides() {
    let d = Dir::new();
    clip(&d, "v/a.mp4", "testsrc2", 1.0);
    clip(&d, "v/b.mp4", "rgbtestsrc", 1.0);
    std::fs::write(d.path("preset.toml"), PRESET).unwrap();
    std::fs::write(
        d.path("m.csv"),
        "path,source,prompt,steps\nv/a.mp4,a video,red | blue,\nv/b.mp4,a video,green,2\nv/missing.mp4,a video,red,\n",
    )
    .unwrap();
    let (code, _) = run_err(batch(&d).arg("--manifest").arg(d.path("m.csv")));
    assert_eq!(code, 1, "the missing file fails alone");
    let out = d.path("out");
    for f in ["v/a.red.mp4", "v/a.blue.mp4", "v/b.green.mp4"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("v/b.green.json")).unwrap()).unwrap();
    assert_eq!(report["edit"]["prompt"], "green");
    assert_eq!(report["job"]["edits"][0]["steps"], 2, "the row's steps");
    let rows = summary(&d);
    assert_eq!(row(&rows, "v/missing.mp4")["status"], "failed");

    // Flags that make no sense with a manifest are refused before anything runs.
    let (code, err) = run_err(
        batch(&d)
            .arg("--manifest")
            .arg(d.path("m.csv"))
            .args(["--include", "*.mp4"]),
    );
    assert_eq!(code, 2, "{err}");
}

#[test]
fn the_report_loads_sorts_and_shows_every_picture_in_a_real_browser() {
    let d = Dir::new();
    let src = tree(&d);
    run_err(batch(&d).arg(&src));
    let report = d.path("out/report.html");
    let chromium = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("this test needs Debian's chromium: run scripts/setup");
    let profile = d.path("chromium-profile");
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}#selftest", report.display()))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let attr = dom
        .split("data-selftest=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_else(|| panic!("the page never ran its check: {stderr}"));
    let verdict: Value = serde_json::from_str(&attr.replace("&quot;", "\"")).unwrap();
    // Three clips done: an animated preview and a sheet of frames each.
    assert_eq!(verdict["images"], 6, "{verdict}");
    assert_eq!(verdict["broken"], serde_json::json!([]), "{verdict}");
    assert_eq!(verdict["errors"], serde_json::json!([]), "{verdict}");
    assert_eq!(verdict["rows"], 4);
    let sorted = verdict["sorted"].as_object().unwrap();
    assert!(
        sorted.len() >= 4 && sorted.values().all(|v| v == true),
        "{verdict}"
    );
    let console: Vec<&str> = stderr.lines().filter(|l| l.contains("CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:?}");
    // The failure's reason is on the page.
    assert!(dom.contains("not a media file"));
}

#[test]
fn two_processes_share_one_cache_and_the_cache_command_reports_and_prunes_it() {
    let d = Dir::new();
    let src = clip(&d, "a.mp4", "testsrc2", 1.0);
    std::fs::write(d.path("preset.toml"), PRESET).unwrap();
    let edit = |prompt: &str| {
        let mut c = ctxd();
        c.arg("edit")
            .arg(&src)
            .args(["--source", "a video", "--prompt", prompt, "-q"])
            .arg("--bundle")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny"))
            .arg("--preset")
            .arg(d.path("preset.toml"))
            .arg("--cache-dir")
            .arg(d.path("cache"))
            .arg("--out-dir")
            .arg(d.root());
        c
    };
    // Two writers of the same entries at once: both finish, nothing torn.
    let a = edit("red").spawn().unwrap();
    let b = edit("blue").spawn().unwrap();
    for mut child in [a, b] {
        assert!(child.wait().unwrap().success());
    }
    run_ok(&mut edit("green"));
    let report: Value =
        serde_json::from_slice(&std::fs::read(d.path("a.green.json")).unwrap()).unwrap();
    assert_eq!(
        report["inversion_cache"]["hits"], 3,
        "{}",
        report["inversion_cache"]
    );
    assert_eq!(report["inversion_cache"]["corrupt"], 0);

    let cache = |args: &[&str]| {
        let mut c = ctxd();
        c.arg("cache")
            .args(args)
            .arg("--cache-dir")
            .arg(d.path("cache"));
        String::from_utf8(run_ok(&mut c).stdout).unwrap()
    };
    let stats: Value = serde_json::from_str(&cache(&["stats", "--json"])).unwrap();
    assert_eq!(stats["entries"], 3);
    let bytes = stats["bytes"].as_u64().unwrap();
    assert!(bytes > 0);
    let out = cache(&["prune", &(bytes - 1).to_string()]);
    assert!(out.starts_with("removed 1 entries"), "{out}");
    assert!(cache(&["clear"]).starts_with("removed 2 entries"));
    let stats: Value = serde_json::from_str(&cache(&["stats", "--json"])).unwrap();
    assert_eq!(stats["entries"], 0);
}
