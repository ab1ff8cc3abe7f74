//! Semantic end to end: the real `ctxd edit` binary with the demo preset and the trained demo
//! bundle (models/demo) on three held-out clips, one colour, one shape and one background
//! edit, judged by the analyser: the asked-for attribute must appear, and the object count and
//! the motion (median distance from the labelled path <= 1.5 px) must be kept. Without
//! models/demo this fails, naming it. A second check edits one clip with two prompts that
//! share one inversion (colour and background), from a prompt file that gives the background
//! edit its own strength.
//! `CTXD_DEMO_BUNDLE=DIR` runs it against another bundle of the same contract (a fresh
//! training run, say).

use std::path::PathBuf;

use ctxd::quality::{self, score, Analyser, AnalyserConfig, EditKind};

use crate::quality_heldout::load_heldout;
use crate::util::*;

fn demo_bundle() -> PathBuf {
    let dir = std::env::var_os("CTXD_DEMO_BUNDLE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/demo"));
    assert!(
        dir.join("bundle.toml").is_file(),
        "the trained demo bundle {} is missing (no bundle.toml): train it with models/train (see models/train/README.md)",
        dir.display()
    );
    dir
}

/// One `ctxd edit` of a held-out clip with the demo preset and one output per prompt (they
/// share one inversion, as a user's edits of one video do); each prompt's edited frames.
fn edit_clip(
    bundle: &std::path::Path,
    clip: &std::path::Path,
    source: &str,
    prompts: &[&str],
    out_dir: &std::path::Path,
) -> Vec<Vec<ctxd::media::RgbFrame>> {
    let mut cmd = ctxd();
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("-q")
        .arg("edit")
        .arg(clip)
        .args(["--preset", "demo", "--bundle"])
        .arg(bundle)
        .args(["--source", source]);
    for p in prompts {
        cmd.args(["--prompt", p]);
    }
    run_ok(cmd.arg("--out-dir").arg(out_dir));
    let (stem, ext) = ctxd::pipeline::spec::stem_and_ext(clip);
    prompts
        .iter()
        .map(|p| {
            let name = ctxd::pipeline::spec::sanitize_name(p);
            let out = ctxd::pipeline::spec::output_path(out_dir, &stem, &name, &ext);
            quality::read_frames(&out).expect("decode the edited clip")
        })
        .collect()
}

/// `ctxd -q edit CLIP ARGS --bundle BUNDLE --prompt-file FILE --out-dir OUT`, which must succeed.
fn edit_with_prompt_file(
    bundle: &std::path::Path,
    clip: &std::path::Path,
    prompt_file: &std::path::Path,
    out_dir: &std::path::Path,
    args: &[&str],
) {
    run_ok(
        ctxd()
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .arg("-q")
            .arg("edit")
            .arg(clip)
            .args(args)
            .arg("--bundle")
            .arg(bundle)
            .arg("--prompt-file")
            .arg(prompt_file)
            .arg("--out-dir")
            .arg(out_dir),
    );
}

