//! The staged pipeline end to end through the library (the CLI tests drive the binary).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use ctxd::diffusion::ContextMode;
use ctxd::media::{EncodeSettings, InputSpec};
use ctxd::model::RuntimeOptions;
use ctxd::pipeline::graph;
use ctxd::pipeline::job::{EditJob, EditTarget};

use crate::util::*;

pub fn job(
    input: PathBuf,
    bundle: &str,
    outputs: &[(&str, &str, PathBuf)],
    source: &str,
    steps: usize,
) -> EditJob {
    EditJob {
        input: InputSpec::File(input),
        bundle_dir: PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("models")
            .join(bundle),
        runtime: RuntimeOptions::default(),
        source_prompt: source.into(),
        edits: outputs
            .iter()
            .map(|(name, prompt, out)| EditTarget {
                name: name.to_string(),
                prompt: prompt.to_string(),
                negative: None,
                guidance: 1.0,
                seed: 0,
                output: out.clone(),
            })
            .collect(),
        steps,
        eta: 0.0,
        context: ContextMode::Off,
        window: 4,
        overlap: 0,
        anchor: true,
        short_side: None,
        multiple: 8,
        encode: EncodeSettings {
            crf: Some(10),
            preset: Some("veryfast".into()),
            ..Default::default()
        },
        measure_reconstruction: false,
        spec_json: serde_json::Value::Null,
        cancel: Arc::new(AtomicBool::new(false)),
    }
}

#[test]
fn oracle_gray_to_red_has_the_predicted_colour() {
    let d = Dir::new();
    let src = d.ffmpeg(
        "gray.mp4",
        &strs(&args(
            &[&[
                "-f".into(),
                "lavfi".into(),
                "-i".into(),
                "color=c=0x808080:size=64x48:rate=10:duration=1".into(),
            ]],
            &["-c:v", "libx264", "-pix_fmt", "yuv444p"],
        )),
    );
    let out = d.path("gray.red.mp4");
    let j = job(
        src.clone(),
        "oracle",
        &[("red", "red", out.clone())],
        "gray",
        20,
    );
    let reports = graph::run(&j).unwrap();
    assert_eq!(reports.len(), 1);
    let (w, h, rgb) = rgb_frames(&out);
    assert_eq!((w, h), (64, 48));
    let n = (w * h) as usize;
    assert_eq!(rgb.len() / 3 / n, 10, "every frame written");
    let mean =
        |c: usize| rgb.chunks_exact(3).map(|p| p[c] as f64).sum::<f64>() / (rgb.len() / 3) as f64;
    // CONTEXTDIFF.md §6.2, discrete form: x0' = P_s (P_i x0 + Q_i mu_src) + Q_s mu_tgt per
    // element, with mu_src = gray = 0 and mu_tgt = red; the decoder maps x to (x + 1) 127.5.
    let (src_rgb, _, _) = {
        let (_, _, s) = rgb_frames(&src);
        (s[0] as f64, 0, 0)
    };
    let x0 = src_rgb / 127.5 - 1.0;
    let sched = ctxd::diffusion::Schedule::ddim(
        &ctxd::model::Bundle::open(&j.bundle_dir)
            .unwrap()
            .manifest()
            .schedule
            .noise_config(),
        20,
    )
    .unwrap();
    let (ps, qs) = ddim_affine(&sched, false, 0.25);
    let (pi, _qi) = ddim_affine(&sched, true, 0.25);
    let red = [0.6, -0.6, -0.6];
    for (c, mu) in red.iter().enumerate() {
        let want = (ps * pi * x0 + qs * mu + 1.0) * 127.5;
        let got = mean(c);
        // 8-bit output, then H.264 (crf 10) of a flat colour: within 1.5 levels.
        assert!(
            (got - want).abs() < 1.5,
            "channel {c}: mean {got:.2}, predicted {want:.2}"
        );
    }
    assert_eq!(reports[0].frames, 10);
    assert!(d.path("gray.red.json").exists(), "report beside the output");
}
