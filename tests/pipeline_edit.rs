//! The staged pipeline end to end through the library (the CLI tests drive the binary).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use ctxd::diffusion::{ContextMode, Inversion};
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
                blend: true,
                strength: None,
                blend_threshold: None,
                layout: None,
                source_detail: None,
            })
            .collect(),
        steps,
        eta: 0.0,
        inversion: Inversion::Ddim,
        strength: 1.0,
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
        blend: 0.0,
        measure_reconstruction: false,
        spec_json: serde_json::Value::Null,
        cancel: Arc::new(AtomicBool::new(false)),
        cache: None,
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
    let reports = graph::run(&j, &|_| {}).unwrap();
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
    let cfg = ctxd::model::Bundle::open(&j.bundle_dir)
        .unwrap()
        .manifest()
        .schedule
        .clone();
    let (ps, qs) = ddim_affine(&cfg, 20, false, 0.25);
    let (pi, _qi) = ddim_affine(&cfg, 20, true, 0.25);
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

/// Windows with overlap, with and without the anchor, on a clip whose every frame is
/// different (a moving test pattern with a frame counter): reconstructed through the
/// oracle, output frame i must be nearest to source frame i, so a window boundary that
/// drops, repeats or reorders a frame fails (on a flat clip it would not show).
#[test]
fn windows_keep_every_frame_in_place() {
    let d = Dir::new();
    // Every frame its own wave pattern (phases move by N), so frames are told apart by
    // correlation whatever affine change of levels the reconstruction makes.
    let src = d.ffmpeg(
        "pattern.mp4",
        &[
            "-f",
            "lavfi",
            "-i",
            "color=c=black:s=64x48:r=10:d=2.3,format=yuv444p,\
             geq=lum='128+60*sin(X*0.37+N*2.1)+50*cos(Y*0.29+N*1.3)':cb=128:cr=128",
            "-c:v",
            "libx264",
            "-crf",
            "10",
            "-pix_fmt",
            "yuv444p",
        ],
    );
    let (w, h, source) = rgb_frames(&src);
    let size = (w * h * 3) as usize;
    let frames: Vec<&[u8]> = source.chunks_exact(size).collect();
    assert_eq!(frames.len(), 23);
    // Both ways through the stages: several windows at once, and one at a time.
    use ctxd::model::Pipelining::{Off, On};
    for (window, overlap, anchor, pipelining) in [
        (4, 0, false, On),
        (4, 2, true, Off),
        (5, 3, false, On),
        (6, 1, true, Off),
    ] {
        let out = d.path(&format!("w{window}-o{overlap}-{anchor}.mp4"));
        let mut j = job(
            src.clone(),
            "oracle",
            &[("same", "gray", out.clone())],
            "gray",
            20,
        );
        (j.window, j.overlap, j.anchor) = (window, overlap, anchor);
        j.runtime.pipelining = pipelining;
        graph::run(&j, &|_| {}).unwrap();
        let (_, _, edited) = rgb_frames(&out);
        let got: Vec<&[u8]> = edited.chunks_exact(size).collect();
        assert_eq!(
            got.len(),
            frames.len(),
            "window {window}, overlap {overlap}"
        );
        for (i, g) in got.iter().enumerate() {
            let nearest = (0..frames.len())
                .max_by(|&a, &b| correlation(g, frames[a]).total_cmp(&correlation(g, frames[b])))
                .unwrap();
            assert_eq!(
                nearest, i,
                "window {window}, overlap {overlap}, anchor {anchor}: output frame {i} is source frame {nearest}"
            );
        }
    }
}

/// Pearson correlation of two frames' bytes.
fn correlation(a: &[u8], b: &[u8]) -> f64 {
    let n = a.len() as f64;
    let mean = |v: &[u8]| v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let (ma, mb) = (mean(a), mean(b));
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x) - ma, f64::from(y) - mb);
        (ab, aa, bb) = (ab + x * y, aa + x * x, bb + y * y);
    }
    ab / (aa * bb).sqrt().max(1e-12)
}

