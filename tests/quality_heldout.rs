//! The analyser (src/quality) against the held-out set's labels: every source clip, decoded by
//! ctxd's media layer, must read back exactly as labelled (background colour and texture,
//! object count, each object's shape and colour) with every object within 1.0 px of its
//! labelled path in every frame. Without the held-out set this fails: it is part of the
//! repository's data (models/train writes it), not an optional extra.

use std::path::PathBuf;

use ctxd::quality::{self, score, Analyser, AnalyserConfig, Heldout, Texture};

pub fn heldout_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/train/clips/heldout")
}

pub fn load_heldout() -> Heldout {
    let dir = heldout_dir();
    Heldout::load(&dir).unwrap_or_else(|e| {
        panic!(
            "the held-out set is missing or broken ({e}); it is written by models/train/train.py into {}",
            dir.display()
        )
    })
}

#[test]
fn the_analyser_reads_every_heldout_source_as_labelled() {
    let set = load_heldout();
    assert!(!set.clips.is_empty(), "heldout.json lists no clips");
    let analyser = Analyser::new(set.palette.clone(), AnalyserConfig::default());
    let (mut frames, mut objects, mut worst) = (0usize, 0usize, 0f32);
    let mut errors = Vec::new();
    // Margins: how far each decision was from its threshold.
    let (mut shape_margin, mut colour_worst) = (f32::INFINITY, 0f32);
    let (mut plain_std, mut textured_std) = (0f32, f32::INFINITY);
    let (mut stripe_ratio, mut check_ratio) = (0f32, f32::INFINITY);
    let mut periodicity = f32::NEG_INFINITY;
    let mut shape_distance = 0f32;
    let mut failures = Vec::new();
    for clip in &set.clips {
        let path = set.path_of(clip);
        let decoded = quality::read_frames(&path)
            .unwrap_or_else(|e| panic!("{}: ctxd cannot decode it: {e}", path.display()));
        assert_eq!(
            decoded.len(),
            clip.labels.frames,
            "{}: frame count",
            clip.file
        );
        let analysis = analyser.clip(&decoded);
        for f in &analysis.frames {
            for o in &f.objects {
                shape_margin = shape_margin.min(o.shape_margin);
                shape_distance = shape_distance.max(o.shape_distance * o.area.sqrt());
                colour_worst = colour_worst.max(o.colour_distance);
            }
            match clip.labels.background.texture {
                Texture::Plain => plain_std = plain_std.max(f.texture_std),
                t => {
                    textured_std = textured_std.min(f.texture_std);
                    periodicity = periodicity.max(f.texture_periodicity);
                    if t == Texture::Striped {
                        stripe_ratio = stripe_ratio.max(f.texture_ratio);
                    } else {
                        check_ratio = check_ratio.min(f.texture_ratio);
                    }
                }
            }
        }
        let expected = clip.expected();
        let cmp = score::compare(&analysis, &expected);
        frames += cmp.frames;
        for f in &cmp.per_frame {
            for s in f.objects.iter().flatten() {
                objects += 1;
                worst = worst.max(s.error);
                errors.push(s.error);
            }
        }
        for m in cmp.frame_mismatches(&expected, 1.0) {
            failures.push(format!("{} ({}): {m}", clip.file, clip.caption));
            // What the analyser saw in that frame, to tell a threshold from a bug.
            if let Some(fi) = m
                .strip_prefix("frame ")
                .and_then(|r| r.split(':').next())
                .and_then(|n| n.parse::<usize>().ok())
            {
                for o in &analysis.frames[fi].objects {
                    failures.push(format!(
                        "    seen: {} {} distance {:.4} margin {:.4} area {:.1} fill {:.3} offset {:.3} at ({:.2}, {:.2})",
                        o.colour, o.shape, o.shape_distance, o.shape_margin, o.area, o.fill, o.offset, o.position[0], o.position[1]
                    ));
                }
            }
        }
        if !(cmp.background_ok && cmp.texture_ok && cmp.count_ok) {
            failures.push(format!(
                "{}: clip summary {:?}",
                clip.file, analysis.summary
            ));
        }
    }
    errors.sort_by(f32::total_cmp);
    let p = |q: f32| errors[((errors.len() - 1) as f32 * q) as usize];
    eprintln!(
        "margins: shape signature distance to the nearest shape x sqrt(area) <= {shape_distance:.3}, runner-up - best >= {shape_margin:.4}; object colour <= {colour_worst:.1} from its swatch; \
         texture std plain <= {plain_std:.2}, textured >= {textured_std:.2} with autocorrelation <= {periodicity:.2}; vertical/horizontal change striped <= {stripe_ratio:.3}, checkered >= {check_ratio:.3}"
    );
    eprintln!(
        "analyser on {} held-out clips, {frames} frames, {objects} object sightings: position error median {:.3} px, p95 {:.3} px, max {worst:.3} px; {} mismatches",
        set.clips.len(),
        p(0.5),
        p(0.95),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn sheet_lays_out_one_row_per_video_and_refuses_other_formats() {
    let set = load_heldout();
    let d = crate::util::Dir::new();
    let out = d.path("sheet.png");
    let (a, b) = (set.path_of(&set.clips[0]), set.path_of(&set.clips[1]));
    crate::util::run_ok(
        crate::util::ctxd()
            .arg("sheet")
            .arg(&a)
            .arg(&b)
            .args(["--frames", "4", "--scale", "2", "-o"])
            .arg(&out),
    );
    let sheet = quality::read_frames(&out).expect("the sheet decodes");
    // 2 px separators: 2 + 4 * (128 + 2) across, 2 + 2 * (128 + 2) down.
    assert_eq!((sheet[0].width, sheet[0].height), (522, 262));
    // The first cell is frame 0 of the first clip, upscaled 2x by nearest neighbour.
    let src = &quality::read_frames(&a).unwrap()[0];
    let (x, y) = (40usize, 21usize);
    let at = |f: &ctxd::media::RgbFrame, x: usize, y: usize| {
        let i = (y * f.width as usize + x) * 3;
        f.data[i..i + 3].to_vec()
    };
    assert_eq!(at(&sheet[0], 2 + 2 * x, 2 + 2 * y), at(src, x, y));
    assert_eq!(at(&sheet[0], 3 + 2 * x, 3 + 2 * y), at(src, x, y));

    let (code, err) = crate::util::run_err(
        crate::util::ctxd()
            .arg("sheet")
            .arg(&a)
            .arg("-o")
            .arg(d.path("sheet.jpg")),
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("PNG"), "{err}");
}

#[test]
fn bench_quality_names_a_missing_bundle() {
    let (code, err) = crate::util::run_err(
        crate::util::ctxd()
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args([
                "bench",
                "quality",
                "--limit",
                "1",
                "--bundle",
                "/nonexistent/demo",
            ]),
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("/nonexistent/demo"), "{err}");
}

#[test]
fn bench_quality_says_why_each_edit_missed() {
    // Unguided (guidance 0), a colour edit is the unconditional model's: the source's red
    // square stays red (and comes out round): it misses as "not edited". `--kinds` leaves the
    // background edit out of the run, the rows and the tables.
    let d = crate::util::Dir::new();
    let json = d.path("q.json");
    let out = crate::util::run_ok(
        crate::util::ctxd()
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args([
                "bench",
                "quality",
                "--limit",
                "1",
                "--edit",
                "colour:guidance=0",
                "--kinds",
                "colour,shape",
            ])
            .arg("--json")
            .arg(&json)
            .arg("--sheet")
            .arg(d.path("sheets")),
    );
    let legend = std::fs::read_to_string(d.path("sheets").join("quality-source.txt")).unwrap();
    assert!(
        legend.contains("rows: source, then the colour, shape edits"),
        "{legend}"
    );
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.contains("| colour | 1 of 1 | 1 |"),
        "the misses table counts the colour edit as not edited:\n{out}"
    );
    let q: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(!out.contains("| background |"), "{out}");
    let rows = q["rows"].as_array().unwrap();
    let kinds: Vec<_> = rows.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["colour", "shape"]);
    assert_eq!(q["kinds"], serde_json::json!(["colour", "shape"]));
    for r in rows {
        let misses = r["misses"].as_array().map_or(0, |m| m.len());
        assert_eq!(r["success_and_preserve"] == true, misses == 0, "{r}");
    }
    let colour = rows.iter().find(|r| r["kind"] == "colour").unwrap();
    assert_eq!(colour["misses"][0], "not_edited", "{colour}");
    let overall = &q["modes"][0]["summaries"][2];
    assert_eq!(overall["kind"], "overall");
    let missed = rows
        .iter()
        .filter(|r| r["success_and_preserve"] == false)
        .count();
    assert_eq!(overall["missed"], missed);
    assert!(
        overall["misses"]["not_edited"].as_u64().unwrap() >= 1,
        "{overall}"
    );
}

