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
fn required_cuda_fails_clearly_without_it() {
    // CI machines have no GPU and the CPU build of ONNX Runtime.
    if std::path::Path::new("/dev/nvidia0").exists() {
        return;
    }
    let (code, err) = run_err(
        ctxd()
            .args(["models", "check", "--device", "cuda"])
            .arg(models_dir().join("oracle")),
    );
    assert_eq!(code, 2);
    assert!(err.contains("cuda:0") && err.contains("CUDA"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
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
