//! The tables of `ctxd bench quality`: a summary per kind of edit and mode, and the markdown
//! printed for them.

use std::collections::BTreeMap;

use serde::Serialize;

use super::EditRow;
use crate::quality::heldout::EditKind;
use crate::quality::score::Miss;

/// A table row: one edit kind (or all) under one mode.
#[derive(Debug, Serialize)]
pub(super) struct Summary {
    pub(super) kind: String,
    pub(super) n: usize,
    pub(super) success: f64,
    pub(super) success_and_preserve: f64,
    /// Edits that are not a success with the scene kept, and how many missed in each way
    /// (an edit can miss in more than one).
    pub(super) missed: usize,
    pub(super) misses: BTreeMap<Miss, usize>,
    /// Ghost frames / frames.
    pub(super) ghost_frame_rate: f64,
    /// Median over edits of each edit's median motion error (px).
    pub(super) motion_error_px: Option<f64>,
    /// Mean over edits of each edit's mean offset from the path, (x, y) px, y down: a drift
    /// every edit shares (a median motion error does not say which way).
    pub(super) mean_offset_px: Option<[f64; 2]>,
    pub(super) flicker: Option<f64>,
    pub(super) clip_t: Option<f64>,
    pub(super) clip_f: Option<f64>,
}

#[derive(Debug, Serialize)]
pub(super) struct ModeResult {
    pub(super) mode: &'static str,
    pub(super) seed: u64,
    pub(super) summaries: Vec<Summary>,
    /// Mean over clips.
    pub(super) reconstruction_psnr_db: Option<f64>,
    pub(super) wall_s: f64,
    pub(super) seconds_per_clip: f64,
}

/// One kind of edit (or all) under one context mode, over several draws of the inversion's
/// noise (`--seed 0,1,2`).
#[derive(Debug, Serialize)]
pub(super) struct DrawSummary {
    pub(super) mode: &'static str,
    pub(super) kind: String,
    /// Edits per draw.
    pub(super) n: usize,
    /// (seed, success + preserve) per draw, in the order run.
    pub(super) per_seed: Vec<(u64, f64)>,
    pub(super) mean: f64,
    pub(super) min: f64,
    pub(super) max: f64,
    /// Edits (clip and kind) that keep the scene under every draw, and under at least one.
    pub(super) kept_under_every_draw: usize,
    pub(super) kept_under_some_draw: usize,
}

/// Each kind's (then all kinds') success + preserve under each seed among `rows` (one mode's).
pub(super) fn draws(mode: &'static str, kinds: &[EditKind], rows: &[&EditRow]) -> Vec<DrawSummary> {
    let mut seeds: Vec<u64> = Vec::new();
    for r in rows {
        if !seeds.contains(&r.seed) {
            seeds.push(r.seed);
        }
    }
    let one = |kind: String, rows: Vec<&EditRow>| {
        let per_seed: Vec<(u64, f64)> = seeds
            .iter()
            .map(|&s| {
                let of: Vec<&&EditRow> = rows.iter().filter(|r| r.seed == s).collect();
                let kept = of.iter().filter(|r| r.success_and_preserve).count();
                (s, kept as f64 / of.len().max(1) as f64)
            })
            .collect();
        // per edit (clip, kind): under how many draws it kept the scene
        let mut kept: BTreeMap<(&str, EditKind), usize> = BTreeMap::new();
        for r in &rows {
            *kept.entry((r.clip.as_str(), r.kind)).or_default() +=
                usize::from(r.success_and_preserve);
        }
        let rates = per_seed.iter().map(|p| p.1);
        DrawSummary {
            mode,
            kind,
            n: kept.len(),
            mean: mean(rates.clone()).unwrap_or(0.0),
            min: rates.clone().fold(f64::INFINITY, f64::min),
            max: rates.fold(f64::NEG_INFINITY, f64::max),
            per_seed,
            kept_under_every_draw: kept.values().filter(|k| **k == seeds.len()).count(),
            kept_under_some_draw: kept.values().filter(|k| **k > 0).count(),
        }
    };
    let mut out: Vec<DrawSummary> = kinds
        .iter()
        .map(|k| {
            one(
                k.name().to_string(),
                rows.iter().copied().filter(|r| r.kind == *k).collect(),
            )
        })
        .collect();
    out.push(one("overall".into(), rows.to_vec()));
    out
}