pub(crate) fn gray_clip(d: &Dir, name: &str, seconds: f64, with_audio: bool) -> PathBuf {
    let mut a = vec![
        "-f".to_string(),
        "lavfi".into(),
        "-i".into(),
        format!("color=c=0x808080:size=96x64:rate=12:duration={seconds}"),
    ];
    if with_audio {
        a.extend(tone(seconds, 48000));
    }
    let mut tail = vec!["-c:v", "libx264", "-pix_fmt", "yuv420p"];
    if with_audio {
        tail.extend(["-c:a", "aac", "-shortest"]);
    }
    d.ffmpeg(name, &strs(&args(&[&a], &tail)))
}

/// Flags shared by the CLI tests: the oracle bundle, few steps, small processing size.
pub(crate) fn quick(cmd: &mut std::process::Command) -> &mut std::process::Command {
    cmd.args([
        "--bundle",
        "models/oracle",
        "--steps",
        "4",
        "--short-side",
        "64",
        "--encoder-preset",
        "veryfast",
    ])
}

#[test]
fn cli_edit_keeps_timing_and_audio_and_writes_reports() {
    let d = Dir::new();
    let src = gray_clip(&d, "clip.mp4", 2.0, true);
    let out =
        run_ok(quick(ctxd().arg("edit").arg(&src).args([
            "--source", "gray", "--prompt", "red", "--prompt", "blue",
        ])));
    let _ = out;
    for name in ["clip.red.mp4", "clip.blue.mp4"] {
        let o = d.path(name);
        assert_eq!(
            frame_times(&o),
            frame_times(&src),
            "{name}: every frame at its time"
        );
        let p = ffprobe(&o);
        assert_eq!(streams_of(&p, "audio").len(), 1, "{name}: audio kept");
        let v = &streams_of(&p, "video")[0];
        assert_eq!(
            (v["width"].as_u64(), v["height"].as_u64()),
            (Some(96), Some(64))
        );
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.path(&name.replace(".mp4", ".json"))).unwrap())
                .unwrap();
        assert_eq!(report["frames"], 24);
        assert_eq!(report["bundle"]["name"], "oracle");
        assert!(report["stages"]["invert"]["busy_s"].as_f64().unwrap() > 0.0);
        assert_eq!(report["job"]["provenance"]["steps"], "cli");
    }
    // Red and blue came from one inversion and differ as the prompts do.
    let (_, _, red) = rgb_frames(&d.path("clip.red.mp4"));
    let (_, _, blue) = rgb_frames(&d.path("clip.blue.mp4"));
    assert!(
        red[0] > 150 && red[2] < 100,
        "red output is red: {:?}",
        &red[..3]
    );
    assert!(
        blue[2] > 150 && blue[0] < 100,
        "blue output is blue: {:?}",
        &blue[..3]
    );
}

/// `--pipelining on` (stages on different windows at once) and `off` (one window at a time
/// through the networks, each stage with every core) make the same edit, byte for byte on the
/// oracle, and the report says which ran.
#[test]
fn cli_edit_pipelining_on_and_off_make_the_same_edit() {
    let d = Dir::new();
    let src = gray_clip(&d, "clip.mp4", 2.0, false);
    let mut frames = Vec::new();
    for mode in ["on", "off"] {
        let out = d.path(&format!("{mode}.mp4"));
        let mut cmd = ctxd();
        cmd.arg("edit").arg(&src).arg("--output").arg(&out).args([
            "--source",
            "gray",
            "--prompt",
            "red",
            "--pipelining",
            mode,
            "--no-cache",
        ]);
        run_ok(quick(&mut cmd));
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.path(&format!("{mode}.json"))).unwrap())
                .unwrap();
        assert_eq!(report["pipelined"], mode == "on", "{mode}");
        assert_eq!(
            report["windows"], 3,
            "{mode}: 24 frames in windows of 9 + 8 + 7 new"
        );
        frames.push(rgb_frames(&out).2);
    }
    assert!(frames[0] == frames[1], "the same frames either way");
}

