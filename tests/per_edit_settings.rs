//! Settings an `[[edit]]` gives itself (strength, local blending) beside a video's other
//! edits, through the library's engine on the tiny bundle.

use std::path::PathBuf;

use ctxd::diffusion::{ContextMode, Inversion, LayoutHold};
use ctxd::pipeline::graph;

use crate::pipeline_edit::job;
use crate::util::*;

/// Runs a job on the tiny bundle over `src` with one output per prompt (ffv1, context
/// `source`), `set` adjusting the job and its edits first; each output's frames.
fn run_edits(
    d: &Dir,
    src: &std::path::Path,
    name: &str,
    source: &str,
    prompts: &[&str],
    set: impl FnOnce(&mut ctxd::pipeline::job::EditJob),
) -> Vec<Vec<u8>> {
    let targets: Vec<(&str, &str, PathBuf)> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (
                ["first", "second"][i],
                *p,
                d.path(&format!("{name}.{i}.mkv")),
            )
        })
        .collect();
    let mut j = job(src.to_path_buf(), "tiny", &targets, source, 10);
    j.context = ContextMode::Source;
    j.encode.codec = Some("ffv1".into());
    set(&mut j);
    assert_eq!(graph::run(&j, &|_| {}).unwrap().len(), prompts.len());
    targets.iter().map(|(_, _, o)| rgb_frames(o).2).collect()
}

