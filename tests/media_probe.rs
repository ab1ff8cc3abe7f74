//! `ctxd probe` against what ffprobe says and what the fixtures were made with.

use crate::util::*;

#[test]
fn probe_reports_streams_rates_and_counts() {
    let d = Dir::new();
    let src = d.ffmpeg(
        "p.mkv",
        &strs(&args(
            &[&pattern("320x240", "30000/1001", 2.0), &tone(2.0, 48000)],
            &[
                "-c:v",
                "libx264",
                "-pix_fmt",
                "yuv420p10le",
                "-c:a",
                "libopus",
                "-ac",
                "2",
                "-metadata:s:a:0",
                "language=deu",
            ],
        )),
    );
    let p = probe(&src);
    assert_eq!(p["container"], "matroska,webm");
    let v = &p["video"];
    assert_eq!(v["codec"], "h264");
    assert_eq!(
        (v["coded_width"].as_u64(), v["coded_height"].as_u64()),
        (Some(320), Some(240))
    );
    assert_eq!(v["pix_fmt"], "yuv420p10le");
    assert_eq!(v["bit_depth"], 10);
    assert_eq!(v["frame_rate"]["num"], 30000);
    assert_eq!(v["frame_rate"]["den"], 1001);
    assert_eq!(v["frame_count"], 60);
    assert_eq!(v["frame_count_exact"], true);
    assert_eq!(v["vfr"], false);
    assert_eq!(v["rotation"], 0);
    let a = &p["audio"][0];
    assert_eq!(a["codec"], "opus");
    assert_eq!(a["channels"], 2);
    assert_eq!(a["sample_rate"], 48000);
    assert_eq!(a["language"], "deu");
    let dur = p["duration"].as_f64().unwrap();
    assert!((dur - 2.0).abs() < 0.05, "duration {dur}");
}

#[test]
fn fast_probe_reads_only_the_header() {
    let d = Dir::new();
    let src = d.ffmpeg(
        "f.mkv",
        &strs(&args(
            &[&pattern("160x120", "25", 1.0)],
            &["-c:v", "libx264"],
        )),
    );
    let out = run_ok(ctxd().args(["probe", "--fast"]).arg(&src));
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Matroska has no frame count in its header.
    assert_eq!(p["video"]["frame_count_exact"], false);
    assert!(p["video"]["frame_count"].is_null());
}

#[test]
fn real_clips_match_ffprobe() {
    let d = Dir::new();
    for name in ["car-turn.mp4", "man-surfing.mp4"] {
        let path = real_clip(&d, name);
        let p = probe(&path);
        let f = ffprobe(&path);
        let v = &streams_of(&f, "video")[0];
        assert_eq!(p["video"]["coded_width"], v["width"]);
        assert_eq!(p["video"]["coded_height"], v["height"]);
        assert_eq!(
            p["video"]["frame_count"].as_u64().unwrap().to_string(),
            v["nb_read_packets"].as_str().unwrap()
        );
        assert_eq!(
            p["audio"].as_array().unwrap().len(),
            streams_of(&f, "audio").len()
        );
    }
}