#[test]
fn cli_edit_makes_a_missing_output_folder() {
    // Regression: `--out-dir out` failed when `out` did not exist yet.
    let d = Dir::new();
    let src = gray_clip(&d, "clip.mp4", 0.5, false);
    run_ok(quick(
        ctxd()
            .arg("edit")
            .arg(&src)
            .args(["--source", "gray", "--prompt", "red", "--out-dir"])
            .arg(d.path("new/sub")),
    ));
    assert!(d.path("new/sub/clip.red.mp4").is_file());
    assert!(d.path("new/sub/clip.red.json").is_file());
    // Where a folder cannot be made, one line says which and why.
    std::fs::write(d.path("file"), "x").unwrap();
    let (code, err) = run_err(quick(
        ctxd()
            .arg("edit")
            .arg(&src)
            .args(["--source", "gray", "--prompt", "red", "--out-dir"])
            .arg(d.path("file/sub")),
    ));
    assert_eq!(code, 2);
    assert!(
        err.contains("file/sub: cannot create the output folder"),
        "{err}"
    );
}

#[test]
fn an_output_set_appears_whole_or_not_at_all() {
    // Regression: with two edits, a failure putting the second output in place left the
    // first one's output and report behind the error.
    let d = Dir::new();
    let src = gray_clip(&d, "clip.mp4", 0.5, false);
    std::fs::create_dir_all(d.path("out/clip.blue.mp4")).unwrap();
    let (code, err) = run_err(quick(
        ctxd()
            .arg("edit")
            .arg(&src)
            .args(["--source", "gray", "--prompt", "red", "--prompt", "blue"])
            .arg("--out-dir")
            .arg(d.path("out")),
    ));
    assert_ne!(code, 0);
    assert!(err.contains("clip.blue.mp4"), "names the output: {err}");
    let mut left: Vec<String> = std::fs::read_dir(d.path("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["clip.blue.mp4"],
        "only the folder that was in the way"
    );
    // Out of the way: both outputs and both reports.
    std::fs::remove_dir(d.path("out/clip.blue.mp4")).unwrap();
    run_ok(quick(
        ctxd()
            .arg("edit")
            .arg(&src)
            .args(["--source", "gray", "--prompt", "red", "--prompt", "blue"])
            .arg("--out-dir")
            .arg(d.path("out")),
    ));
    for f in [
        "clip.red.mp4",
        "clip.red.json",
        "clip.blue.mp4",
        "clip.blue.json",
    ] {
        assert!(d.path("out").join(f).is_file(), "{f}");
    }
}

#[test]
fn cli_edit_prompt_files_and_their_errors() {
    let d = Dir::new();
    let src = gray_clip(&d, "car.mp4", 1.0, false);
    std::fs::write(
        d.path("car.prompt.toml"),
        "source = \"gray\"\n[[edit]]\nprompt = \"green\"\nname = \"go green\"\n",
    )
    .unwrap();
    run_ok(quick(ctxd().arg("edit").arg(&src)));
    assert!(d.path("car.go-green.mp4").exists(), "{:?}", d.listing());

    std::fs::write(
        d.path("car.prompt.toml"),
        "source = \"gray\"\n[[edit]]\npromt = \"green\"\n",
    )
    .unwrap();
    let (code, err) = run_err(quick(ctxd().arg("edit").arg(&src)));
    assert_eq!(code, 2);
    assert!(
        err.contains("car.prompt.toml") && err.contains("promt"),
        "{err}"
    );

    let txt = d.path("list.txt");
    std::fs::write(&txt, "source: gray\nred\n# a comment\nwhite\n").unwrap();
    run_ok(quick(
        ctxd().arg("edit").arg(&src).arg("--prompt-file").arg(&txt),
    ));
    assert!(
        d.path("car.red.mp4").exists() && d.path("car.white.mp4").exists(),
        "{:?}",
        d.listing()
    );

    let (code, err) = run_err(quick(
        ctxd()
            .arg("edit")
            .arg(&src)
            .args(["--preset", "nosuch", "--source", "x", "--prompt", "y"]),
    ));
    assert_eq!(code, 2);
    assert!(err.contains("nosuch") && err.contains("default"), "{err}");
}

#[test]
fn cli_edit_from_stdin() {
    let d = Dir::new();
    let src = d.ffmpeg(
        "s.mkv",
        &strs(&args(
            &[&[
                "-f".into(),
                "lavfi".into(),
                "-i".into(),
                "color=c=0x808080:size=64x64:rate=10:duration=1".into(),
            ]],
            &["-c:v", "libx264"],
        )),
    );
    let out = d.path("piped.mp4");
    let status = quick(
        ctxd()
            .args(["edit", "-", "--source", "gray", "--prompt", "red", "-o"])
            .arg(&out),
    )
    .stdin(std::fs::File::open(&src).unwrap())
    .status()
    .unwrap();
    assert!(status.success());
    assert_eq!(frame_times(&out).len(), 10);
}

/// In both pipelining modes: one window at a time, a stage waiting for its turn must see the
/// cancel too (a lost turn once left the edit waiting for ever; the deadline fails instead).
#[test]
fn cli_edit_ctrl_c_leaves_no_output() {
    let d = Dir::new();
    let src = gray_clip(&d, "long.mp4", 30.0, false);
    for mode in ["on", "off"] {
        let mut child = ctxd()
            .arg("edit")
            .arg(&src)
            .args([
                "--bundle",
                "models/oracle",
                "--steps",
                "50",
                "--short-side",
                "0",
                "--source",
                "gray",
                "--prompt",
                "red",
                "--pipelining",
                mode,
            ])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        while !d.listing().iter().any(|n| n.ends_with(".part")) {
            assert!(
                started.elapsed().as_secs() < 60,
                "{mode}: edit never started"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let signalled = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if signalled.elapsed().as_secs() > 60 {
                let _ = child.kill();
                panic!("{mode}: the cancelled edit did not stop");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let output = child.wait_with_output().unwrap();
        assert_eq!(output.status.code(), Some(1), "{mode}");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("cancelled"),
            "{mode}"
        );
        assert_eq!(
            d.listing(),
            vec!["long.mp4"],
            "{mode}: nothing half-written left"
        );
    }
}

#[test]
fn cli_edit_tiny_bundle_on_a_real_clip() {
    let d = Dir::new();
    let src = real_clip(&d, "car-turn.mp4");
    // Two prompts, two outputs (car.<prompt>.mp4) from one decode and one inversion.
    run_ok(
        ctxd()
            .arg("edit")
            .arg(&src)
            .args([
                "--bundle",
                "models/tiny",
                "--preset",
                "fast",
                "--steps",
                "2",
                "--short-side",
                "32",
            ])
            .args([
                "--source",
                "a car turning",
                "--prompt",
                "a red car turning",
                "--prompt",
                "a blue boat",
                "--context",
                "x0_pred",
                "-o",
            ])
            .arg(d.path("car.mp4")),
    );
    let out = d.path("car.a-red-car-turning.mp4");
    assert_eq!(frame_times(&out), frame_times(&src));
    // The tiny bundle has a CLIP pair: the report carries CLIP-T and CLIP-F.
    let report = |name: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(d.path(name)).unwrap()).unwrap()
    };
    let report1 = report("car.a-red-car-turning.json");
    let q = &report1["quality"];
    let (t, f) = (
        q["clip"]["clip_t"].as_f64().unwrap(),
        q["clip"]["clip_f"].as_f64().unwrap(),
    );
    // A moving clip: consecutive frames' embeddings differ (the arithmetic itself is
    // checked by hand in clip.rs).
    assert!(f < 1.0 - 1e-6 && f > -1.0, "clip_f {f}");
    // The other prompt over the same clip: the text enters CLIP-T.
    let t2 = report("car.a-blue-boat.json")["quality"]["clip"]["clip_t"]
        .as_f64()
        .unwrap();
    assert!((t - t2).abs() > 1e-4, "clip_t {t} for both prompts");
    assert!(q["temporal"]["output_inside"].as_f64().unwrap() > 0.0);
    let p = probe(&out);
    assert_eq!(
        (
            p["video"]["display_width"].as_u64(),
            p["video"]["display_height"].as_u64()
        ),
        (Some(480), Some(480))
    );
}

#[test]
fn cli_reconstruct_preset_reports_psnr() {
    let d = Dir::new();
    let src = gray_clip(&d, "r.mp4", 1.0, false);
    run_ok(quick(ctxd().arg("edit").arg(&src).args([
        "--preset",
        "reconstruct",
        "--source",
        "gray",
        "--context",
        "off",
    ])));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path("r.reconstruct.json")).unwrap()).unwrap();
    let psnr = report["quality"]["reconstruction_psnr_db"]
        .as_f64()
        .unwrap();
    // The oracle inverts and resamples a flat gray almost exactly (a few 8-bit levels at 4 steps).
    assert!(psnr > 30.0, "reconstruction PSNR {psnr}");
}

