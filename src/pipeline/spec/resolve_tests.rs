//! Tests of layer merging (a child module of `resolve`, kept in its own file).
use super::super::test_support::{cli, pipelines, preset, toml, toml_err};
use super::*;

#[test]
fn precedence_and_provenance() {
    let p = preset("default");
    let defaults = toml(
        "source = \"from defaults\"\nsteps = 20\nguidance = 6\nseed = 1\nwindow = 12\n\
         [[edit]]\nprompt = \"defaults edit\"\n",
        "/in/_defaults.toml",
    );
    let sidecar = toml(
        "source = \"from sidecar\"\nguidance = 5\nseed = 2\noverlap = 2\nshort_side = 0\n",
        "/in/clip.prompt.toml",
    );
    let over = CliOverrides {
        seed: Some(3),
        ..cli()
    };
    let job = JobSpec::resolve(&p, Some(&defaults), Some(&sidecar), &over).unwrap();
    assert_eq!(job.source, "from sidecar");
    assert_eq!(
        job.edits.len(),
        1,
        "the sidecar has no edits: the defaults' apply"
    );
    let e = &job.edits[0];
    assert_eq!((e.steps, e.guidance, e.seed), (20, 5.0, 3));
    assert_eq!(e.context, ContextMode::Source);
    assert_eq!((job.window, job.overlap, job.short_side), (12, 2, None));
    assert_eq!(job.preset_name, "default");

    let from = |k: &str| job.provenance[k].as_str();
    assert_eq!(from("context"), "preset:default");
    assert_eq!(from("multiple"), "preset:default");
    assert_eq!(from("steps"), "defaults:/in/_defaults.toml");
    assert_eq!(from("window"), "defaults:/in/_defaults.toml");
    assert_eq!(from("edits"), "defaults:/in/_defaults.toml");
    assert_eq!(from("guidance"), "sidecar:/in/clip.prompt.toml");
    assert_eq!(from("source"), "sidecar:/in/clip.prompt.toml");
    assert_eq!(from("short_side"), "sidecar:/in/clip.prompt.toml");
    assert_eq!(from("seed"), "cli");
    assert_eq!(from("edit.defaults-edit.seed"), "cli");
    assert_eq!(
        from("edit.defaults-edit.guidance"),
        "sidecar:/in/clip.prompt.toml"
    );

    // The command line's source and prompts win, and its prompts replace the files' edits.
    let over = CliOverrides {
        source: Some("from cli".into()),
        prompts: vec!["a cat".into(), "a cat".into()],
        steps: Some(5),
        context: Some(ContextMode::X0Pred),
        ..cli()
    };
    let job = JobSpec::resolve(&p, Some(&defaults), Some(&sidecar), &over).unwrap();
    assert_eq!(job.source, "from cli");
    let names: Vec<_> = job.edits.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["a-cat", "a-cat-2"]);
    assert!(job
        .edits
        .iter()
        .all(|e| e.steps == 5 && e.context == ContextMode::X0Pred));
    assert_eq!(job.provenance["edits"], "cli");
    assert_eq!(job.provenance["source"], "cli");

    // --short-side reaches the spec (and so the report) with its provenance; 0 = native.
    for (flag, want) in [(256, Some(256)), (0, None)] {
        let over = CliOverrides {
            short_side: Some(flag),
            ..cli()
        };
        let job = JobSpec::resolve(&p, Some(&defaults), Some(&sidecar), &over).unwrap();
        assert_eq!(job.short_side, want);
        assert_eq!(job.provenance["short_side"], "cli");
    }
    let over = CliOverrides {
        short_side: Some(100_000),
        ..cli()
    };
    let e = JobSpec::resolve(&p, None, None, &over)
        .unwrap_err()
        .to_string();
    assert!(e.contains("short_side"), "{e}");
}