/// An edit of lower strength than its video's others starts part way along their one
/// inversion: its output is the one a job at its strength alone writes, bit for bit, and not
/// the one at the job's. The same with local blending set for that edit alone (it follows the
/// inversion as far as the edit starts), beside an edit that does not blend.
#[test]
fn an_edit_of_lower_strength_starts_part_way_along_the_shared_inversion() {
    let d = Dir::new();
    let src = d.ffmpeg(
        "in.mp4",
        &strs(&args(&[&pattern("64x48", "12", 0.8)], &["-c:v", "libx264"])),
    );
    // Each edit's frames, from a job at `strength` and `blend` whose edits are (prompt, own
    // strength, own blend).
    type Own = (&'static str, Option<f64>, Option<f32>);
    let run = |name: &str, strength: f64, blend: f32, edits: &[Own]| {
        let prompts: Vec<&str> = edits.iter().map(|e| e.0).collect();
        run_edits(&d, &src, name, "a video", &prompts, |j| {
            (j.strength, j.blend) = (strength, blend);
            for (t, e) in j.edits.iter_mut().zip(edits) {
                (t.strength, t.blend_threshold) = (e.1, e.2);
            }
        })
    };
    let (red, blue) = ("a red video", "a blue video");
    for blend in [0.0, 0.3] {
        let own_blend = (blend > 0.0).then_some(blend);
        let shared = run(
            &format!("shared{blend}"),
            0.8,
            0.0,
            &[(red, None, None), (blue, Some(0.5), own_blend)],
        );
        let red_alone = run(&format!("red{blend}"), 0.8, 0.0, &[(red, None, None)]);
        let blue_low = run(
            &format!("bluelow{blend}"),
            0.5,
            blend,
            &[(blue, None, None)],
        );
        let blue_high = run(
            &format!("bluehigh{blend}"),
            0.8,
            blend,
            &[(blue, None, None)],
        );
        assert_eq!(
            mean_abs_diff(&shared[0], &red_alone[0]),
            0.0,
            "blend {blend}: the edit at the job's strength is unchanged"
        );
        assert_eq!(
            mean_abs_diff(&shared[1], &blue_low[0]),
            0.0,
            "blend {blend}: the edit at 0.5 is the one a job at 0.5 writes"
        );
        let apart = mean_abs_diff(&shared[1], &blue_high[0]);
        assert!(
            apart > 0.5,
            "blend {blend}: strength 0.5 and 0.8 differ by {apart:.3} levels only"
        );
    }
}

/// A layout hold (`diffusion::layout`) after an edit-friendly inversion: an edit under the
/// source prompt still gives the source back (the held steps' residuals are replayed under
/// the same hold), an edit under another prompt lands elsewhere than without the hold, and an
/// edit beside it that holds nothing is untouched by it.
#[test]
fn a_layout_hold_keeps_the_source_exact_and_moves_only_its_own_edit() {
    let d = Dir::new();
    let src = d.ffmpeg(
        "in.mp4",
        &strs(&args(&[&pattern("64x48", "8", 0.8)], &["-c:v", "libx264"])),
    );
    let hold = LayoutHold {
        from: 0.5,
        until: 0.6,
    };
    let source = "a video";
    // Edits as (prompt, guidance, hold).
    let run = |name: &str, edits: &[(&'static str, f32, Option<LayoutHold>)]| {
        let prompts: Vec<&str> = edits.iter().map(|e| e.0).collect();
        run_edits(&d, &src, name, source, &prompts, |j| {
            j.inversion = Inversion::Ddpm;
            for (t, e) in j.edits.iter_mut().zip(edits) {
                (t.guidance, t.layout) = (e.1, e.2);
            }
        })
    };
    let red = "a red video";
    let held = run("held", &[(red, 2.0, Some(hold)), (red, 2.0, None)]);
    let plain = run("plain", &[(red, 2.0, None)]);
    let apart = mean_abs_diff(&held[0], &plain[0]);
    assert!(
        apart > 0.5,
        "the hold moved the edit by {apart:.3} levels only"
    );
    assert_eq!(
        mean_abs_diff(&held[1], &plain[0]),
        0.0,
        "the edit beside it"
    );
    // The source prompt without guidance (the inversion's) rebuilds the source, hold or not.
    let same = run("same", &[(source, 1.0, Some(hold)), (source, 1.0, None)]);
    let off = mean_abs_diff(&same[0], &same[1]);
    assert!(
        off < 0.05,
        "the source prompt under the hold is {off:.3} levels off"
    );
}

/// Source detail (`diffusion::detail`) after an edit-friendly inversion: an edit that keeps
/// half of it lands elsewhere than one that keeps all of it, keeping all of it is the same as
/// not setting it (bit for bit), the edit beside it is untouched, and the source prompt, which
/// gives the source back with all of it, no longer does with none.
#[test]
fn less_source_detail_changes_only_its_own_edit() {
    let d = Dir::new();
    let src = d.ffmpeg(
        "in.mp4",
        &strs(&args(&[&pattern("64x48", "8", 0.8)], &["-c:v", "libx264"])),
    );
    let source = "a video";
    // Edits as (prompt, guidance, source detail).
    let run = |name: &str, edits: &[(&'static str, f32, Option<f64>)]| {
        let prompts: Vec<&str> = edits.iter().map(|e| e.0).collect();
        run_edits(&d, &src, name, source, &prompts, |j| {
            j.inversion = Inversion::Ddpm;
            for (t, e) in j.edits.iter_mut().zip(edits) {
                (t.guidance, t.source_detail) = (e.1, e.2);
            }
        })
    };
    let red = "a red video";
    let half = run("half", &[(red, 2.0, Some(0.5)), (red, 2.0, None)]);
    let all = run("all", &[(red, 2.0, Some(1.0))]);
    assert_eq!(mean_abs_diff(&all[0], &half[1]), 0.0, "all of it = unset");
    let apart = mean_abs_diff(&half[0], &all[0]);
    assert!(
        apart > 0.5,
        "half the detail moved the edit by {apart:.3} levels only"
    );
    let same = run("same", &[(source, 1.0, Some(0.0)), (source, 1.0, None)]);
    let off = mean_abs_diff(&same[0], &same[1]);
    assert!(
        off > 0.5,
        "the source prompt without the source's detail is only {off:.3} levels off"
    );
}
