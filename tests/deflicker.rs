//! Output smoothing (`--deflicker`): shimmer evens out, a cut passes in one frame.

use crate::pipeline_edit::quick;
use crate::util::*;

/// Mean frame-to-frame change (levels) of frames of `size` bytes, from frame `from` on.
fn frame_change(all: &[u8], size: usize, from: usize) -> f64 {
    let frames: Vec<&[u8]> = all.chunks(size).collect();
    let pairs: Vec<f64> = frames[from..]
        .windows(2)
        .map(|w| mean_abs_diff(w[0], w[1]))
        .collect();
    pairs.iter().sum::<f64>() / pairs.len() as f64
}

#[test]
fn deflicker_evens_out_shimmer_and_lets_a_cut_through() {
    let d = Dir::new();
    // One second of gray with temporal noise (shimmer of a few levels), cut to white noise-free.
    let src = d.ffmpeg(
        "shimmer.mp4",
        &[
            "-f",
            "lavfi",
            "-i",
            "color=c=0x808080:size=64x64:rate=12:duration=1,noise=alls=10:allf=t",
            "-f",
            "lavfi",
            "-i",
            "color=c=white:size=64x64:rate=12:duration=1",
            "-filter_complex",
            "[0:v][1:v]concat=n=2:v=1[v]",
            "-map",
            "[v]",
            "-c:v",
            "libx264",
            "-crf",
            "0",
            "-pix_fmt",
            "yuv420p",
        ],
    );
    let edit = |name: &str, deflicker: &str| {
        let out = d.path(name);
        run_ok(
            quick(ctxd().arg("edit").arg(&src))
                .args([
                    "--source",
                    "gray",
                    "--prompt",
                    "gray",
                    "--deflicker",
                    deflicker,
                    "--output",
                ])
                .arg(&out),
        );
        out
    };
    let plain = edit("plain.mp4", "0");
    let smooth = edit("smooth.mp4", "20");
    assert_eq!(
        frame_times(&smooth),
        frame_times(&src),
        "every frame at its time"
    );
    let size = 64 * 64 * 3;
    let (_, _, p) = rgb_frames(&plain);
    let (_, _, s) = rgb_frames(&smooth);
    assert_eq!(p.len(), s.len());
    // The gray second: once the filter has a past, frame-to-frame change falls by half or more.
    let change = |all: &[u8]| frame_change(&all[..12 * size], size, 2);
    let (before, after) = (change(&p), change(&s));
    assert!(
        before > 1.5,
        "the source shimmers through the edit: {before}"
    );
    assert!(after < 0.5 * before, "shimmer {before:.2} -> {after:.2}");
    // The same picture on average (the oracle's reconstruction: the source's gray).
    let mean = |f: &[u8], c: usize| {
        f.iter().skip(c).step_by(3).map(|&v| v as f64).sum::<f64>() / (f.len() / 3) as f64
    };
    for c in 0..3 {
        let (a, b) = (mean(&p[..12 * size], c), mean(&s[..12 * size], c));
        assert!((a - b).abs() < 2.0, "channel {c}: {a:.1} vs {b:.1}");
    }
    // The cut passes in one frame: the first white frame is the unfiltered one, nearly.
    let first_white = 12 * size..13 * size;
    let gap = mean_abs_diff(&p[first_white.clone()], &s[first_white]);
    assert!(gap < 3.0, "the cut was smeared: {gap:.2} levels off");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path("smooth.json")).unwrap()).unwrap();
    assert_eq!(report["job"]["deflicker"], 20.0);
    assert_eq!(report["job"]["provenance"]["deflicker"], "cli");

    let (code, err) = run_err(quick(ctxd().arg("edit").arg(&src)).args([
        "--source",
        "gray",
        "--prompt",
        "red",
        "--deflicker",
        "300",
    ]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("deflicker = 300 is out of range (0..=255)"),
        "{err}"
    );
}