#[test]
fn per_edit_values_override_their_file_but_not_higher_layers() {
    let p = preset("default");
    let sidecar = toml(
        r#"
source = "a dog"
guidance = 4
negative = "blurry"
[[edit]]
prompt = "a cat"
guidance = 9
steps = 25
negative = ""
[[edit]]
prompt = "a fox"
context = "off"
"#,
        "clip.prompt.toml",
    );
    let job = JobSpec::resolve(&p, None, Some(&sidecar), &cli()).unwrap();
    let [cat, fox] = &job.edits[..] else {
        panic!("two edits")
    };
    assert_eq!(
        (cat.guidance, cat.steps, cat.negative.as_deref()),
        (9.0, 25, None)
    );
    assert_eq!((fox.guidance, fox.steps), (4.0, 50));
    assert_eq!(fox.negative.as_deref(), Some("blurry"));
    assert_eq!(
        (cat.context, fox.context),
        (ContextMode::Source, ContextMode::Off)
    );

    let over = CliOverrides {
        guidance: Some(2.0),
        ..cli()
    };
    let job = JobSpec::resolve(&p, None, Some(&sidecar), &over).unwrap();
    assert!(job.edits.iter().all(|e| e.guidance == 2.0));
    assert_eq!(job.edits[0].steps, 25);
}

#[test]
fn overlap_checked_after_merge_names_layers() {
    let p = preset("default");
    let sidecar = toml(
        "source = \"a\"\noverlap = 8\n[[edit]]\nprompt = \"b\"\n",
        "clip.prompt.toml",
    );
    let err = JobSpec::resolve(&p, None, Some(&sidecar), &cli())
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "overlap = 8 (sidecar:clip.prompt.toml) must be less than window = 8 (preset:default)"
    );
}

#[test]
fn missing_source_or_edits() {
    let p = preset("default");
    let only_edits = toml("[[edit]]\nprompt = \"b\"\n", "clip.prompt.toml");
    let err = JobSpec::resolve(&p, None, Some(&only_edits), &cli()).unwrap_err();
    assert!(matches!(err, SpecError::MissingSource { .. }));
    let err = err.to_string();
    assert!(
        err.contains("source = ") && err.contains("--source"),
        "{err}"
    );

    let only_source = toml("source = \"a\"\n", "clip.prompt.toml");
    let err = JobSpec::resolve(&p, None, Some(&only_source), &cli()).unwrap_err();
    assert!(matches!(err, SpecError::NoEdits { .. }));
    let err = err.to_string();
    assert!(
        err.contains("[[edit]]") && err.contains("--prompt"),
        "{err}"
    );

    let err = JobSpec::resolve(&p, None, None, &cli()).unwrap_err();
    assert!(matches!(err, SpecError::MissingSource { .. }));
}

#[test]
fn reconstruct_edits_with_the_source_prompt() {
    let p = preset("reconstruct");
    let sidecar = toml(
        "source = \"a man walking a dog\"\n[[edit]]\nprompt = \"a tiger\"\n",
        "clip.prompt.toml",
    );
    let job = JobSpec::resolve(&p, None, Some(&sidecar), &cli()).unwrap();
    assert!(job.reconstruct);
    assert_eq!(job.edits.len(), 1);
    let e = &job.edits[0];
    assert_eq!(e.name, "reconstruct");
    assert_eq!(e.prompt, "a man walking a dog");
    assert_eq!((e.guidance, e.steps), (1.0, 50));
    assert_eq!(job.provenance["edits"], "preset:reconstruct");

    // No sidecar edits needed; a source is.
    let over = CliOverrides {
        source: Some("a dog".into()),
        ..cli()
    };
    assert_eq!(
        JobSpec::resolve(&p, None, None, &over).unwrap().edits[0].prompt,
        "a dog"
    );
    let over = CliOverrides {
        prompts: vec!["a tiger".into()],
        ..over
    };
    let err = JobSpec::resolve(&p, None, None, &over).unwrap_err();
    assert!(matches!(err, SpecError::Conflict(_)), "{err}");
}