/// The markdown table of `draws` (one mode's).
pub(super) fn draws_table(d: &[&DrawSummary]) -> String {
    let Some(first) = d.first() else {
        return String::new();
    };
    let seeds: Vec<u64> = first.per_seed.iter().map(|p| p.0).collect();
    let mut s = String::from("| edit | n |");
    for seed in &seeds {
        s.push_str(&format!(" seed {seed} |"));
    }
    s.push_str(" mean | min – max | kept under every draw | under at least one |\n|---|---:|");
    s.push_str(&"---:|".repeat(seeds.len() + 4));
    s.push('\n');
    for r in d {
        s.push_str(&format!("| {} | {} |", r.kind, r.n));
        for (_, v) in &r.per_seed {
            s.push_str(&format!(" {:.1} % |", 100.0 * v));
        }
        s.push_str(&format!(
            " {:.1} % | {:.1} – {:.1} % | {:.1} % | {:.1} % |\n",
            100.0 * r.mean,
            100.0 * r.min,
            100.0 * r.max,
            100.0 * r.kept_under_every_draw as f64 / r.n.max(1) as f64,
            100.0 * r.kept_under_some_draw as f64 / r.n.max(1) as f64,
        ));
    }
    s
}

pub(super) fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let (mut s, mut n) = (0.0, 0usize);
    for x in v {
        s += x;
        n += 1;
    }
    (n > 0).then(|| s / n as f64)
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    })
}

pub(super) fn summarise(kind: &str, rows: &[&EditRow]) -> Summary {
    let n = rows.len();
    let rate = |f: &dyn Fn(&EditRow) -> bool| {
        if n == 0 {
            0.0
        } else {
            rows.iter().filter(|r| f(r)).count() as f64 / n as f64
        }
    };
    let frames: usize = rows.iter().map(|r| r.frames).sum();
    Summary {
        kind: kind.to_string(),
        n,
        success: rate(&|r| r.success),
        success_and_preserve: rate(&|r| r.success_and_preserve),
        missed: rows.iter().filter(|r| !r.success_and_preserve).count(),
        misses: Miss::ALL
            .iter()
            .map(|m| (*m, rows.iter().filter(|r| r.misses.contains(m)).count()))
            .collect(),
        ghost_frame_rate: rows.iter().map(|r| r.ghost_frames).sum::<usize>() as f64
            / frames.max(1) as f64,
        motion_error_px: median(
            rows.iter()
                .filter_map(|r| r.motion_error_px.map(f64::from))
                .collect(),
        ),
        mean_offset_px: mean(
            rows.iter()
                .filter_map(|r| r.offset_px.map(|o| f64::from(o[0]))),
        )
        .zip(mean(
            rows.iter()
                .filter_map(|r| r.offset_px.map(|o| f64::from(o[1]))),
        ))
        .map(|(x, y)| [x, y]),
        flicker: mean(rows.iter().filter_map(|r| r.flicker)),
        clip_t: mean(rows.iter().filter_map(|r| r.clip_t)),
        clip_f: mean(rows.iter().filter_map(|r| r.clip_f)),
    }
}

pub(super) fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".to_string(), |x| format!("{x:.digits$}"))
}

/// The markdown table of why the edits of one mode missed.
pub(super) fn misses_table(m: &ModeResult) -> String {
    let mut s = String::from(
        "| edit | missed | asked-for attribute not there | off the path | object count | something else changed |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    for r in &m.summaries {
        let count = |k: Miss| r.misses.get(&k).copied().unwrap_or(0);
        s.push_str(&format!(
            "| {} | {} of {} | {} | {} | {} | {} |\n",
            r.kind,
            r.missed,
            r.n,
            count(Miss::NotEdited),
            count(Miss::OffPath),
            count(Miss::Count),
            count(Miss::Changed),
        ));
    }
    s
}

/// The markdown table of one mode.
pub(super) fn table(m: &ModeResult) -> String {
    let mut s = String::from(
        "| edit | n | success | success + preserve | ghost frames | motion error (px) | mean offset x, y (px) | flicker | CLIP-T | CLIP-F |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in &m.summaries {
        s.push_str(&format!(
            "| {} | {} | {:.1} % | {:.1} % | {:.1} % | {} | {} | {} | {} | {} |\n",
            r.kind,
            r.n,
            100.0 * r.success,
            100.0 * r.success_and_preserve,
            100.0 * r.ghost_frame_rate,
            fmt_opt(r.motion_error_px, 2),
            r.mean_offset_px
                .map_or("–".to_string(), |[x, y]| format!("{x:+.2}, {y:+.2}")),
            fmt_opt(r.flicker, 2),
            fmt_opt(r.clip_t, 3),
            fmt_opt(r.clip_f, 3),
        ));
    }
    s
}