/// Edit-friendly inversion gives the source back under its own prompt, through the real
/// engine, where DDIM inversion (which the demo UNet cannot run backwards exactly) loses
/// detail: only the VAE's round trip and the encoder are left between input and output.
#[test]
fn an_edit_friendly_inversion_reconstructs_better_than_ddim() {
    let d = Dir::new();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("models/train/clips/demo.mp4");
    let psnr = |inversion: &str| {
        let out = d.path(&format!("t.{inversion}.mp4"));
        run_ok(
            ctxd()
                .current_dir(&root)
                .arg("edit")
                .arg(&src)
                .args([
                    "--preset",
                    "reconstruct",
                    "--bundle",
                    "models/demo",
                    "--steps",
                    "10",
                    "--short-side",
                    "0",
                    "--source",
                    "a red circle on a striped gray background",
                    "--inversion",
                    inversion,
                    "--output",
                ])
                .arg(&out),
        );
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.with_extension("json")).unwrap()).unwrap();
        report["quality"]["reconstruction_psnr_db"]
            .as_f64()
            .unwrap()
    };
    let (ddim, ddpm) = (psnr("ddim"), psnr("ddpm"));
    eprintln!("reconstruction: ddim {ddim:.1} dB, ddpm {ddpm:.1} dB");
    assert!(
        ddpm > 30.0 && ddpm > ddim + 10.0,
        "ddim {ddim:.1} dB, ddpm {ddpm:.1} dB"
    );
    let (code, err) = run_err(ctxd().arg("edit").arg(&src).args(["--inversion", "ddpx"]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("ddpx") && err.contains("ddim or ddpm"),
        "{err}"
    );
}

