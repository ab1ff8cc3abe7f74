//! `ctxd watch` with a live stream: a dead source restarts, prompts come from the API.

use std::path::Path;

use super::*;

/// Sends `clip` to `url` in real time with the ffmpeg CLI, `loops` extra times.
fn serve_udp(clip: &Path, url: &str, loops: u32) -> std::process::ExitStatus {
    std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-re", "-stream_loop"])
        .arg(loops.to_string())
        .arg("-i")
        .arg(clip)
        .args(["-c", "copy", "-f", "mpegts"])
        .arg(format!("{url}?pkt_size=1316"))
        .status()
        .unwrap()
}

#[test]
fn a_daemon_stream_restarts_after_its_source_dies_and_takes_prompts_from_the_api() {
    let port = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let url = format!("udp://127.0.0.1:{port}");
    // The stream's table follows the mapping's keys: `[[stream]]` ends the mapping table.
    let d = Daemon::with(
        0.3,
        0.3,
        "",
        &format!(
            "[[stream]]\nname = \"live\"\ninput = \"{url}\"\noutput = \"hls/\"\n\
             prompt = \"a red video\"\nsource = \"gray\"\nbundle = \"{}\"\nsteps = 4\n\
             window = 4\nshort_side = 0\nstall_timeout = 2\nreconnect = 0\nlag = \"wait\"\n",
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("models/oracle")
                .display()
        ),
    );
    let clip = d.dir.ffmpeg(
        "src.ts",
        &strs(&args(
            &[&[
                "-f".into(),
                "lavfi".into(),
                "-i".into(),
                "color=c=0x808080:size=64x48:rate=10:duration=2".into(),
            ]],
            &["-c:v", "libx264", "-g", "10", "-f", "mpegts"],
        )),
    );
    let running = d.start();
    let addr = d.api();
    let view = || json(&http(&addr, "GET", "/streams/live", None, None).1);
    assert_eq!(http(&addr, "GET", "/streams/nosuch", None, None).0, 404);

    // The source plays, then dies: the stream ends (stall) and is started again.
    assert!(serve_udp(&clip, &url, 2).success());
    wait_for("frames from the first run", || {
        view()["frames_total"].as_u64().unwrap_or(0) > 0
    });
    wait_for("a restart", || {
        view()["restarts"].as_u64().unwrap_or(0) >= 1
    });
    assert!(d.path("hls/index.m3u8").exists(), "HLS written");

    // Prompts through the API: checked as a prompt file is.
    let (code, body) = http(
        &addr,
        "PATCH",
        "/streams/live",
        None,
        Some(r#"{"prompt": ""}"#),
    );
    assert_eq!(code, 400, "{body}");
    let (code, body) = http(
        &addr,
        "PATCH",
        "/streams/live",
        None,
        Some(r#"{"prompt": "a blue video", "guidance": 99}"#),
    );
    assert_eq!(code, 400, "guidance out of range: {body}");
    let (code, body) = http(
        &addr,
        "PATCH",
        "/streams/live",
        None,
        Some(r#"{"prompt": "a blue video"}"#),
    );
    assert_eq!(code, 202, "{body}");
    assert_eq!(json(&body)["accepted"]["prompt"], "a blue video");

    // The source comes back: the restarted stream edits it with the pushed prompt.
    let before = view()["frames_total"].as_u64().unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = std::thread::spawn({
        let (clip, url, done) = (clip.clone(), url.clone(), done.clone());
        move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                serve_udp(&clip, &url, 0);
            }
        }
    });
    wait_for("the pushed prompt in force", || {
        let v = view();
        v["prompt"]["prompt"] == "a blue video" && v["frames_total"].as_u64().unwrap_or(0) > before
    });
    let metrics = http(&addr, "GET", "/metrics", None, None).1;
    assert!(
        metrics.contains("ctxd_stream_restarts_total{stream=\"live\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("ctxd_stream_frames_total{stream=\"live\"}"));
    // Dropped windows and their frames, counted over every run of the stream.
    assert!(
        metrics.contains("ctxd_stream_dropped_frames_total{stream=\"live\"} "),
        "{metrics}"
    );
    let list = json(&http(&addr, "GET", "/streams", None, None).1);
    assert_eq!(list[0]["name"], "live");
    assert!(list[0]["dropped_frames_total"].is_u64(), "{list}");
    assert!(
        list[0]["dropped_frames_total"].as_u64() >= list[0]["dropped_windows_total"].as_u64(),
        "{list}"
    );
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    stop(running);
    sender.join().unwrap();
}
