//! `ctxd models check` and `ctxd models list` through the real binary.

use crate::util::*;

fn models_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models")
}

#[test]
fn every_committed_bundle_checks_out() {
    for (name, networks) in [("oracle", 5), ("oracle-shifted", 5), ("tiny", 7)] {
        let out = run_ok(
            ctxd()
                .args(["models", "check", "--device", "cpu", "--json"])
                .arg(models_dir().join(name)),
        );
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["bundle"], name);
        assert_eq!(r["hashes_verified"], true);
        let nets = r["networks"].as_array().unwrap();
        assert_eq!(nets.len(), networks, "{name}");
        assert!(nets.iter().all(|n| n["provider"] == "cpu"));
        let unet = nets.iter().find(|n| n["network"] == "unet").unwrap();
        // Output shape equals the latent input's, with F = 2 frames.
        assert_eq!(unet["outputs"][0][1], unet["inputs"][0][1]);
        assert_eq!(unet["outputs"][0][1][2], 2);
    }
}

#[test]
fn required_cuda_runs_on_cuda_or_fails_clearly() {
    let out = ctxd()
        .args(["models", "check", "--device", "cuda", "--json"])
        .arg(models_dir().join("oracle"))
        .output()
        .unwrap();
    if out.status.success() {
        // A host whose ONNX Runtime has the CUDA provider and a GPU: every network on it.
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let nets = r["networks"].as_array().unwrap();
        assert!(nets.iter().all(|n| n["provider"] == "cuda"), "{r}");
    } else {
        // CI and this machine: the CPU build of ONNX Runtime, no GPU.
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("cuda:0") && err.contains("CUDA"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    // auto falls back to the CPU.
    run_ok(
        ctxd()
            .args(["models", "check", "--device", "auto"])
            .arg(models_dir().join("oracle")),
    );
}

#[test]
fn list_shows_bundles_and_broken_ones() {
    let d = Dir::new();
    for name in ["oracle", "tiny"] {
        let dst = d.path(name);
        std::fs::create_dir(&dst).unwrap();
        for e in std::fs::read_dir(models_dir().join(name)).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
            }
        }
    }
    std::fs::create_dir(d.path("broken")).unwrap();
    std::fs::write(
        d.path("broken/bundle.toml"),
        "format_version = 1\nname = 3\n",
    )
    .unwrap();
    let out = run_ok(ctxd().args(["models", "list"]).arg(d.root()));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("oracle") && text.contains("tiny"), "{text}");
    assert!(
        text.contains("BROKEN") && text.contains("broken/bundle.toml"),
        "{text}"
    );
}

#[test]
fn bad_bundle_is_a_configuration_error() {
    let d = Dir::new();
    std::fs::write(
        d.path("bundle.toml"),
        "format_version = 1\nname = \"x\"\nsurprise = true\n",
    )
    .unwrap();
    let (code, err) = run_err(ctxd().args(["models", "check"]).arg(d.root()));
    assert_eq!(code, 2);
    assert!(
        err.contains("bundle.toml") && err.contains("surprise"),
        "{err}"
    );
}

/// ONNX Runtime's optimized models are cached (CTXD_ORT_CACHE): the first edit writes one per
/// network it loads and leaves no temporary file; an edit served from the cache gives the same
/// picture as one without it (up to float noise: two runs of the engine are not always
/// bit-identical on a loaded machine, and libx264 is not byte-reproducible, so the outputs are
/// lossless and compared by level; a cache serving another network is tens of levels off).
#[test]
fn the_optimized_model_cache_is_filled_and_changes_nothing() {
    let d = Dir::new();
    let src = d.ffmpeg(
        "src.mp4",
        &strs(&args(
            &[&pattern("64x48", "10", 0.4)],
            &["-c:v", "libx264", "-pix_fmt", "yuv420p"],
        )),
    );
    let cache = d.path("cache");
    let edit = |out: &str, cache: Option<&std::path::Path>| {
        let mut c = ctxd();
        match cache {
            Some(dir) => c.env("CTXD_ORT_CACHE", dir),
            None => c.env("CTXD_ORT_CACHE", "off"),
        };
        run_ok(
            c.current_dir(env!("CARGO_MANIFEST_DIR"))
                .args(["edit", "--device", "cpu", "--bundle", "models/tiny"])
                .args(["--preset", "fast", "--steps", "2", "--short-side", "32"])
                .args(["--source", "a video", "--prompt", "a red video"])
                .args(["--codec", "ffv1", "-o"])
                .arg(d.path(out))
                .arg(&src),
        );
        rgb_frames(&d.path(out)).2
    };
    let plain = edit("plain.mkv", None);
    let first = edit("first.mkv", Some(&cache));
    let mut files: Vec<String> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert!(
        files
            .iter()
            .any(|f| f.starts_with("unet-") && f.ends_with(".onnx")),
        "no cached UNet in {files:?}"
    );
    assert!(
        files
            .iter()
            .all(|f| f.ends_with(".onnx") && !f.starts_with('.')),
        "{files:?}"
    );
    let second = edit("second.mkv", Some(&cache));
    for (name, frames) in [("first", &first), ("second", &second)] {
        let d = mean_abs_diff(&plain, frames);
        assert!(
            d < 1.0,
            "the cache changed the {name} edit by {d:.3} levels"
        );
    }
}

#[test]
fn bundles_named_under_the_ctxd_home_open_from_any_folder() {
    let elsewhere = tempfile::tempdir().unwrap();
    let bench = |extra: &[&str]| {
        ctxd()
            .current_dir(elsewhere.path())
            .env_remove("CTXD_HOME")
            .args(["bench", "sampler", "--steps", "1", "--frames", "2"])
            .args(["--latent", "8"])
            .args(extra)
            .output()
            .unwrap()
    };
    // The bench's default, models/tiny, and a --bundle named the same way: neither is under
    // this folder; both are under the source tree ctxd was built from.
    for extra in [&[][..], &["--bundle", "models/tiny"]] {
        let out = bench(extra);
        assert!(
            out.status.success(),
            "{extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("tiny"));
    }
    // A name that is nowhere is refused under the name the user gave.
    let out = bench(&["--bundle", "models/none"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("models/none") && err.contains("no bundle"),
        "{err}"
    );
}
