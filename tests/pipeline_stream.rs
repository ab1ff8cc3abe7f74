//! `ctxd stream` end to end: real processes, real pipes, loopback only.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util::*;

/// A gray clip as MPEG-TS (streamable), with a tone when asked.
fn gray_ts(d: &Dir, name: &str, seconds: f64, with_audio: bool) -> PathBuf {
    let mut a = vec![
        "-f".to_string(),
        "lavfi".into(),
        "-i".into(),
        format!("color=c=0x808080:size=64x48:rate=10:duration={seconds}"),
    ];
    if with_audio {
        a.extend(tone(seconds, 48000));
    }
    let mut tail = vec!["-c:v", "libx264", "-pix_fmt", "yuv444p", "-g", "10"];
    if with_audio {
        tail.extend(["-c:a", "aac", "-shortest"]);
    }
    tail.extend(["-f", "mpegts"]);
    d.ffmpeg(name, &strs(&args(&[&a], &tail)))
}

fn stream_cmd(input: &str, output: &str) -> std::process::Command {
    stream_steps(input, output, 4)
}

fn stream_steps(input: &str, output: &str, steps: u32) -> std::process::Command {
    let mut c = ctxd();
    c.args(["stream", "-i", input, "-o", output])
        .args(["--bundle", "models/oracle", "--steps", &steps.to_string()])
        .args(["--window", "4", "--short-side", "0"]);
    c
}

/// Mean RGB of each frame of `path`.
fn frame_means(path: &Path) -> Vec<[f64; 3]> {
    let (w, h, rgb) = rgb_frames(path);
    let n = (w * h) as usize;
    rgb.chunks_exact(n * 3)
        .map(|f| {
            let mut m = [0.0; 3];
            for p in f.chunks_exact(3) {
                for c in 0..3 {
                    m[c] += p[c] as f64;
                }
            }
            m.map(|s| s / n as f64)
        })
        .collect()
}

#[derive(Debug, PartialEq, Clone, Copy)]
enum Tint {
    Red,
    Blue,
    Between,
    Other,
}

fn tint(m: [f64; 3]) -> Tint {
    let [r, g, b] = m;
    if r > g + 20.0 && r > b + 20.0 {
        Tint::Red
    } else if b > g + 20.0 && b > r + 20.0 {
        Tint::Blue
    } else if r > g + 10.0 && b > g + 10.0 {
        // Halfway between red and blue: magenta.
        Tint::Between
    } else {
        Tint::Other
    }
}

/// Reads a child's stdout into a shared buffer on a thread.
fn drain(child: &mut Child) -> (Arc<Mutex<Vec<u8>>>, std::thread::JoinHandle<()>) {
    read_into(child.stdout.take().unwrap())
}

fn drain_stderr(child: &mut Child) -> (Arc<Mutex<Vec<u8>>>, std::thread::JoinHandle<()>) {
    read_into(child.stderr.take().unwrap())
}

