//! `ctxd watch` as a real process against real folders.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

struct Daemon {
    dir: Dir,
    config: PathBuf,
}

impl Daemon {
    fn new() -> Daemon {
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
                "state_dir = \"state\"\npoll_seconds = 0.1\nshutdown_grace_seconds = 20\n\
                 [api]\nlisten = \"127.0.0.1:0\"\n\
                 [[mapping]]\nname = \"main\"\ninbox = \"inbox\"\noutbox = \"outbox\"\nfailed = \"failed\"\ndone = \"done\"\n\
                 preset = \"{}\"\nbundle = \"{}\"\nsettle_seconds = 0.3\nsidecar_grace_seconds = 0.3\n",
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

    fn start(&self) -> Child {
        ctxd()
            .args(["watch", "--config"])
            .arg(&self.config)
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
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
        let tmp = self.dir.ffmpeg(
            &format!("make-{name}"),
            &strs(&args(
                &[&[
                    "-f".into(),
                    "lavfi".into(),
                    "-i".into(),
                    format!("color=c=0x808080:size=64x48:rate=10:duration={seconds}"),
                ]],
                &["-c:v", "libx264", "-f", "mp4"],
            )),
        );
        std::fs::rename(tmp, self.path(&format!("inbox/{name}"))).unwrap();
    }
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

fn stop(mut child: Child) {
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
    d.drop_clip("b.mp4", 1.0);
    std::fs::write(
        d.path("inbox/b.prompt.toml"),
        "[[edit]]\nprompt = \"blue\"\n",
    )
    .unwrap();
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
    stop(child);
    assert_eq!(
        d.list("outbox"),
        vec!["a.red.json", "a.red.mp4", "b.blue.json", "b.blue.mp4"],
        "exactly one output set per job"
    );
    assert_eq!(d.list("inbox"), vec!["_defaults.toml"]);
}

#[test]
fn kill_9_mid_job_then_restart_ends_with_one_output_set() {
    let d = Daemon::new();
    // Slow enough to be caught running: 30 s of video, native size, more steps.
    std::fs::write(
        d.path("quick.toml"),
        "steps = 20\nguidance = 1.0\ncontext = \"off\"\nwindow = 8\nshort_side = 0\nmultiple = 16\n",
    )
    .unwrap();
    let mut child = d.start();
    d.drop_clip("long.mp4", 30.0);
    wait_for("the job to start writing", || {
        d.list("outbox").iter().any(|n| n.ends_with(".part"))
    });
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
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