/// One held-out edit of each kind, through the binary with the demo preset: the asked-for
/// attribute appears, the object count and its path are kept. Ignored until the shipped
/// bundle gained its trained decoder (models/train/README.md, "a trained decoder"): before
/// it, the square-to-diamond edit kept the path but came out with edges too ragged for the
/// analyser to name a shape; now it reads "purple diamond" (motion error 1.15 px of the
/// 1.5 allowed after DDIM inversion, 0.95 px after the preset's edit-friendly one; the
/// background edit 0.46 px).
#[test]
fn demo_edits_change_what_was_asked_and_keep_count_and_motion() {
    let bundle = demo_bundle();
    let set = load_heldout();
    let analyser = Analyser::new(set.palette.clone(), AnalyserConfig::default());
    // One edit of each kind, each on its own clip: the first one-object clips in the set, so
    // the choice is fixed by heldout.json alone.
    let single: Vec<_> = set
        .clips
        .iter()
        .filter(|c| c.labels.objects.len() == 1)
        .collect();
    assert!(
        single.len() >= 3,
        "heldout.json has fewer than 3 one-object clips"
    );
    let d = Dir::new();
    let mut failures = Vec::new();
    for (clip, kind) in single.iter().zip(EditKind::ALL) {
        let edit = clip
            .edit(kind)
            .unwrap_or_else(|| panic!("{}: no {} edit", clip.file, kind.name()));
        let frames = edit_clip(
            &bundle,
            &set.path_of(clip),
            &clip.caption,
            &[&edit.prompt],
            d.root(),
        )
        .remove(0);
        let expected = clip.expected_after(edit);
        let cmp = score::compare(&analyser.clip(&frames), &expected);
        let what = format!(
            "{} {} edit ({:?} → {:?}): saw {} {} background, {} objects {:?}, motion error {:?} px, {} ghost frames",
            clip.file,
            kind.name(),
            clip.caption,
            edit.prompt,
            cmp.texture,
            cmp.background,
            cmp.object_count,
            cmp.objects
                .iter()
                .map(|o| format!(
                    "{} {}",
                    o.colour.as_deref().unwrap_or("?"),
                    o.shape.map_or("?".to_string(), |s| s.to_string())
                ))
                .collect::<Vec<_>>(),
            cmp.motion_error_px,
            cmp.ghost_frames
        );
        eprintln!("{what}");
        if !cmp.success(kind, edit.target) {
            failures.push(format!("the edit did not happen: {what}"));
        }
        if !cmp.count_ok {
            failures.push(format!("the object count changed: {what}"));
        }
        if !cmp.motion_error_px.is_some_and(|m| m <= 1.5) {
            failures.push(format!("the motion was not kept: {what}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Two edits of one video share its inversion, each with its own strength from a prompt
/// file: on the first one-object held-out clip, the colour edit at the preset's 0.8 and the
/// background edit at 0.6 (so it starts part way along the colour edit's inversion, as the
/// demo clip's sidecar has it; each report says the strength it ran) show the asked-for
/// attribute and keep the object count and its path (median <= 1.5 px off; the background
/// edit, which runs only the least noisy steps, 0.40 px, against 0.52 at 0.8; 0.35 and 0.59
/// px for the two after the preset's edit-friendly inversion). The sidecar's colour edit runs
/// with settings of its own (strength 0.6, blending, guidance 3); this check stays at the
/// preset's 0.8, where after DDIM inversion the square had drifted 6 px, then 3.3, then 0.95.
#[test]
fn the_shipped_demo_bundle_changes_colour_and_background_and_keeps_count_and_motion() {
    let bundle = demo_bundle();
    let set = load_heldout();
    let analyser = Analyser::new(set.palette.clone(), AnalyserConfig::default());
    let clip = set
        .clips
        .iter()
        .find(|c| c.labels.objects.len() == 1)
        .expect("a one-object clip");
    let d = Dir::new();
    let mut failures = Vec::new();
    let kinds = [EditKind::Colour, EditKind::Background];
    let edits: Vec<_> = kinds
        .iter()
        .map(|k| clip.edit(*k).expect("an edit of each kind"))
        .collect();
    let prompt_file = d.path("edits.prompt.toml");
    std::fs::write(
        &prompt_file,
        format!(
            "source = {:?}\n\n[[edit]]\nname = \"colour\"\nprompt = {:?}\n\n\
             [[edit]]\nname = \"background\"\nprompt = {:?}\nstrength = 0.6\n",
            clip.caption, edits[0].prompt, edits[1].prompt
        ),
    )
    .unwrap();
    let out_dir = d.path("out");
    // No --preset: the bundle names its own (bundle.toml `preset = "demo"`), which the
    // reports' strength 0.8 shows (the default preset's is 1). --short-side 0 keeps a
    // regression from running the 64-px networks at 512 px (minutes and many GB).
    edit_with_prompt_file(
        &bundle,
        &set.path_of(clip),
        &prompt_file,
        &out_dir,
        &["--short-side", "0"],
    );
    let (stem, ext) = ctxd::pipeline::spec::stem_and_ext(&set.path_of(clip));
    for ((kind, edit), strength) in kinds.into_iter().zip(edits).zip([None, Some(0.6)]) {
        let out = ctxd::pipeline::spec::output_path(&out_dir, &stem, kind.name(), &ext);
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.with_extension("json")).unwrap()).unwrap();
        assert_eq!(
            report["edit"]["strength"].as_f64(),
            strength,
            "{} edit's report: {}",
            kind.name(),
            report["edit"]
        );
        assert_eq!(report["job"]["strength"].as_f64(), Some(0.8));
        let max_px = 1.5;
        let frames = quality::read_frames(&out).expect("decode the edited clip");
        let cmp = score::compare(&analyser.clip(&frames), &clip.expected_after(edit));
        let kept_path = cmp.motion_error_px.is_some_and(|m| m <= max_px);
        eprintln!(
            "{} {} edit: motion error {:?} px",
            clip.file,
            kind.name(),
            cmp.motion_error_px
        );
        if !cmp.success(kind, edit.target) || !cmp.count_ok || !kept_path {
            failures.push(format!(
                "{} {} edit {:?}: saw a {} {} background, objects {:?}, motion error {:?} px (at most {max_px})",
                clip.file,
                kind.name(),
                edit.prompt,
                cmp.texture,
                cmp.background,
                cmp.objects
                    .iter()
                    .map(|o| o.colour.as_deref().unwrap_or("?").to_string())
                    .collect::<Vec<_>>(),
                cmp.motion_error_px
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Held-out clip `file`'s shape edit through `ctxd edit` with the demo preset, twice from one
/// prompt file (so both share one inversion), blended at 0.4, each with its own extra
/// `[[edit]]` lines: each output judged against the edit's expected clip, and the edit's target.
fn two_shape_edits(file: &str, extras: [&str; 2]) -> ([score::Comparison; 2], Option<usize>) {
    let bundle = demo_bundle();
    let set = load_heldout();
    let analyser = Analyser::new(set.palette.clone(), AnalyserConfig::default());
    let clip = set
        .clips
        .iter()
        .find(|c| c.file == file)
        .unwrap_or_else(|| panic!("held-out clip {file}"));
    let edit = clip.edit(EditKind::Shape).expect("a shape edit");
    let d = Dir::new();
    let prompt_file = d.path("edits.prompt.toml");
    let mut toml = format!("source = {:?}\n", clip.caption);
    for (i, extra) in extras.iter().enumerate() {
        toml += &format!(
            "\n[[edit]]\nname = \"e{i}\"\nprompt = {:?}\nblend = 0.4\n{extra}\n",
            edit.prompt
        );
    }
    std::fs::write(&prompt_file, toml).unwrap();
    let out_dir = d.path("out");
    edit_with_prompt_file(
        &bundle,
        &set.path_of(clip),
        &prompt_file,
        &out_dir,
        &["--preset", "demo"],
    );
    let (stem, ext) = ctxd::pipeline::spec::stem_and_ext(&set.path_of(clip));
    let judged = [0, 1].map(|i| {
        let out = ctxd::pipeline::spec::output_path(&out_dir, &stem, &format!("e{i}"), &ext);
        let frames = quality::read_frames(&out).expect("decode the edited clip");
        score::compare(&analyser.clip(&frames), &clip.expected_after(edit))
    });
    (judged, edit.target)
}

const HOLD: &str = "layout = { from = 0.6, until = 0.7 }";

/// A layout hold (`layout = { from, until }`, the demo clip's sidecar's shape setting) on the
/// held-out shape edit it was built for: clip 064, one green diamond asked to become a
/// triangle. Without the hold the edit's first steps, which see only where the diamond's mass
/// was, put the triangle's mass there, and its labelled place (its box's centre) ends 1.96 px
/// up; with the hold those steps take their estimate from the source noised to 0.6, where the
/// UNet still sees the diamond, and the triangle keeps the path (0.39 px). Both edits share one
/// inversion (the preset's edit-friendly one).
#[test]
fn a_layout_hold_keeps_a_shape_edit_to_a_triangle_on_its_path() {
    let ([free, held], target) = two_shape_edits("064.mp4", ["", HOLD]);
    let (m_free, m_held) = (free.motion_error_px, held.motion_error_px);
    eprintln!("064 shape edit: motion error {m_free:?} px free, {m_held:?} px held");
    assert!(
        held.success(EditKind::Shape, target) && held.count_ok,
        "the held edit shows {:?}",
        held.objects
    );
    assert!(
        m_held.is_some_and(|m| m <= 1.5) && m_held < m_free,
        "motion error {m_held:?} px held, {m_free:?} px free"
    );
}

/// Source detail (`source_detail`, the demo clip's sidecar's shape setting besides its layout
/// hold) on a held-out shape edit it fixes: clip 052, one yellow square asked to become a
/// circle. With all of the source's detail every step adds back the square's corners, which
/// the UNet at low noise keeps, and the edit still reads as a square; with half of it the
/// circle is drawn and the path kept (under each of the three draws measured). Both edits
/// share one inversion (the preset's edit-friendly one) and the hold.
#[test]
fn less_source_detail_lets_a_square_become_a_circle() {
    let half = format!("{HOLD}\nsource_detail = 0.5");
    let ([all, half], target) = two_shape_edits("052.mp4", [HOLD, &half]);
    eprintln!(
        "052 shape edit: all the detail {:?}, half {:?}",
        all.objects, half.objects
    );
    assert!(
        !all.success(EditKind::Shape, target),
        "with all the source's detail the edit shows {:?}",
        all.objects
    );
    assert!(
        half.success(EditKind::Shape, target)
            && half.count_ok
            && half.motion_error_px.is_some_and(|m| m <= 1.5),
        "with half of it the edit shows {:?}, motion error {:?} px",
        half.objects,
        half.motion_error_px
    );
}
