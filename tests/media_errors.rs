//! Inputs and outputs a user can get wrong: one readable line naming the file and the cause,
//! a non-zero exit, no backtrace, and nothing left behind.

use std::path::Path;

use crate::util::*;

fn transcode_err(d: &Dir, src: &Path) -> (i32, String) {
    let r = run_err(
        ctxd()
            .arg("transcode")
            .arg(src)
            .arg("-o")
            .arg(d.path("never.mp4")),
    );
    assert!(!d.path("never.mp4").exists(), "no output on failure");
    assert!(
        !d.listing().iter().any(|n| n.ends_with(".part")),
        "temporary file left: {:?}",
        d.listing()
    );
    r
}

fn assert_one_line(stderr: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {stderr}");
    assert!(lines[0].starts_with("ctxd: "), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

#[test]
fn missing_file() {
    let d = Dir::new();
    let (code, err) = transcode_err(&d, &d.path("nope.mp4"));
    assert_eq!(code, 1);
    assert_one_line(&err);
    assert!(
        err.contains("nope.mp4") && err.contains("no such file"),
        "{err}"
    );
}

#[test]
fn zero_byte_file() {
    let d = Dir::new();
    let p = d.path("empty.mp4");
    std::fs::write(&p, b"").unwrap();
    let (code, err) = transcode_err(&d, &p);
    assert_eq!(code, 1);
    assert_one_line(&err);
    assert!(
        err.contains("empty.mp4") && err.contains("empty file"),
        "{err}"
    );
}

#[test]
fn text_file_named_mp4() {
    let d = Dir::new();
    let p = d.path("notes.mp4");
    std::fs::write(&p, "these are my notes, not a video\n".repeat(50)).unwrap();
    let (code, err) = transcode_err(&d, &p);
    assert_eq!(code, 1);
    assert_one_line(&err);
    assert!(
        err.contains("notes.mp4") && err.contains("not a media file"),
        "{err}"
    );
    let (code, err) = run_err(ctxd().arg("probe").arg(&p));
    assert_eq!(code, 1);
    assert!(err.contains("not a media file"), "{err}");
}

#[test]
fn audio_only_has_no_video() {
    let d = Dir::new();
    let p = d.ffmpeg(
        "song.m4a",
        &strs(&args(&[&tone(1.0, 44100)], &["-c:a", "aac"])),
    );
    let (code, err) = transcode_err(&d, &p);
    assert_eq!(code, 1);
    assert_one_line(&err);
    assert!(
        err.contains("song.m4a") && err.contains("no video stream") && err.contains("aac"),
        "{err}"
    );
}

#[test]
fn truncated_mp4_says_where() {
    let d = Dir::new();
    // Index at the front, so the cut loses frames rather than the index.
    let full = d.ffmpeg(
        "full.mp4",
        &strs(&args(
            &[&pattern("320x240", "25", 4.0)],
            &["-c:v", "libx264", "-movflags", "+faststart"],
        )),
    );
    let bytes = std::fs::read(&full).unwrap();
    let cut = d.path("cut.mp4");
    std::fs::write(&cut, &bytes[..bytes.len() * 6 / 10]).unwrap();
    let (code, err) = transcode_err(&d, &cut);
    assert_eq!(code, 1);
    assert_one_line(&err);
    assert!(
        err.contains("cut.mp4")
            && err.contains("truncated")
            && err.contains("frame")
            && err.contains("t = "),
        "{err}"
    );

    // Index at the end: the cut loses the index, and the message says what that means.
    let tail = d.ffmpeg(
        "tail.mp4",
        &strs(&args(
            &[&pattern("320x240", "25", 2.0)],
            &["-c:v", "libx264"],
        )),
    );
    let bytes = std::fs::read(&tail).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let (_, err) = transcode_err(&d, &cut);
    assert!(err.contains("truncated or still being written"), "{err}");
}

#[test]
fn truncated_mkv_says_where() {
    let d = Dir::new();
    let full = d.ffmpeg(
        "full.mkv",
        &strs(&args(
            &[&pattern("320x240", "25", 4.0)],
            &["-c:v", "libx264"],
        )),
    );
    let bytes = std::fs::read(&full).unwrap();
    let cut = d.path("cut.mkv");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let (code, err) = transcode_err(&d, &cut);
    assert_eq!(code, 1);
    assert_one_line(&err);
    assert!(
        err.contains("cut.mkv") && err.contains("truncated"),
        "{err}"
    );
}

#[test]
fn unwritable_destination() {
    let d = Dir::new();
    let src = d.ffmpeg(
        "ok.mp4",
        &strs(&args(
            &[&pattern("160x120", "25", 0.5)],
            &["-c:v", "libx264"],
        )),
    );
    let (code, err) = run_err(
        ctxd()
            .arg("transcode")
            .arg(&src)
            .arg("-o")
            .arg(d.path("no/such/folder/out.mp4")),
    );
    assert_eq!(code, 1);
    assert_one_line(&err);
    assert!(
        err.contains("out.mp4") && err.contains("does not exist"),
        "{err}"
    );
    // /proc refuses new files even to root.
    let (code, err) = run_err(
        ctxd()
            .arg("transcode")
            .arg(&src)
            .arg("-o")
            .arg("/proc/ctxd-out.mp4"),
    );
    assert_eq!(code, 1);
    assert!(err.contains("cannot write output"), "{err}");
}

#[test]
fn bad_settings_are_usage_errors() {
    let d = Dir::new();
    let src = d.ffmpeg(
        "ok.mp4",
        &strs(&args(
            &[&pattern("160x120", "25", 0.5)],
            &["-c:v", "libx264"],
        )),
    );
    let (code, err) = run_err(
        ctxd()
            .arg("transcode")
            .arg(&src)
            .arg("-o")
            .arg(d.path("o.mp4"))
            .args(["--codec", "nosuchcodec"]),
    );
    assert_eq!(code, 2);
    assert!(err.contains("nosuchcodec"), "{err}");
    let (code, err) = run_err(
        ctxd()
            .arg("transcode")
            .arg(&src)
            .arg("-o")
            .arg(d.path("o.webm"))
            .args(["--codec", "h264"]),
    );
    assert_eq!(code, 2);
    assert!(err.contains("webm") && err.contains("cannot hold"), "{err}");
    let (code, err) = run_err(
        ctxd()
            .arg("transcode")
            .arg(&src)
            .arg("-o")
            .arg(d.path("o.mp4"))
            .args(["--pix-fmt", "yuv9000"]),
    );
    assert_eq!(code, 2);
    assert!(err.contains("yuv9000"), "{err}");
    assert_eq!(d.listing(), vec!["ok.mp4"]);
}

#[test]
fn ctrl_c_leaves_no_output() {
    let d = Dir::new();
    let src = d.ffmpeg(
        "long.mp4",
        &strs(&args(
            &[&pattern("640x360", "30", 30.0)],
            &["-c:v", "libx264", "-preset", "ultrafast"],
        )),
    );
    let out = d.path("cancelled.mp4");
    let child = ctxd()
        .arg("transcode")
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .args(["--encoder-preset", "veryslow"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the work has started (the temporary file exists), then interrupt.
    let started = std::time::Instant::now();
    while !d.listing().iter().any(|n| n.ends_with(".part")) {
        assert!(started.elapsed().as_secs() < 60, "transcode never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("cancelled"), "{err}");
    assert!(!out.exists());
    assert_eq!(d.listing(), vec!["long.mp4"], "nothing half-written left");
}

#[test]
fn mp4_on_stdin_needs_its_index_in_front() {
    let d = Dir::new();
    // Big enough that FFmpeg's read buffer cannot hide the missing seek.
    let src = d.ffmpeg(
        "tail.mp4",
        &strs(&args(
            &[&pattern("640x360", "25", 5.0)],
            &["-c:v", "libx264"],
        )),
    );
    let out = ctxd()
        .args(["transcode", "-", "-o"])
        .arg(d.path("o.mp4"))
        .stdin(std::fs::File::open(&src).unwrap())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("<stdin>") && err.contains("faststart"),
        "{err}"
    );
}

#[test]
fn a_frame_over_the_size_limit_is_refused_before_decoding() {
    // Regression: no frame-size cap, so a small file could declare frames of gigabytes.
    let d = Dir::new();
    let p = d.ffmpeg(
        "wide.nut",
        &[
            "-f",
            "lavfi",
            "-i",
            "color=c=gray:size=16400x16:duration=0.04:rate=25",
            "-c:v",
            "ffv1",
        ],
    );
    let (code, err) = transcode_err(&d, &p);
    assert_eq!(code, 1);
    assert_one_line(&err);
    assert!(
        err.contains("wide.nut: frame size 16400x16 is over ctxd's limit"),
        "{err}"
    );
}

/// A stream copy from 1.3 s keeps the packets from the keyframe at 0 behind an edit list; the
/// decoder drops the frames before 1.3 s on purpose. That is the whole file, not a cut (it was
/// refused as "truncated" when decoded frames were checked against the packet count).
#[test]
fn an_edit_list_that_starts_late_is_not_a_cut() {
    let d = Dir::new();
    let full = d.ffmpeg(
        "full.mp4",
        &strs(&args(
            &[&pattern("160x120", "30", 4.0)],
            &["-c:v", "libx264", "-preset", "ultrafast", "-g", "300"],
        )),
    );
    let late = d.ffmpeg(
        "late.mp4",
        &["-ss", "1.3", "-i", full.to_str().unwrap(), "-c", "copy"],
    );
    let listed = ffprobe(&late)["streams"][0]["nb_frames"]
        .as_str()
        .unwrap()
        .parse::<usize>()
        .unwrap();
    let out = d.path("out.mp4");
    run_ok(ctxd().arg("transcode").arg(&late).arg("-o").arg(&out));
    let shown = frame_times(&out).len();
    assert!(
        shown < listed,
        "the edit list hides frames: {shown} of {listed}"
    );
    assert!(
        (75..=85).contains(&shown),
        "{shown} frames from 1.3 s to 4 s at 30 fps"
    );
}

/// A faststart MP4 cut inside its last audio: the video is whole, the audio is not, and the
/// index says so. Refused as truncated, not edited with the audio silently short.
#[test]
fn a_file_cut_inside_its_last_packets_is_refused() {
    let d = Dir::new();
    let whole = d.ffmpeg(
        "whole.mp4",
        &strs(&args(
            &[&pattern("64x48", "10", 2.0), &tone(2.0, 44100)],
            &[
                "-c:v",
                "libx264",
                "-c:a",
                "aac",
                "-shortest",
                "-movflags",
                "+faststart",
            ],
        )),
    );
    let bytes = std::fs::read(&whole).unwrap();
    let cut = d.path("cut.mp4");
    std::fs::write(&cut, &bytes[..bytes.len() * 9 / 10]).unwrap();
    let (code, err) = transcode_err(&d, &cut);
    assert_eq!(code, 1, "{err}");
    assert_one_line(&err);
    assert!(
        err.contains("cut.mp4") && err.contains("truncated"),
        "{err}"
    );
}