fn read_into(
    mut out: impl Read + Send + 'static,
) -> (Arc<Mutex<Vec<u8>>>, std::thread::JoinHandle<()>) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b = buf.clone();
    let h = std::thread::spawn(move || {
        let mut chunk = [0u8; 65536];
        while let Ok(n) = out.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    (buf, h)
}

/// The JSON report `--report` wrote.
fn read_report(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Waits for `child` to exit; kills it and fails the test when it has not within `limit`.
fn exits_within(child: &mut std::process::Child, limit: Duration, what: &str) {
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > limit {
            let _ = child.kill();
            panic!("still running {limit:?} after {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn stdin_to_stdout_follows_a_prompt_change_with_no_blank_frame() {
    let d = Dir::new();
    let src = gray_ts(&d, "in.ts", 6.0, true);
    let bytes = std::fs::read(&src).unwrap();
    let prompt = d.path("prompt.txt");
    std::fs::write(&prompt, "source: a gray video\na red video\n").unwrap();
    let report = d.path("report.json");
    let mut child = stream_cmd("-", "-")
        .arg("--prompt-file")
        .arg(&prompt)
        .arg("--report")
        .arg(&report)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (out, reader) = drain(&mut child);
    let (err_buf, err_reader) = drain_stderr(&mut child);
    let mut stdin = child.stdin.take().unwrap();
    // A third, then wait until edited output comes back: the stream is live.
    let third = bytes.len() / 3 / 188 * 188;
    stdin.write_all(&bytes[..third]).unwrap();
    stdin.flush().unwrap();
    wait_for("the first edited frames", Duration::from_secs(120), || {
        out.lock().unwrap().len() > 4096
    });
    // An invalid change is refused when the next windows start (the red prompt stays)...
    std::fs::write(&prompt, "source: a gray video\na red video\na blue video\n").unwrap();
    // (A file written less than half a second ago may be half-saved: it is not judged yet.)
    std::thread::sleep(Duration::from_millis(700));
    stdin.write_all(&bytes[third..2 * third]).unwrap();
    stdin.flush().unwrap();
    let said = |what: &str| String::from_utf8_lossy(&err_buf.lock().unwrap()).contains(what);
    wait_for("the refusal", Duration::from_secs(120), || {
        said("prompt change refused")
    });
    // ...then a valid one.
    std::fs::write(&prompt, "source: a gray video\na blue video\n").unwrap();
    stdin.write_all(&bytes[2 * third..]).unwrap();
    drop(stdin);
    let status = child.wait().unwrap();
    reader.join().unwrap();
    err_reader.join().unwrap();
    let err = String::from_utf8_lossy(&err_buf.lock().unwrap()).into_owned();
    assert!(status.success(), "ctxd stream failed: {err}");

    let ts = d.path("out.ts");
    std::fs::write(&ts, &*out.lock().unwrap()).unwrap();
    let tints: Vec<Tint> = frame_means(&ts).into_iter().map(tint).collect();
    assert_eq!(tints.len(), 60, "every frame out: {tints:?}");
    // Red first, then at most one window (4 frames) between, then blue to the end; never a
    // frame that is neither (gray, black, blank), never red again after blue.
    let first_blue = tints.iter().position(|t| *t == Tint::Blue).expect("blue");
    let last_red = tints.iter().rposition(|t| *t == Tint::Red).expect("red");
    assert!(last_red < first_blue, "{tints:?}");
    assert!(
        first_blue - last_red - 1 <= 4,
        "transition too long: {tints:?}"
    );
    assert!(!tints.contains(&Tint::Other), "{tints:?}");
    assert!(
        tints[first_blue..].iter().all(|t| *t == Tint::Blue),
        "{tints:?}"
    );
    assert!(err.contains("prompt change refused"), "{err}");
    assert!(err.contains("prompt changed at window"), "{err}");

    let r = read_report(&report);
    assert_eq!(r["ended"], "eof");
    assert_eq!(r["frames"], 60);
    assert_eq!(r["prompt"]["changes"], 1);
    assert!(r["prompt"]["refused"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(r["prompt"]["prompt"], "a blue video");
    // Audio passes through, in step with the video.
    let p = ffprobe(&ts);
    let audio = streams_of(&p, "audio");
    assert_eq!(audio.len(), 1, "audio kept");
    let times = frame_times(&ts);
    let src_times = frame_times(&src);
    assert_eq!(times.len(), src_times.len());
    for (a, b) in times.iter().zip(&src_times) {
        assert!((a - b).abs() < 1e-3, "timestamps kept: {a} vs {b}");
    }
}

#[test]
fn a_growing_file_is_followed_until_it_stalls() {
    let d = Dir::new();
    let src = gray_ts(&d, "whole.ts", 3.0, false);
    let bytes = std::fs::read(&src).unwrap();
    let growing = d.path("growing.ts");
    let half = bytes.len() / 2 / 188 * 188;
    std::fs::write(&growing, &bytes[..half]).unwrap();
    let out = d.path("out.mkv");
    let report = d.path("r.json");
    let child = stream_cmd(growing.to_str().unwrap(), out.to_str().unwrap())
        .args(["--prompt", "a red video", "--source", "gray"])
        .args(["--follow", "--stall-timeout", "2"])
        .arg("--report")
        .arg(&report)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    std::fs::OpenOptions::new()
        .append(true)
        .open(&growing)
        .unwrap()
        .write_all(&bytes[half..])
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("ending the stream"), "{err}");
    let r = read_report(&report);
    assert_eq!(r["ended"], "input-stalled");
    assert_eq!(r["frames"], 30, "{r}");
    assert_eq!(frame_times(&out).len(), 30);
}

#[test]
fn sigint_finishes_the_window_in_flight_and_closes_the_output() {
    let d = Dir::new();
    let src = gray_ts(&d, "in.ts", 4.0, false);
    let out = d.path("hls");
    let mut child = stream_cmd("-", &format!("{}/", out.display()))
        .args(["--prompt", "a red video", "--source", "gray"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // Input that never ends: the file, then nothing, with stdin held open.
    stdin.write_all(&std::fs::read(&src).unwrap()).unwrap();
    let playlist = out.join("index.m3u8");
    wait_for("the HLS playlist", Duration::from_secs(120), || {
        playlist.exists()
    });
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    // stdin stays open and silent: one signal must stop the stream anyway (a blocking read
    // of the pipe used to hold it until the writer closed it).
    exits_within(
        &mut child,
        Duration::from_secs(60),
        "one SIGINT with stdin held open",
    );
    drop(stdin);
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let text = std::fs::read_to_string(&playlist).unwrap();
    assert!(text.contains("#EXT-X-ENDLIST"), "closed properly: {text}");
    assert!(text.contains("segment_"), "{text}");
}

#[test]
fn a_reader_that_goes_away_stops_the_stream_cleanly() {
    let d = Dir::new();
    // Busy content at a lossless quality: far more output than a pipe's buffer holds.
    let src = d.ffmpeg(
        "busy.ts",
        &strs(&args(&[&pattern("160x120", "10", 10.0)], &["-f", "mpegts"])),
    );
    let mut child = stream_cmd(src.to_str().unwrap(), "-")
        .args(["--prompt", "a red video", "--source", "gray", "--crf", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 188];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("went away"), "{err}");
}

#[test]
fn a_udp_source_is_read_and_errors_name_the_cause() {
    let d = Dir::new();
    // A prompt file with two edits cannot drive one stream.
    let two = d.path("two.txt");
    std::fs::write(&two, "source: gray\nred\nblue\n").unwrap();
    let (code, err) = run_err(stream_cmd("-", "-").arg("--prompt-file").arg(&two));
    assert_eq!(code, 2);
    assert!(err.contains("one output"), "{err}");

    let src = gray_ts(&d, "in.ts", 3.0, false);
    let port = udp_port();
    let out = d.path("udp.mkv");
    let reader = stream_cmd(&format!("udp://127.0.0.1:{port}"), out.to_str().unwrap())
        .args(["--prompt", "a blue video", "--source", "gray"])
        .args(["--stall-timeout", "5", "--reconnect", "0", "--lag", "wait"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // ffmpeg serves the clip in real time on loopback.
    send_udp(&src, port);
    let o = reader.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let n = frame_times(&out).len();
    // UDP on loopback may lose the first packets before the reader joins a keyframe.
    assert!((20..=30).contains(&n), "{n} frames: {err}");
    let blue = frame_means(&out).into_iter().all(|m| tint(m) == Tint::Blue);
    assert!(blue, "every frame edited");
}

/// In both pipelining modes: one window at a time (`off`), a window dropped for lateness
/// must hand its turn through the networks back, or the stream would stall.
#[test]
fn a_live_source_faster_than_editing_drops_windows_and_says_so() {
    let d = Dir::new();
    let src = d.ffmpeg(
        "big.ts",
        &strs(&args(
            &[&pattern("320x240", "20", 3.0)],
            &["-g", "20", "-f", "mpegts"],
        )),
    );
    for mode in ["on", "off"] {
        let report = d.path(&format!("r-{mode}.json"));
        let out = d.path(&format!("out-{mode}.ts"));
        let mut child = stream_steps(src.to_str().unwrap(), out.to_str().unwrap(), 40)
            .args(["--prompt", "a red video", "--source", "gray"])
            .args(["--realtime", "--lag", "drop", "--max-delay", "0.5"])
            .args(["--pipelining", mode])
            .arg("--report")
            .arg(&report)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (stderr, reader) = drain_stderr(&mut child);
        // A lost turn stalls the stream for ever (it would not even stop on SIGTERM): fail
        // instead of hanging the test run. The 3-s input takes a few seconds.
        let t = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if t.elapsed() > Duration::from_secs(120) {
                let _ = child.kill();
                panic!("{mode}: the stream stalled");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        reader.join().unwrap();
        let err = String::from_utf8_lossy(&stderr.lock().unwrap()).into_owned();
        assert!(status.success(), "{mode}: {err}");
        let r = read_report(&report);
        assert_eq!(r["pipelined"], mode == "on", "{r}");
        dropped_windows_are_counted_and_the_rest_written(&r, &err, &out);
    }
}

fn dropped_windows_are_counted_and_the_rest_written(r: &serde_json::Value, err: &str, out: &Path) {
    let dropped = r["dropped_windows"].as_u64().unwrap();
    let frames = r["frames"].as_u64().unwrap();
    assert!(
        dropped > 0,
        "editing 320x240 at 40 steps keeps up with 20 fps? {r}"
    );
    // Windows of 4 new frames after a first one of 5 (it has no anchor frame) and a last one
    // of 3: the dropped frames are counted, not inferred from the window size.
    let dropped_frames = r["dropped_frames"].as_u64().unwrap();
    assert!((3 * dropped..=5 * dropped).contains(&dropped_frames), "{r}");
    assert_eq!(
        frames + dropped_frames,
        60,
        "every window written or dropped: {r}"
    );
    assert!(err.contains("dropped"), "{err}");
    assert_eq!(frame_times(out).len() as u64, frames);
}

fn udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}

/// Sends `clip` to a UDP port on loopback in real time with the ffmpeg CLI.
fn send_udp(clip: &Path, port: u16) {
    let ok = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-re", "-i"])
        .arg(clip)
        .args(["-c", "copy", "-f", "mpegts"])
        .arg(format!("udp://127.0.0.1:{port}?pkt_size=1316"))
        .status()
        .unwrap();
    assert!(ok.success());
}

fn free_port() -> u16 {
    let s = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}

#[test]
fn an_http_source_served_by_ffmpeg_is_edited() {
    let d = Dir::new();
    let src = gray_ts(&d, "in.ts", 3.0, true);
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/live.ts");
    let mut server = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-re", "-i"])
        .arg(&src)
        .args(["-c", "copy", "-f", "mpegts", "-listen", "1"])
        .arg(&url)
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let out = d.path("out.mkv");
    let o = stream_cmd(&url, out.to_str().unwrap())
        .args([
            "--prompt",
            "a blue video",
            "--source",
            "gray",
            "--reconnect",
            "0",
        ])
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(frame_times(&out).len(), 30, "{err}");
    assert_eq!(streams_of(&ffprobe(&out), "audio").len(), 1);
}

#[test]
fn a_udp_source_that_pauses_is_reconnected_and_its_timeline_continues() {
    let d = Dir::new();
    let src = gray_ts(&d, "in.ts", 2.0, false);
    let port = udp_port();
    let out = d.path("out.mkv");
    let report = d.path("r.json");
    let reader = stream_cmd(&format!("udp://127.0.0.1:{port}"), out.to_str().unwrap())
        .args(["--prompt", "a blue video", "--source", "gray"])
        .args([
            "--stall-timeout",
            "1.5",
            "--reconnect",
            "1",
            "--lag",
            "wait",
        ])
        .arg("--report")
        .arg(&report)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    send_udp(&src, port);
    // The source goes quiet long enough to stall, then comes back once; then the stream is
    // stopped (a URL stream runs until stopped, or until its source is gone for good).
    std::thread::sleep(Duration::from_millis(2500));
    send_udp(&src, port);
    std::thread::sleep(Duration::from_millis(3000));
    unsafe { libc::kill(reader.id() as i32, libc::SIGINT) };
    let o = reader.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let r = read_report(&report);
    assert!(r["reconnects"].as_u64().unwrap() >= 1, "{r}\n{err}");
    let times = frame_times(&out);
    // Each play is 20 frames; UDP may lose the start of a play before a keyframe.
    assert!(
        times.len() > 20,
        "both plays edited: {} frames\n{err}",
        times.len()
    );
    assert!(
        times.windows(2).all(|w| w[1] > w[0]),
        "the timeline continues across the reconnect: {times:?}"
    );
}

#[test]
fn named_pipes_in_and_out() {
    let d = Dir::new();
    let src = gray_ts(&d, "in.ts", 2.0, false);
    let (fifo_in, fifo_out) = (d.path("in.fifo"), d.path("out.fifo"));
    for f in [&fifo_in, &fifo_out] {
        let c = std::ffi::CString::new(f.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }
    let child = stream_cmd(fifo_in.to_str().unwrap(), fifo_out.to_str().unwrap())
        .args(["--prompt", "a red video", "--source", "gray"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader of the output pipe, as another program would be.
    let reader = std::thread::spawn({
        let fifo_out = fifo_out.clone();
        move || {
            let mut bytes = Vec::new();
            std::fs::File::open(&fifo_out)
                .unwrap()
                .read_to_end(&mut bytes)
                .unwrap();
            bytes
        }
    });
    std::fs::OpenOptions::new()
        .write(true)
        .open(&fifo_in)
        .unwrap()
        .write_all(&std::fs::read(&src).unwrap())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let out = d.path("out.ts");
    std::fs::write(&out, reader.join().unwrap()).unwrap();
    assert_eq!(frame_times(&out).len(), 20, "{err}");
}

/// A named pipe whose writer holds it open and goes silent: one SIGTERM stops the stream
/// (the window in flight finished, the output closed), and without a signal the stall
/// timeout ends it, as for any other input.
#[test]
fn a_silent_named_pipe_stops_on_one_signal_and_stalls_out() {
    let d = Dir::new();
    let src = std::fs::read(gray_ts(&d, "in.ts", 2.0, false)).unwrap();
    for (case, signal) in [("term", true), ("stall", false)] {
        let fifo = d.path(&format!("{case}.fifo"));
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let (out, report) = (
            d.path(&format!("{case}.mkv")),
            d.path(&format!("{case}.json")),
        );
        let mut child = stream_cmd(fifo.to_str().unwrap(), out.to_str().unwrap())
            .args(["--prompt", "a red video", "--source", "gray"])
            .args(["--stall-timeout", "4", "--report"])
            .arg(&report)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        writer.write_all(&src).unwrap();
        if signal {
            // Well inside the stall timeout once the 20 frames are read.
            std::thread::sleep(Duration::from_secs(2));
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        exits_within(&mut child, Duration::from_secs(60), case);
        drop(writer);
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{case}: {err}");
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        let ended = if signal { "stopped" } else { "input-stalled" };
        assert_eq!(r["ended"], ended, "{case}: {err}");
        assert_eq!(
            frame_times(&out).len() as u64,
            r["frames"].as_u64().unwrap()
        );
        assert!(r["frames"].as_u64().unwrap() > 0, "{case}: {err}");
    }
    // A writer that opens the pipe and never writes: the stall timeout ends the wait with
    // one line saying so, and no output is begun.
    let fifo = d.path("silent.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let out = d.path("silent.mkv");
    let mut child = stream_cmd(fifo.to_str().unwrap(), out.to_str().unwrap())
        .args(["--prompt", "a red video", "--source", "gray"])
        .args(["--stall-timeout", "2"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    exits_within(&mut child, Duration::from_secs(60), "a silent writer");
    drop(writer);
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("silent.fifo") && err.contains("--stall-timeout"),
        "{err}"
    );
    assert!(!out.exists(), "no output begun");
}

#[test]
fn a_damaged_stream_goes_on() {
    let d = Dir::new();
    let src = d.ffmpeg(
        "t.ts",
        &strs(&args(
            &[&pattern("160x120", "10", 4.0)],
            &["-g", "10", "-f", "mpegts"],
        )),
    );
    // Six packets of garbage a third of the way in.
    let mut bytes = std::fs::read(&src).unwrap();
    let at = bytes.len() / 3;
    for (i, b) in bytes[at..at + 188 * 6].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(37).wrapping_add(11);
    }
    let bad = d.path("bad.ts");
    std::fs::write(&bad, &bytes).unwrap();
    let out = d.path("out.mkv");
    let report = d.path("r.json");
    let o = stream_cmd(bad.to_str().unwrap(), out.to_str().unwrap())
        .args(["--prompt", "a red video", "--source", "gray"])
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let r = read_report(&report);
    let frames = r["frames"].as_u64().unwrap();
    assert!(
        (30..=40).contains(&frames),
        "the frames around the damage kept: {r}"
    );
    assert_eq!(frame_times(&out).len() as u64, frames);
}
