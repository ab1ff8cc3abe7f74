//! Decode → encode round trips through `ctxd transcode`: frame count, timestamps, frame rate,
//! duration, audio and content (PSNR) must survive, checked with ffprobe and ffmpeg's own
//! decoder rather than with ctxd's.

use std::path::Path;

use crate::util::*;

/// Audio the output must have for each source track: the same codec, or the documented
/// re-encode for containers that cannot hold it.
fn expected_audio_codec(src_codec: &str, out: &Path) -> String {
    let ext = out.extension().unwrap().to_str().unwrap();
    match (ext, src_codec) {
        ("webm", "opus" | "vorbis") => src_codec.into(),
        ("webm", _) => "opus".into(),
        ("mp4" | "mov", "aac" | "mp3" | "ac3" | "eac3" | "alac") => src_codec.into(),
        ("mp4", "flac") => "flac".into(),
        ("mp4" | "mov", _) => "aac".into(),
        _ => src_codec.into(),
    }
}

/// Transcodes `src` to `out` with `extra` flags and checks every guarantee of the media layer.
fn round_trip(src: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let output = run_ok(
        ctxd()
            .arg("transcode")
            .arg(src)
            .arg("-o")
            .arg(out)
            .arg("--json")
            .args(extra),
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();

    let a = ffprobe(src);
    let b = ffprobe(out);
    let (va, vb) = (&streams_of(&a, "video")[0], &streams_of(&b, "video")[0]);

    // Every frame, at the same time.
    let ta = frame_times(src);
    let tb = frame_times(out);
    assert_eq!(ta.len(), tb.len(), "frame count changed");
    assert_eq!(
        va["nb_read_packets"], vb["nb_read_packets"],
        "packet count changed"
    );
    // Matroska/WebM store milliseconds; others keep the source's ticks.
    let tol = if ["mkv", "webm"].contains(&out.extension().unwrap().to_str().unwrap()) {
        0.0011
    } else {
        1e-4
    };
    for (i, (x, y)) in ta.iter().zip(&tb).enumerate() {
        assert!(
            (x - y).abs() <= tol,
            "frame {i}: source t = {x}, output t = {y}"
        );
    }

    // Frame rate and duration.
    let fps_a = ratio(&va["avg_frame_rate"]);
    let fps_b = ratio(&vb["avg_frame_rate"]);
    assert!(
        (fps_a - fps_b).abs() <= 0.002 * fps_a.max(1.0),
        "frame rate {fps_a} became {fps_b}"
    );
    let one_frame = 1.0 / fps_a.max(1.0);
    let dur = |v: &serde_json::Value| {
        v["format"]["duration"]
            .as_str()
            .unwrap()
            .parse::<f64>()
            .unwrap()
    };
    assert!(
        (dur(&a) - dur(&b)).abs() <= one_frame + 1e-3,
        "duration {} became {}",
        dur(&a),
        dur(&b)
    );

    // Audio: same number of tracks, copied or re-encoded as documented.
    let (aa, ab) = (streams_of(&a, "audio"), streams_of(&b, "audio"));
    assert_eq!(aa.len(), ab.len(), "audio track count changed");
    for (x, y) in aa.iter().zip(&ab) {
        let want = expected_audio_codec(x["codec_name"].as_str().unwrap(), out);
        assert_eq!(y["codec_name"].as_str().unwrap(), want);
        // No tag and "und" (undetermined) mean the same; containers differ in which they write.
        let lang =
            |v: &serde_json::Value| v["tags"]["language"].as_str().unwrap_or("und").to_string();
        assert_eq!(lang(x), lang(y), "audio language tag lost");
        let ad: f64 = x["duration"]
            .as_str()
            .map(|d| d.parse().unwrap())
            .unwrap_or(dur(&a));
        let bd: f64 = y["duration"]
            .as_str()
            .map(|d| d.parse().unwrap())
            .unwrap_or(dur(&b));
        assert!((ad - bd).abs() < 0.05, "audio duration {ad} became {bd}");
    }

    // Content, decoded by ffmpeg (auto-rotated), not by ctxd.
    let (wa, ha, pa) = rgb_frames(src);
    let (wb, hb, pb) = rgb_frames(out);
    assert_eq!((wa, ha), (wb, hb), "display size changed");
    let p = psnr(&pa, &pb);
    assert!(p >= 40.0, "PSNR {p:.2} dB < 40 dB");
    report
}

#[test]
fn mp4_with_aac_keeps_everything_and_tags() {
    let d = Dir::new();
    let src = d.ffmpeg(
        "src.mp4",
        &strs(&args(
            &[&pattern("320x240", "25", 2.0), &tone(2.0, 44100)],
            &[
                "-c:v",
                "libx264",
                "-pix_fmt",
                "yuv420p",
                "-c:a",
                "aac",
                "-metadata",
                "creation_time=2024-05-06T07:08:09Z",
                "-metadata",
                "title=beach day",
                "-metadata:s:a:0",
                "language=fra",
            ],
        )),
    );
    let out = d.path("out.mp4");
    let report = round_trip(&src, &out, &[]);
    assert_eq!(report["output"]["audio"][0]["action"], "copy");
    let b = ffprobe(&out);
    assert_eq!(
        b["format"]["tags"]["creation_time"],
        "2024-05-06T07:08:09.000000Z"
    );
    assert_eq!(b["format"]["tags"]["title"], "beach day");
    assert_eq!(
        d.listing(),
        vec!["out.mp4", "src.mp4"],
        "no temporary files left"
    );
}

#[test]
fn ntsc_rate_30000_1001() {
    let d = Dir::new();
    let src = d.ffmpeg(
        "ntsc.mp4",
        &strs(&args(
            &[&pattern("320x240", "30000/1001", 2.0)],
            &["-c:v", "libx264"],
        )),
    );
    round_trip(&src, &d.path("out.mp4"), &[]);
    let b = ffprobe(&d.path("out.mp4"));
    assert_eq!(streams_of(&b, "video")[0]["avg_frame_rate"], "30000/1001");
}

#[test]
fn variable_frame_rate_stays_variable() {
    let d = Dir::new();
    // 10 frames at 30 fps, then every third frame: gaps of 1/30 s and 1/10 s.
    let src = d.ffmpeg(
        "vfr.mp4",
        &strs(&args(
            &[&pattern("320x240", "30", 3.0)],
            &[
                "-vf",
                "select='lt(n\\,10)+not(mod(n\\,3))'",
                "-vsync",
                "vfr",
                "-c:v",
                "libx264",
            ],
        )),
    );
    assert_eq!(probe(&src)["video"]["vfr"], true);
    round_trip(&src, &d.path("out.mp4"), &[]);
    let p = probe(&d.path("out.mp4"));
    assert_eq!(p["video"]["vfr"], true);
}

#[test]
fn rotation_is_applied_and_display_size_kept() {
    let d = Dir::new();
    let plain = d.ffmpeg(
        "plain.mp4",
        &strs(&args(
            &[&pattern("320x240", "25", 1.0)],
            &["-c:v", "libx264"],
        )),
    );
    // ffmpeg 5.1 writes a display matrix from the rotate tag when stream-copying.
    let src = d.ffmpeg(
        "rot.mp4",
        &[
            "-i",
            plain.to_str().unwrap(),
            "-c",
            "copy",
            "-metadata:s:v:0",
            "rotate=90",
        ],
    );
    let p = probe(&src);
    assert_eq!(p["video"]["rotation"].as_u64().unwrap() % 180, 90);
    assert_eq!(
        (
            p["video"]["display_width"].as_u64(),
            p["video"]["display_height"].as_u64()
        ),
        (Some(240), Some(320))
    );
    // round_trip compares against ffmpeg's own auto-rotated decode of the source.
    round_trip(&src, &d.path("out.mp4"), &[]);
    let out = probe(&d.path("out.mp4"));
    assert_eq!(
        out["video"]["rotation"], 0,
        "the output is upright, not tagged"
    );
    assert_eq!(out["video"]["coded_width"], 240);
}

#[test]
fn odd_sizes() {
    let d = Dir::new();
    // 4:2:0 cannot hold odd sizes in H.264, so the 333x201 source is 4:4:4.
    let a = d.ffmpeg(
        "odd.mp4",
        &strs(&args(
            &[&pattern("320x240", "25", 1.0)],
            &[
                "-vf",
                "scale=333:201",
                "-c:v",
                "libx264",
                "-pix_fmt",
                "yuv444p",
            ],
        )),
    );
    round_trip(&a, &d.path("odd-out.mkv"), &[]);
    let b = d.ffmpeg(
        "sq.mp4",
        &strs(&args(
            &[&pattern("320x240", "25", 1.0)],
            &[
                "-vf",
                "scale=718:718",
                "-c:v",
                "libx264",
                "-pix_fmt",
                "yuv420p",
            ],
        )),
    );
    round_trip(&b, &d.path("sq-out.mp4"), &[]);
}

#[test]
fn ten_bit_stays_ten_bit() {
    let d = Dir::new();
    let src = d.ffmpeg(
        "ten.mkv",
        &strs(&args(
            &[&pattern("320x240", "25", 1.0)],
            &["-c:v", "libx264", "-pix_fmt", "yuv420p10le"],
        )),
    );
    round_trip(&src, &d.path("out.mp4"), &[]);
    assert_eq!(probe(&d.path("out.mp4"))["video"]["pix_fmt"], "yuv420p10le");
}

#[test]
fn mkv_with_opus_copies_and_mp4_reencodes() {
    let d = Dir::new();
    let src = d.ffmpeg(
        "op.mkv",
        &strs(&args(
            &[&pattern("320x240", "25", 2.0), &tone(2.0, 48000)],
            &["-c:v", "libx264", "-c:a", "libopus"],
        )),
    );
    let r = round_trip(&src, &d.path("same.mkv"), &[]);
    assert_eq!(r["output"]["audio"][0]["action"], "copy");
    let r = round_trip(&src, &d.path("to.mp4"), &[]);
    assert_eq!(r["output"]["audio"][0]["action"], "re-encode");
    assert_eq!(r["output"]["audio"][0]["output_codec"], "aac");
}

#[test]
fn webm_with_vp9() {
    let d = Dir::new();
    let src = d.ffmpeg(
        "w.webm",
        &strs(&args(
            &[&pattern("320x240", "25", 1.0), &tone(1.0, 48000)],
            &[
                "-c:v",
                "libvpx-vp9",
                "-deadline",
                "realtime",
                "-cpu-used",
                "8",
                "-c:a",
                "libopus",
            ],
        )),
    );
    let r = round_trip(
        &src,
        &d.path("out.webm"),
        &["--encoder-preset", "ultrafast", "--crf", "20"],
    );
    assert_eq!(r["output"]["encoder"], "libvpx-vp9");
    // AAC into webm is re-encoded to Opus.
    let aac = d.ffmpeg(
        "aac.mp4",
        &strs(&args(
            &[&pattern("320x240", "25", 1.0), &tone(1.0, 44100)],
            &["-c:v", "libx264", "-c:a", "aac"],
        )),
    );
    let r = round_trip(
        &aac,
        &d.path("aac.webm"),
        &["--encoder-preset", "ultrafast", "--crf", "20"],
    );
    assert_eq!(r["output"]["audio"][0]["output_codec"], "opus");
}

#[test]
fn no_audio_and_h265_output() {
    let d = Dir::new();
    let src = d.ffmpeg(
        "silent.mp4",
        &strs(&args(
            &[&pattern("320x240", "25", 1.0)],
            &["-c:v", "libx264"],
        )),
    );
    round_trip(&src, &d.path("out.mov"), &[]);
    let r = round_trip(
        &src,
        &d.path("out265.mp4"),
        &["--codec", "h265", "--encoder-preset", "fast", "--crf", "14"],
    );
    assert_eq!(r["output"]["video_codec"], "hevc");
}

#[test]
fn stdin_input() {
    let d = Dir::new();
    let src = d.ffmpeg(
        "s.mkv",
        &strs(&args(
            &[&pattern("320x240", "25", 1.0), &tone(1.0, 48000)],
            &["-c:v", "libx264", "-c:a", "libopus"],
        )),
    );
    let out = d.path("from-stdin.mp4");
    let status = ctxd()
        .args(["transcode", "-", "-o"])
        .arg(&out)
        .stdin(std::fs::File::open(&src).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(frame_times(&out).len(), 25);
    assert_eq!(streams_of(&ffprobe(&out), "audio").len(), 1);
    let p = run_ok(
        ctxd()
            .args(["probe", "-"])
            .stdin(std::fs::File::open(&src).unwrap()),
    );
    let p: serde_json::Value = serde_json::from_slice(&p.stdout).unwrap();
    assert_eq!(p["video"]["frame_count"], 25);
}

#[test]
fn shared_real_clips() {
    let d = Dir::new();
    for name in ["car-turn.mp4", "man-surfing.mp4"] {
        let src = real_clip(&d, name);
        // Default settings: the ones every edit uses.
        round_trip(&src, &d.path(&format!("rt-{name}")), &[]);
    }
}

/// The same input makes the same H.264 bytes whatever the heap held before. x264's
/// macroblock tree reads memory it allocated and never wrote (src/zeroed_memalign.rs);
/// glibc's MALLOC_PERTURB_ fills new allocations with a given byte, so without ctxd's zeroed
/// memalign each of these runs wrote a different file (3 distinct of 3 on this clip). In
/// Matroska too, whose muxer wrote a random segment UID into every file.
#[test]
fn h264_output_does_not_depend_on_what_the_heap_held() {
    let d = Dir::new();
    let src = d.ffmpeg(
        "s.mp4",
        &strs(&args(
            &[&pattern("320x240", "24", 2.0)],
            &["-pix_fmt", "yuv420p"],
        )),
    );
    for ext in ["mp4", "mkv"] {
        let runs: Vec<Vec<u8>> = ["1", "77", "200"]
            .iter()
            .map(|byte| {
                let out = d.path(&format!("out-{byte}.{ext}"));
                run_ok(
                    ctxd()
                        .env("MALLOC_PERTURB_", byte)
                        .args(["transcode"])
                        .arg(&src)
                        .arg("-o")
                        .arg(&out),
                );
                std::fs::read(&out).unwrap()
            })
            .collect();
        assert!(
            runs.iter().all(|r| r == &runs[0]),
            "the .{ext} file changed with MALLOC_PERTURB_"
        );
    }
}
