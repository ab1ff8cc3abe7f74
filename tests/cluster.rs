//! `ctxd worker` / `submit` / `status` against real `nats-server` processes on loopback
//! (scripts/setup installs nats-server): a single server, and a 3-node JetStream cluster
//! that loses a worker and a server node mid-run.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::*;

/// A free TCP port on loopback (bound, then released for the server to take).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// nats-server processes with JetStream, killed on drop.
struct Nats {
    servers: Vec<Option<Child>>,
    /// Each node's arguments, to start it again.
    args: Vec<Vec<String>>,
    pub url: String,
}

impl Nats {
    fn start(d: &Dir, nodes: usize) -> Nats {
        let clients: Vec<u16> = (0..nodes).map(|_| free_port()).collect();
        let routes: Vec<u16> = (0..nodes).map(|_| free_port()).collect();
        let mut args = Vec::new();
        for i in 0..nodes {
            let mut a: Vec<String> = ["-js", "-a", "127.0.0.1", "-p"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            a.push(clients[i].to_string());
            a.extend(["-n".into(), format!("n{i}"), "-sd".into()]);
            a.push(d.path(&format!("nats-{i}")).to_string_lossy().into_owned());
            if nodes > 1 {
                let others: Vec<String> = (0..nodes)
                    .filter(|j| *j != i)
                    .map(|j| format!("nats://127.0.0.1:{}", routes[j]))
                    .collect();
                a.extend(["--cluster_name".into(), "ctxd".into(), "--cluster".into()]);
                a.push(format!("nats://127.0.0.1:{}", routes[i]));
                a.extend(["--routes".into(), others.join(",")]);
            }
            args.push(a);
        }
        let servers = args.iter().map(|a| Some(spawn_server(a))).collect();
        let url = clients
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let n = Nats { servers, args, url };
        // Ready when the streams and buckets can be made (a cluster must elect its leaders).
        let since = Instant::now();
        loop {
            let out = status_cmd(&n.url, nodes, false).output().unwrap();
            if out.status.success() {
                break;
            }
            assert!(
                since.elapsed() < Duration::from_secs(60),
                "NATS never came up: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        n
    }

    fn restart(&mut self, i: usize) {
        self.kill(i);
        self.servers[i] = Some(spawn_server(&self.args[i]));
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
    }
}

fn spawn_server(args: &[String]) -> Child {
    Command::new("nats-server")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server is not installed: run scripts/setup")
}

fn status_cmd(url: &str, replicas: usize, jobs: bool) -> Command {
    let mut c = ctxd();
    c.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["status", "--json", "--nats", url])
        .args(["--replicas", &replicas.to_string()]);
    if jobs {
        c.arg("--jobs");
    }
    c
}

/// The cluster's status; while a node is lost and its streams elect new leaders, requests
/// can time out for a few seconds: asked again for up to a minute.
fn status(url: &str, replicas: usize) -> Value {
    let since = Instant::now();
    loop {
        let out = status_cmd(url, replicas, true).output().unwrap();
        if out.status.success() {
            return serde_json::from_slice(&out.stdout).unwrap();
        }
        assert!(
            since.elapsed() < Duration::from_secs(60),
            "status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A worker on the tiny bundle, one ONNX thread, killed on drop.
struct Worker(Child);

impl Worker {
    fn start(d: &Dir, url: &str, id: &str, replicas: usize) -> Worker {
        let log = std::fs::File::create(d.path(&format!("{id}.log"))).unwrap();
        let child = ctxd()
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["worker", "--nats", url, "--id", id, "--slots", "1"])
            .args(["--replicas", &replicas.to_string()])
            .args([
                "--bundle",
                "models/tiny",
                "--device",
                "cpu",
                "--threads",
                "1",
            ])
            .arg("--work-dir")
            .arg(d.path(&format!("work-{id}")))
            .stderr(log)
            .spawn()
            .unwrap();
        Worker(child)
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn submit(url: &str, replicas: usize, inputs: &[PathBuf], extra: &[&str]) -> Command {
    submit_steps(url, replicas, inputs, 3, extra)
}

fn submit_steps(
    url: &str,
    replicas: usize,
    inputs: &[PathBuf],
    steps: u32,
    extra: &[&str],
) -> Command {
    let steps = steps.to_string();
    let mut c = ctxd();
    c.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["submit", "--nats", url])
        .args(["--replicas", &replicas.to_string()])
        .args([
            "--bundle",
            "models/tiny",
            "--preset",
            "fast",
            "--steps",
            &steps,
        ])
        .args([
            "--short-side",
            "32",
            "--source",
            "a video",
            "--prompt",
            "a red video",
        ])
        .args(extra)
        .args(inputs);
    c
}

/// `n` clips that differ in content (pattern, size and length), `frames` frames or so each.
fn clips(d: &Dir, n: usize, seconds: f64) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let src = ["testsrc2", "testsrc", "smptebars", "rgbtestsrc"][i % 4];
            let size = format!("{}x{}", 64 + 16 * (i / 4), 48);
            d.ffmpeg(
                &format!("clip{i:02}.mp4"),
                &[
                    "-f",
                    "lavfi",
                    "-i",
                    &format!("{src}=size={size}:rate=10:duration={seconds}"),
                    "-c:v",
                    "libx264",
                    "-pix_fmt",
                    "yuv420p",
                ],
            )
        })
        .collect()
}

fn jobs(s: &Value) -> Vec<Value> {
    s["job_list"].as_array().cloned().unwrap_or_default()
}

fn count(s: &Value, state: &str) -> u64 {
    s["jobs"][state].as_u64().unwrap_or(0)
}

fn frame_count(path: &Path) -> usize {
    frame_times(path).len()
}

#[test]
fn submit_wait_fetches_the_outputs_and_the_same_work_is_one_job() {
    let d = Dir::new();
    let nats = Nats::start(&d, 1);
    let _w = Worker::start(&d, &nats.url, "w1", 1);
    let good = clips(&d, 1, 0.8).remove(0);
    let bad = d.path("bad.mp4");
    std::fs::write(&bad, b"this is not a video").unwrap();
    let out = d.path("out");

    let wait = ["--wait", "--out-dir", out.to_str().unwrap()];
    let (code, err) = run_err(&mut submit(
        &nats.url,
        1,
        &[good.clone(), bad.clone()],
        &wait,
    ));
    assert_eq!(code, 1, "a failed job makes submit --wait exit 1: {err}");
    assert!(err.contains("clip00.mp4: done"), "{err}");
    // the reason names the file as submitted, not the worker's copy
    assert!(
        err.contains("bad.mp4: failed: input: bad.mp4: not a media file"),
        "{err}"
    );
    let video = out.join("clip00.a-red-video.mp4");
    assert_eq!(frame_count(&video), frame_count(&good));
    assert!(out.join("clip00.a-red-video.json").is_file());

    // The same content and settings again, under another name: no new job.
    let copy = d.path("copy.mp4");
    std::fs::copy(&good, &copy).unwrap();
    let again = run_ok(&mut submit(&nats.url, 1, &[copy], &[]));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("already done"), "{err}");
    let (_, err) = run_err(&mut submit(&nats.url, 1, &[bad], &[]));
    assert!(err.contains("already failed"), "{err}");

    let s = status(&nats.url, 1);
    assert_eq!((count(&s, "done"), count(&s, "failed")), (1, 1), "{s}");
    assert_eq!(s["dead_letters"], 1, "{s}");
    assert_eq!(s["workers"].as_array().map(Vec::len), Some(1), "{s}");
    for j in jobs(&s) {
        assert_eq!(j["attempts"], 1, "{j}");
    }
}

/// `ctxd cancel`: a running job stops at its next progress write, stores nothing and frees
/// its worker; the message is not delivered again; `--redo` queues it again.
#[test]
fn a_cancelled_job_stops_on_its_worker_and_redo_queues_it_again() {
    let d = Dir::new();
    let nats = Nats::start(&d, 1);
    let _w = Worker::start(&d, &nats.url, "w1", 1);
    // long enough to be caught running: 60 frames, 300 steps (tens of seconds)
    let clip = clips(&d, 1, 6.0).remove(0);
    let out = run_ok(&mut submit_steps(
        &nats.url,
        1,
        std::slice::from_ref(&clip),
        300,
        &[],
    ));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let key = err
        .split("(job ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap_or_else(|| panic!("no job key in {err}"))
        .to_string();

    let since = Instant::now();
    while !jobs(&status(&nats.url, 1))
        .iter()
        .any(|j| j["state"] == "running" && j["stage"] == "editing")
    {
        assert!(since.elapsed() < Duration::from_secs(60), "never ran");
        std::thread::sleep(Duration::from_millis(200));
    }
    let cancel = |extra: &[&str]| {
        let mut c = ctxd();
        c.current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["cancel", "--nats", &nats.url, "--replicas", "1"])
            .args(extra);
        c
    };
    let done = run_ok(&mut cancel(&[&key]));
    assert!(
        String::from_utf8_lossy(&done.stdout).contains("cancelled"),
        "{done:?}"
    );
    // the worker stops its run (a log line) and answers the delivery
    let log = d.path("w1.log");
    let since = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("cancelled in the cluster")
    {
        assert!(
            since.elapsed() < Duration::from_secs(30),
            "worker did not stop: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let s = status(&nats.url, 1);
    assert_eq!(count(&s, "cancelled"), 1, "{s}");
    assert_eq!(count(&s, "done"), 0, "{s}");
    assert_eq!(
        s["queue_messages"], 0,
        "the cancelled job's message is gone: {s}"
    );
    assert_eq!(s["ack_pending"], 0, "{s}");
    let j = &jobs(&s)[0];
    assert!(
        j["reason"].as_str().unwrap_or("").contains("ctxd cancel"),
        "{j}"
    );
    assert_eq!(j["outputs"], 0, "{j}");

    // cancelling what has ended is refused; a plain submit does not rerun it
    let (code, _) = run_err(&mut cancel(&[&key]));
    assert_eq!(code, 1);
    let (code, err) = run_err(&mut submit_steps(
        &nats.url,
        1,
        std::slice::from_ref(&clip),
        300,
        &[],
    ));
    assert_eq!(code, 1);
    assert!(err.contains("cancelled before (--redo"), "{err}");
    // --redo queues it again (a fresh entry) and the same worker, now free, takes it
    let again = run_ok(&mut submit_steps(&nats.url, 1, &[clip], 300, &["--redo"]));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("queued again"),
        "{again:?}"
    );
    let since = Instant::now();
    while !jobs(&status(&nats.url, 1))
        .iter()
        .any(|j| j["state"] == "running")
    {
        assert!(since.elapsed() < Duration::from_secs(60), "not run again");
        std::thread::sleep(Duration::from_millis(200));
    }
    run_ok(&mut cancel(&[&key[..8]]));
}

/// Videos through a folder every machine mounts instead of the object store.
#[test]
fn a_shared_folder_carries_the_videos_instead_of_the_object_store() {
    let d = Dir::new();
    let nats = Nats::start(&d, 1);
    let shared = d.path("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let shared_arg = shared.to_str().unwrap().to_string();
    let log = std::fs::File::create(d.path("w.log")).unwrap();
    let _w = Worker(
        ctxd()
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["worker", "--nats", &nats.url, "--shared", &shared_arg])
            .args([
                "--bundle",
                "models/tiny",
                "--device",
                "cpu",
                "--threads",
                "1",
            ])
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let clip = clips(&d, 1, 0.8).remove(0);
    let out = d.path("out");
    let args = [
        "--shared",
        &shared_arg,
        "--wait",
        "--out-dir",
        out.to_str().unwrap(),
    ];
    run_ok(&mut submit(
        &nats.url,
        1,
        std::slice::from_ref(&clip),
        &args,
    ));
    let video = out.join("clip00.a-red-video.mp4");
    assert_eq!(frame_count(&video), frame_count(&clip));
    // the input and the output set lie in the shared folder, under the job's key
    let s = status(&nats.url, 1);
    let key = jobs(&s)[0]["key"].as_str().unwrap().to_string();
    assert!(shared.join("in").join(&key).is_file());
    for f in [
        "clip00.a-red-video.mp4",
        "clip00.a-red-video.json",
        "manifest.json",
    ] {
        assert!(shared.join("out").join(&key).join(f).is_file(), "{f}");
    }
    // a submitter that does not mount the folder is told so
    let (_, err) = run_err(&mut submit(
        &nats.url,
        1,
        &[clip],
        &["--shared", d.path("nowhere").to_str().unwrap()],
    ));
    assert!(
        err.contains("nowhere") && err.contains("shared folder"),
        "{err}"
    );
}

/// The campaign: three servers, three workers, 20 jobs (two of them bad files); one
/// worker is killed with SIGKILL inside a job and one server node is killed. Every job ends
/// exactly once (done written once, or failed with its reason), the killed job is finished
/// by another worker, and the outputs are one set per job.
#[test]
fn a_cluster_that_loses_a_worker_and_a_node_ends_every_job_exactly_once() {
    let d = Dir::new();
    let mut nats = Nats::start(&d, 3);
    let mut workers: Vec<Worker> = ["w1", "w2", "w3"]
        .iter()
        .map(|id| Worker::start(&d, &nats.url, id, 3))
        .collect();
    let mut inputs = clips(&d, 18, 2.0);
    for (i, name) in ["bad1.mp4", "bad2.mp4"].iter().enumerate() {
        let p = d.path(name);
        // different bytes: the same bytes would be one job
        std::fs::write(&p, vec![i as u8; 4096]).unwrap();
        inputs.push(p);
    }
    run_ok(&mut submit(&nats.url, 3, &inputs, &[]));

    // Kill w1 while it holds a job, then a server node.
    let since = Instant::now();
    let victim_job = loop {
        let s = status(&nats.url, 3);
        let busy = s["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["id"] == "w1")
            .and_then(|w| w["running"].as_array().and_then(|r| r.first().cloned()));
        if let Some(key) = busy {
            break key.as_str().unwrap().to_string();
        }
        assert!(
            since.elapsed() < Duration::from_secs(120),
            "w1 never ran a job: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    std::thread::sleep(Duration::from_millis(700));
    workers[0].kill();
    // A node crashes and its supervisor brings it back a few seconds later; jobs go on
    // meanwhile on the other two. (Left down, NATS 2.9 leaves a share of requests
    // unanswered for minutes: see `cluster::retried`.)
    nats.kill(2);
    std::thread::sleep(Duration::from_secs(5));
    nats.restart(2);

    let since = Instant::now();
    let s = loop {
        let s = status(&nats.url, 3);
        if count(&s, "done") + count(&s, "failed") == 20 {
            break s;
        }
        assert!(
            since.elapsed() < Duration::from_secs(300),
            "not every job ended: {s}"
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    assert_eq!((count(&s, "done"), count(&s, "failed")), (18, 2), "{s}");
    for j in jobs(&s) {
        match j["state"].as_str().unwrap() {
            "done" => {
                assert_eq!(j["done_writes"], 1, "written done more than once: {j}");
                assert_eq!(j["outputs"], 2, "{j}");
            }
            _ => {
                let reason = j["reason"].as_str().unwrap_or_default();
                assert!(
                    j["input"].as_str().unwrap().starts_with("bad")
                        && reason.contains("not a media file"),
                    "{j}"
                );
            }
        }
    }
    let victim = jobs(&s)
        .into_iter()
        .find(|j| j["key"] == victim_job.as_str())
        .unwrap();
    // If w1 finished it in the moment before the kill, it was not taken over.
    if victim["attempts"].as_u64() == Some(2) {
        assert_ne!(victim["worker"], "w1", "{victim}");
    }
    assert_eq!(victim["state"], "done", "{victim}");

    // Every output set once: fetched, one video and one report per job, every frame there.
    let out = d.path("out");
    let wait = ["--wait", "--out-dir", out.to_str().unwrap()];
    let (code, _) = run_err(&mut submit(&nats.url, 3, &inputs, &wait));
    assert_eq!(code, 1, "the bad files stay failed");
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 36, "{names:?}");
    for clip in &inputs[..18] {
        let stem = clip.file_stem().unwrap().to_string_lossy();
        let video = out.join(format!("{stem}.a-red-video.mp4"));
        assert_eq!(
            frame_count(&video),
            frame_count(clip),
            "{}",
            video.display()
        );
    }
}

/// A small preset for the fronting tests (2 steps at 32 px).
fn quick_preset(d: &Dir) -> PathBuf {
    let p = d.path("quick.toml");
    std::fs::write(
        &p,
        "steps = 2\nguidance = 1.0\ncontext = \"off\"\nwindow = 8\nshort_side = 32\nmultiple = 16\n",
    )
    .unwrap();
    p
}

/// `ctxd batch --nats`: the archive's jobs run on the cluster's worker; the mirrored outputs,
/// the summary and its failures land here as with a local batch.
#[test]
fn batch_runs_an_archive_on_the_cluster() {
    let d = Dir::new();
    let nats = Nats::start(&d, 1);
    let _w = Worker::start(&d, &nats.url, "w1", 1);
    let archive = d.path("archive/sub");
    std::fs::create_dir_all(&archive).unwrap();
    for (i, c) in clips(&d, 2, 0.8).iter().enumerate() {
        std::fs::rename(c, archive.join(format!("v{i}.mp4"))).unwrap();
    }
    std::fs::write(archive.join("broken.mp4"), b"not a video at all").unwrap();
    let out = d.path("out");
    let preset = quick_preset(&d);
    let (code, err) = run_err(
        ctxd()
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["batch", "--nats", &nats.url, "--bundle", "models/tiny"])
            .arg("--preset")
            .arg(&preset)
            .args(["--source", "a video", "--prompt", "a red video", "--out"])
            .arg(&out)
            .arg(d.path("archive")),
    );
    assert_eq!(code, 1, "the broken file fails the batch: {err}");
    for i in 0..2 {
        let v = out.join(format!("sub/v{i}.a-red-video.mp4"));
        assert_eq!(frame_count(&v), 8, "{}", v.display());
        assert!(out.join(format!("sub/v{i}.a-red-video.json")).is_file());
    }
    let summary = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    assert!(summary.contains("not a media file"), "{summary}");
    let s = status(&nats.url, 1);
    assert_eq!((count(&s, "done"), count(&s, "failed")), (2, 1), "{s}");
}

/// `ctxd watch` fronting a cluster: a clip dropped in its inbox is edited by the cluster's
/// worker and lands in the outbox; a bad file is still refused at admission and filed.
#[test]
fn watch_fronts_a_cluster_with_its_folders_unchanged() {
    let d = Dir::new();
    let nats = Nats::start(&d, 1);
    let _w = Worker::start(&d, &nats.url, "w1", 1);
    let preset = quick_preset(&d);
    for f in ["inbox", "outbox", "failed", "done"] {
        std::fs::create_dir_all(d.path(f)).unwrap();
    }
    std::fs::write(
        d.path("inbox/_defaults.toml"),
        "source = \"a video\"\n[[edit]]\nprompt = \"a red video\"\n",
    )
    .unwrap();
    let config = d.path("watch.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"state\"\npoll_seconds = 0.1\n\
             [cluster]\nnats = \"{}\"\n\
             [api]\nlisten = \"127.0.0.1:0\"\n\
             [[mapping]]\nname = \"main\"\ninbox = \"inbox\"\noutbox = \"outbox\"\nfailed = \"failed\"\ndone = \"done\"\n\
             preset = \"{}\"\nbundle = \"{}\"\nsettle_seconds = 0.3\nsidecar_grace_seconds = 0.3\n",
            nats.url,
            preset.display(),
            Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny").display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(d.path("daemon.log")).unwrap();
    let _daemon = Worker(
        ctxd()
            .args(["watch", "--config"])
            .arg(&config)
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let clip = clips(&d, 1, 0.8).remove(0);
    std::fs::copy(&clip, d.path("inbox/c.mp4")).unwrap();
    std::fs::write(d.path("inbox/bad.mp4"), b"definitely not a video").unwrap();
    let since = Instant::now();
    let out = d.path("outbox/c.a-red-video.mp4");
    while !(out.is_file() && std::fs::read_dir(d.path("failed")).unwrap().count() > 0) {
        assert!(
            since.elapsed() < Duration::from_secs(60),
            "outbox {:?}, failed {:?}; log: {}",
            std::fs::read_dir(d.path("outbox")).unwrap().count(),
            std::fs::read_dir(d.path("failed")).unwrap().count(),
            std::fs::read_to_string(d.path("daemon.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(frame_count(&out), frame_count(&clip));
    assert!(d.path("outbox/c.a-red-video.json").is_file());
    // the edit ran on the cluster's worker, not in the daemon
    let s = status(&nats.url, 1);
    let done: Vec<Value> = jobs(&s)
        .into_iter()
        .filter(|j| j["state"] == "done")
        .collect();
    assert_eq!(done.len(), 1, "{s}");
    assert_eq!(done[0]["worker"], "w1", "{s}");

    // A cancel through the daemon's API reaches the cluster: the worker stops the job.
    use crate::daemon::{http, json};
    let long = clips(&d, 2, 6.0).remove(1);
    std::fs::write(
        d.path("inbox/long.prompt.toml"),
        "source = \"a video\"\nsteps = 300\n[[edit]]\nprompt = \"a red video\"\n",
    )
    .unwrap();
    std::fs::copy(&long, d.path("inbox/long.mp4")).unwrap();
    let running = || {
        jobs(&status(&nats.url, 1))
            .into_iter()
            .find(|j| j["input"] == "long.mp4" && j["stage"] == "editing")
    };
    let since = Instant::now();
    while running().is_none() {
        assert!(
            since.elapsed() < Duration::from_secs(60),
            "long job never ran"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let addr = std::fs::read_to_string(d.path("state/api.addr")).unwrap();
    let (_, body) = http(&addr, "GET", "/jobs", None, None);
    let id = json(&body)
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["input_path"].as_str().unwrap_or("").ends_with("long.mp4"))
        .map(|j| j["id"].clone())
        .expect("the daemon's job");
    let (code, body) = http(&addr, "DELETE", &format!("/jobs/{id}"), None, None);
    assert_eq!(code, 200, "{body}");
    let since = Instant::now();
    loop {
        let s = status(&nats.url, 1);
        let j = jobs(&s)
            .into_iter()
            .find(|j| j["input"] == "long.mp4")
            .unwrap();
        if j["state"] == "cancelled" && s["ack_pending"] == 0 {
            assert_eq!(j["outputs"], 0, "{j}");
            break;
        }
        assert!(
            since.elapsed() < Duration::from_secs(30),
            "not cancelled: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