#[test]
fn bench_quality_runs_each_seed_as_a_draw_and_tables_them_together() {
    // Two seeds: the set runs once per draw of the edit-friendly inversion's noise, each in a
    // folder of its own, the reconstruction once; the draws table agrees with the rows.
    let d = crate::util::Dir::new();
    let json = d.path("q.json");
    let work = d.path("work");
    let out = crate::util::run_ok(
        crate::util::ctxd()
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args([
                "bench", "quality", "--limit", "1", "--kinds", "shape", "--seed", "0,3",
            ])
            .arg("--json")
            .arg(&json)
            .arg("--work-dir")
            .arg(&work),
    );
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.contains("| edit | n | seed 0 | seed 3 | mean |"),
        "the draws table names both seeds:\n{out}"
    );
    let q: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(q["seeds"], serde_json::json!([0, 3]));
    let rows = q["rows"].as_array().unwrap();
    let seeds: Vec<_> = rows.iter().map(|r| r["seed"].as_u64().unwrap()).collect();
    assert_eq!(seeds, [0, 3]);
    let recs = q["reconstructions"].as_array().unwrap();
    assert_eq!(recs.len(), 1, "reconstructed once: {recs:?}");
    let a = std::fs::read(rows[0]["output"].as_str().unwrap()).unwrap();
    let b = std::fs::read(rows[1]["output"].as_str().unwrap()).unwrap();
    assert_ne!(a, b, "another seed draws another edit");
    assert!(work.join("source-seed0").is_dir() && work.join("source-seed3").is_dir());
    let draws = q["draws"].as_array().unwrap();
    assert_eq!(draws.len(), 2, "shape, overall: {draws:?}");
    let kept: Vec<bool> = rows
        .iter()
        .map(|r| r["success_and_preserve"] == true)
        .collect();
    let shape = &draws[0];
    assert_eq!(shape["kind"], "shape");
    for (i, p) in shape["per_seed"].as_array().unwrap().iter().enumerate() {
        assert_eq!(p[0], rows[i]["seed"]);
        assert_eq!(p[1].as_f64().unwrap(), if kept[i] { 1.0 } else { 0.0 });
    }
    assert_eq!(
        shape["kept_under_every_draw"],
        u64::from(kept.iter().all(|k| *k))
    );
    assert_eq!(
        shape["kept_under_some_draw"],
        u64::from(kept.iter().any(|k| *k))
    );
    // a seed named twice is a usage error
    let (code, err) = crate::util::run_err(
        crate::util::ctxd()
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["bench", "quality", "--limit", "1", "--seed", "2,2"]),
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("2 is named twice"), "{err}");
}