/// A UNet past the size limit is loaded once and the invert and edit stages take turns on it
/// (its weights are not held twice); the edit is the same as with two sessions, and each stage
/// still reports its own time inside ONNX Runtime.
#[test]
fn a_shared_unet_session_edits_like_two() {
    use ctxd::model::Bundle;
    use ctxd::pipeline::graph::{sampler_setup, StageModels};
    let bundle =
        Bundle::open(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/tiny")).unwrap();
    let setup = sampler_setup(
        &bundle,
        4,
        0.0,
        1.0,
        ContextMode::Source,
        false,
        Inversion::Ddim,
    )
    .unwrap();
    let shared_from = |bytes: Option<u64>| RuntimeOptions {
        share_unet_from: bytes,
        ..Default::default()
    };
    let load = |o: &RuntimeOptions| StageModels::load(&bundle, o, &setup, false, false).unwrap();
    let m = load(&shared_from(None));
    assert!(
        !m.unet_inv.shares_session_with(&m.unet_edit),
        "tiny: 1.3 MB"
    );
    let m = load(&shared_from(Some(0)));
    assert!(m.unet_inv.shares_session_with(&m.unet_edit));
    drop(m);

    let d = Dir::new();
    let src = d.ffmpeg(
        "in.mp4",
        &strs(&args(&[&pattern("64x48", "12", 1.0)], &["-c:v", "libx264"])),
    );
    let run = |name: &str, share: Option<u64>| {
        let out = d.path(name);
        let mut j = job(
            src.clone(),
            "tiny",
            &[("e", "a red video", out.clone())],
            "a video",
            4,
        );
        j.context = ContextMode::Source;
        j.encode.codec = Some("ffv1".into());
        j.runtime = shared_from(share);
        let report = graph::run(&j, &|_| {}).unwrap().remove(0);
        for stage in ["invert", "edit"] {
            assert!(report.stages[stage].onnx_s > 0.0, "{stage}");
        }
        rgb_frames(&out).2
    };
    let (two, one) = (run("two.mkv", None), run("one.mkv", Some(0)));
    let mad = mean_abs_diff(&two, &one);
    // Float noise at most (threads differ: the shared session gets every core).
    assert!(mad < 1.0, "mean absolute difference {mad:.3} levels");
}