#[test]
fn for_video_finds_defaults_and_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("clip.mp4");
    std::fs::write(dir.path().join(DEFAULTS_FILE), "steps = 12\n").unwrap();
    std::fs::write(dir.path().join("clip.prompt.txt"), "source: a dog\na cat\n").unwrap();
    let over = CliOverrides {
        preset: Some("fast".into()),
        ..cli()
    };
    let job = JobSpec::for_video(&video, &pipelines(), &over).unwrap();
    assert_eq!(job.preset_name, "fast");
    assert_eq!(job.source, "a dog");
    assert_eq!(job.edits[0].steps, 12);
    assert_eq!(job.edits[0].name, "a-cat");
    assert!(job.provenance["edits"].starts_with("sidecar:"));
    assert!(job.provenance["steps"].starts_with("defaults:"));

    // Without a sidecar, the message points at where one would go.
    let other = dir.path().join("other.mp4");
    let err = JobSpec::for_video(&other, &pipelines(), &cli())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("other.prompt.toml") && err.contains(DEFAULTS_FILE),
        "{err}"
    );

    std::fs::write(dir.path().join("clip.prompt.json"), "{}").unwrap();
    let err = JobSpec::for_video(&video, &pipelines(), &cli()).unwrap_err();
    assert!(matches!(err, SpecError::AmbiguousSidecar { .. }), "{err}");
}

#[test]
fn prompt_files_that_are_pipes_links_or_huge_are_refused_without_blocking() {
    // Regression: `_defaults.toml` was opened with no type check (a named pipe blocked the
    // daemon's loop forever), sidecars followed links, reads had no size cap.
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("clip.mp4");
    let fifo = dir.path().join(DEFAULTS_FILE);
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let (tx, rx) = std::sync::mpsc::channel();
    let v = video.clone();
    std::thread::spawn(move || {
        let _ = tx.send(JobSpec::for_video(&v, &pipelines(), &cli()).map_err(|e| e.to_string()));
    });
    let err = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("reading a named pipe as _defaults.toml must not block")
        .unwrap_err();
    assert!(
        err.contains("_defaults.toml: is not a regular file"),
        "{err}"
    );
    std::fs::remove_file(&fifo).unwrap();

    // A sidecar that is a link (here to a file outside the folder) is refused.
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("secret.txt");
    std::fs::write(&target, "source: a\nb\n").unwrap();
    let link = dir.path().join("clip.prompt.txt");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let err = JobSpec::for_video(&video, &pipelines(), &cli())
        .unwrap_err()
        .to_string();
    assert!(err.contains("clip.prompt.txt: is a symbolic link"), "{err}");
    std::fs::remove_file(&link).unwrap();

    // A huge one is refused, and named.
    std::fs::write(&link, "a\n".repeat(600_000)).unwrap();
    let err = JobSpec::for_video(&video, &pipelines(), &cli())
        .unwrap_err()
        .to_string();
    assert!(err.contains("clip.prompt.txt: is over 1024 KiB"), "{err}");
}

#[test]
fn job_spec_serializes_context_by_name() {
    let p = preset("default");
    let over = CliOverrides {
        source: Some("a".into()),
        prompts: vec!["b".into()],
        context: Some(ContextMode::X0Pred),
        ..cli()
    };
    let job = JobSpec::resolve(&p, None, None, &over).unwrap();
    let json = serde_json::to_value(&job).unwrap();
    assert_eq!(json["edits"][0]["context"], "x0_pred");
    assert_eq!(json["provenance"]["context"], "cli");
}

