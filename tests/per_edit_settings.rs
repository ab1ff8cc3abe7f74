//! Settings an `[[edit]]` gives itself (strength, local blending) beside a video's other
//! edits, through the library's engine on the tiny bundle.

use std::path::PathBuf;

use ctxd::diffusion::ContextMode;
use ctxd::pipeline::graph;

use crate::pipeline_edit::job;
use crate::util::*;

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
        let targets: Vec<(&str, &str, PathBuf)> = edits
            .iter()
            .enumerate()
            .map(|(i, e)| {
                (
                    ["first", "second"][i],
                    e.0,
                    d.path(&format!("{name}.{i}.mkv")),
                )
            })
            .collect();
        let mut j = job(src.clone(), "tiny", &targets, "a video", 10);
        j.context = ContextMode::Source;
        j.encode.codec = Some("ffv1".into());
        j.strength = strength;
        j.blend = blend;
        for (t, e) in j.edits.iter_mut().zip(edits) {
            (t.strength, t.blend_threshold) = (e.1, e.2);
        }
        assert_eq!(graph::run(&j, &|_| {}).unwrap().len(), edits.len());
        targets
            .iter()
            .map(|(_, _, o)| rgb_frames(o).2)
            .collect::<Vec<_>>()
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