#[test]
fn strength_merges_like_eta_and_is_omitted_at_full_strength() {
    let p = preset("default");
    let file = toml(
        "source = \"a\"\nstrength = 0.7\n[[edit]]\nprompt = \"b\"\n",
        "v.prompt.toml",
    );
    let job = JobSpec::resolve(&p, None, Some(&file), &cli()).unwrap();
    assert_eq!(job.strength, 0.7);
    assert_eq!(job.provenance["strength"], "sidecar:v.prompt.toml");
    let over = CliOverrides {
        strength: Some(0.5),
        ..cli()
    };
    let job = JobSpec::resolve(&p, None, Some(&file), &over).unwrap();
    assert_eq!(
        (job.strength, job.provenance["strength"].as_str()),
        (0.5, "cli")
    );
    let err = JobSpec::resolve(
        &p,
        None,
        Some(&file),
        &CliOverrides {
            strength: Some(0.0),
            ..cli()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("out of range (0 < strength <= 1)"), "{err}");

    // At 1 the key is left out, so a job stored before `strength` existed reads back the
    // same and keeps its key (`what_runs`).
    let full = JobSpec::resolve(
        &p,
        None,
        None,
        &CliOverrides {
            source: Some("a".into()),
            prompts: vec!["b".into()],
            ..cli()
        },
    )
    .unwrap();
    assert_eq!(full.strength, 1.0);
    let runs = full.what_runs();
    assert!(runs.get("strength").is_none(), "{runs}");
    let mut old = serde_json::to_value(&full).unwrap();
    old.as_object_mut().unwrap().remove("strength");
    let back: JobSpec = serde_json::from_value(old).unwrap();
    assert_eq!(back, full);
    let part = serde_json::to_value(&job).unwrap();
    assert_eq!(part["strength"], 0.5);
}

#[test]
fn an_edit_can_set_its_own_strength_below_the_command_line() {
    let p = preset("demo");
    let file = toml(
        "source = \"a\"\n[[edit]]\nprompt = \"b\"\n\
         [[edit]]\nprompt = \"c\"\nstrength = 0.6\n\
         [[edit]]\nprompt = \"d\"\nstrength = 0.8\n",
        "v.prompt.toml",
    );
    let job = JobSpec::resolve(&p, None, Some(&file), &cli()).unwrap();
    assert_eq!(job.strength, 0.8, "the demo preset's");
    let own: Vec<Option<f64>> = job.edits.iter().map(|e| e.strength).collect();
    // Only an edit that differs from the job carries its own value (stored jobs keep their keys).
    assert_eq!(own, [None, Some(0.6), None]);
    assert_eq!(job.strength_of(&job.edits[1]), 0.6);
    assert_eq!(job.provenance["edit.c.strength"], "sidecar:v.prompt.toml");
    assert!(!job.provenance.contains_key("edit.b.strength"));
    let runs = job.what_runs();
    assert_eq!(runs["edits"][1]["strength"], 0.6);
    assert!(runs["edits"][0].get("strength").is_none(), "{runs}");
    let back: JobSpec = serde_json::from_value(serde_json::to_value(&job).unwrap()).unwrap();
    assert_eq!(back, job);

    // The command line beats every file, per-edit values included.
    let over = CliOverrides {
        strength: Some(0.9),
        ..cli()
    };
    let job = JobSpec::resolve(&p, None, Some(&file), &over).unwrap();
    assert!(job.edits.iter().all(|e| e.strength.is_none()));
    assert_eq!(job.strength, 0.9);

    let err = toml_err(
        "source = \"a\"\n[[edit]]\nprompt = \"b\"\nstrength = 1.5\n",
        "v.prompt.toml",
    );
    assert!(
        err.contains("[[edit]] #1") && err.contains("0 < strength <= 1"),
        "{err}"
    );
}

#[test]
fn an_edit_can_set_its_own_blend_below_the_command_line() {
    let p = preset("demo");
    let file = toml(
        "source = \"a\"\n[[edit]]\nprompt = \"b\"\nblend = 0.3\n\
         [[edit]]\nprompt = \"c\"\n[[edit]]\nprompt = \"d\"\nblend = 0\n",
        "v.prompt.toml",
    );
    let job = JobSpec::resolve(&p, None, Some(&file), &cli()).unwrap();
    assert_eq!(job.blend, 0.0, "the demo preset blends nowhere");
    let got: Vec<(Option<f32>, f32)> = job
        .edits
        .iter()
        .map(|e| (e.blend, job.blend_of(e)))
        .collect();
    assert_eq!(got, [(Some(0.3), 0.3), (None, 0.0), (None, 0.0)]);
    assert_eq!(job.provenance["edit.b.blend"], "sidecar:v.prompt.toml");
    let over = CliOverrides {
        blend: Some(0.5),
        ..cli()
    };
    let job = JobSpec::resolve(&p, None, Some(&file), &over).unwrap();
    assert!(job.edits.iter().all(|e| job.blend_of(e) == 0.5));
    let err = toml_err(
        "source = \"a\"\n[[edit]]\nprompt = \"b\"\nblend = 2\n",
        "v.prompt.toml",
    );
    assert!(
        err.contains("[[edit]] #1") && err.contains("blend"),
        "{err}"
    );
}

#[test]
fn an_edit_can_hold_its_layout_and_a_bad_hold_names_its_file() {
    let file = toml(
        "source = \"a\"\n[[edit]]\nprompt = \"b\"\nlayout = { from = 0.6, until = 0.7 }\n\
         [[edit]]\nprompt = \"c\"\n",
        "v.prompt.toml",
    );
    let job = JobSpec::resolve(&preset("demo"), None, Some(&file), &cli()).unwrap();
    let hold = LayoutHold {
        from: 0.6,
        until: 0.7,
    };
    assert_eq!(
        job.edits.iter().map(|e| e.layout).collect::<Vec<_>>(),
        [Some(hold), None]
    );
    assert_eq!(job.provenance["edit.b.layout"], "sidecar:v.prompt.toml");
    // Stored jobs round-trip it, and jobs without one keep their JSON.
    let json = serde_json::to_string(&job).unwrap();
    assert_eq!(serde_json::from_str::<JobSpec>(&json).unwrap(), job);
    assert_eq!(json.matches("\"layout\"").count(), 1);
    job.check_shared_inversion().unwrap();
    // x0_pred's context per step cannot be replayed with the edit-friendly inversion's.
    let x0_pred = CliOverrides {
        context: Some(ContextMode::X0Pred),
        ..cli()
    };
    let job = JobSpec::resolve(&preset("demo"), None, Some(&file), &x0_pred).unwrap();
    let err = job.check_shared_inversion().unwrap_err();
    assert!(
        err.contains("edit 'b' (sidecar:v.prompt.toml) holds its layout")
            && err.contains("x0_pred"),
        "{err}"
    );
    for (bad, why) in [
        (
            "layout = { from = 0.7, until = 0.6 }",
            "0 < from < until < 1",
        ),
        ("layout = { from = 0.6 }", "until"),
        (
            "layout = 0.6",
            "a layout hold: a table { from = F, until = U }",
        ),
        (
            "layout = { from = 0.6, until = 0.7, at = 1 }",
            "unknown field `at`",
        ),
    ] {
        let err = toml_err(
            &format!("source = \"a\"\n[[edit]]\nprompt = \"b\"\n{bad}\n"),
            "v.prompt.toml",
        );
        assert!(
            err.contains("v.prompt.toml") && err.contains(why),
            "{bad}: {err}"
        );
    }
}

#[test]
fn an_edit_can_take_less_source_detail_and_a_ddim_job_refuses_it() {
    let file = toml(
        "source = \"a\"\n[[edit]]\nprompt = \"b\"\nsource_detail = 0.5\n[[edit]]\nprompt = \"c\"\n",
        "v.prompt.toml",
    );
    let job = JobSpec::resolve(&preset("demo"), None, Some(&file), &cli()).unwrap();
    assert_eq!(
        job.edits
            .iter()
            .map(|e| e.source_detail)
            .collect::<Vec<_>>(),
        [Some(0.5), None]
    );
    assert_eq!(
        job.provenance["edit.b.source_detail"],
        "sidecar:v.prompt.toml"
    );
    let json = serde_json::to_string(&job).unwrap();
    assert_eq!(serde_json::from_str::<JobSpec>(&json).unwrap(), job);
    assert_eq!(json.matches("\"source_detail\"").count(), 1);
    job.check_shared_inversion().unwrap();
    // A DDIM inversion has no residuals to take the detail from: refused, naming the file.
    let ddim = CliOverrides {
        inversion: Some(Inversion::Ddim),
        ..cli()
    };
    let job = JobSpec::resolve(&preset("demo"), None, Some(&file), &ddim).unwrap();
    let err = job.check_shared_inversion().unwrap_err();
    assert!(
        err.contains("edit 'b' (sidecar:v.prompt.toml) sets source_detail") && err.contains("ddpm"),
        "{err}"
    );
    for bad in ["source_detail = 1.5", "source_detail = -0.1"] {
        let err = toml_err(
            &format!("source = \"a\"\n[[edit]]\nprompt = \"b\"\n{bad}\n"),
            "v.prompt.toml",
        );
        assert!(
            err.contains("v.prompt.toml") && err.contains("source_detail"),
            "{bad}: {err}"
        );
    }
}

/// The README's main job edits the demo clip with its shipped sidecar: three edits with the
/// strength, blending and guidance their kinds need, under one edit-friendly inversion (the
/// demo preset's).
#[test]
fn the_demo_clips_sidecar_resolves_with_a_strength_per_edit() {
    let video = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/train/clips/demo.mp4");
    let over = CliOverrides {
        preset: Some("demo".into()),
        ..cli()
    };
    let job = JobSpec::for_video(&video, &pipelines(), &over).unwrap();
    let got: Vec<(&str, f64, f32, f32)> = job
        .edits
        .iter()
        .map(|e| {
            (
                e.name.as_str(),
                job.strength_of(e),
                job.blend_of(e),
                e.guidance,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("beige-background", 0.6, 0.0, 2.0),
            ("square", 0.8, 0.4, 2.0),
            ("yellow", 0.5, 0.4, 2.0)
        ]
    );
    let holds: Vec<_> = job.edits.iter().map(|e| e.layout).collect();
    let hold = LayoutHold {
        from: 0.6,
        until: 0.7,
    };
    assert_eq!(holds, [None, Some(hold), None]);
    let detail: Vec<_> = job.edits.iter().map(|e| e.source_detail).collect();
    assert_eq!(detail, [None, Some(0.5), None]);
    assert_eq!(job.inversion, Inversion::Ddpm);
    job.check_shared_inversion().unwrap();
}

#[test]
fn deflicker_merges_from_every_layer_and_is_omitted_when_off() {
    let p = preset("default");
    let file = toml(
        "source = \"a\"\ndeflicker = 12\n[[edit]]\nprompt = \"b\"\n",
        "v.prompt.toml",
    );
    let job = JobSpec::resolve(&p, None, Some(&file), &cli()).unwrap();
    assert_eq!(job.deflicker, 12.0);
    assert_eq!(job.provenance["deflicker"], "sidecar:v.prompt.toml");
    let off = CliOverrides {
        deflicker: Some(0.0),
        ..cli()
    };
    let job = JobSpec::resolve(&p, None, Some(&file), &off).unwrap();
    assert_eq!(
        (job.deflicker, job.provenance["deflicker"].as_str()),
        (0.0, "cli")
    );
    // Off, the key is left out: jobs stored before `deflicker` existed keep their keys.
    let json = serde_json::to_value(&job).unwrap();
    assert!(json.get("deflicker").is_none(), "{json}");
    let back: JobSpec = serde_json::from_value(json).unwrap();
    assert_eq!(back, job);

    for bad in ["-1", "256", "nan"] {
        let err = toml_err(
            &format!("source = \"a\"\ndeflicker = {bad}\n"),
            "d.prompt.toml",
        );
        assert!(err.contains("d.prompt.toml: deflicker = "), "{err}");
        assert!(err.contains("out of range (0..=255)"), "{err}");
    }
}

#[test]
fn inversion_merges_from_every_layer_and_is_omitted_for_ddim() {
    let p = preset("default");
    assert_eq!(p.inversion, Inversion::Ddim);
    let file = toml(
        "source = \"a\"\ninversion = \"ddpm\"\n[[edit]]\nprompt = \"b\"\n",
        "v.prompt.toml",
    );
    let job = JobSpec::resolve(&p, None, Some(&file), &cli()).unwrap();
    assert_eq!(job.inversion, Inversion::Ddpm);
    assert_eq!(job.provenance["inversion"], "sidecar:v.prompt.toml");
    let json = serde_json::to_value(&job).unwrap();
    assert_eq!(json["inversion"], "ddpm");
    assert_eq!(serde_json::from_value::<JobSpec>(json).unwrap(), job);
    let ddim = CliOverrides {
        inversion: Some(Inversion::Ddim),
        ..cli()
    };
    let job = JobSpec::resolve(&p, None, Some(&file), &ddim).unwrap();
    assert_eq!(
        (job.inversion, job.provenance["inversion"].as_str()),
        (Inversion::Ddim, "cli")
    );
    // DDIM, the key is left out: jobs stored before `inversion` existed keep their keys.
    let json = serde_json::to_value(&job).unwrap();
    assert!(json.get("inversion").is_none(), "{json}");

    let err = toml_err("source = \"a\"\ninversion = \"ddpx\"\n", "d.prompt.toml");
    assert!(
        err.contains("d.prompt.toml") && err.contains("ddpx"),
        "{err}"
    );
}
