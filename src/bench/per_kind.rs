//! `ctxd bench quality --edit KIND:KEY=V,...`: the settings one kind of edit runs with, as a
//! prompt file's `[[edit]]` table sets them for one edit (its strength, local blending and
//! guidance), so the bench measures what a user who knows what kind of change they ask for
//! would run.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::diffusion::LayoutHold;
use crate::pipeline::job::EditTarget;
use crate::quality::EditKind;

/// One kind's own settings; None: the preset's (or the command line's).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KindSettings {
    #[serde(skip)]
    pub kind: EditKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strength: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blend: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guidance: Option<f32>,
    /// `layout=FROM:UNTIL`: the edit's layout hold (`diffusion::layout`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layout: Option<LayoutHold>,
    /// `source_detail=D`: the share of the source's detail the edit adds back after an
    /// edit-friendly inversion (`diffusion::detail`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_detail: Option<f64>,
    /// `negative=source`: the clip's own caption is the edit's negative prompt, so guidance
    /// pushes away from what the source shows rather than from the unconditional image.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub negative_source: bool,
}

/// Parses an edit kind's name: colour, shape or background.
pub fn parse_kind(s: &str) -> Result<EditKind, String> {
    EditKind::ALL
        .into_iter()
        .find(|k| k.name() == s.trim())
        .ok_or_else(|| format!("'{s}' is not an edit kind (colour, shape, background)"))
}

/// Parses `colour:strength=0.9,blend=0.3` (keys strength, blend, guidance, source_detail;
/// `negative=source`; `layout=FROM:UNTIL`).
pub fn parse(s: &str) -> Result<KindSettings, String> {
    let (kind, rest) = s.split_once(':').ok_or_else(|| {
        format!("'{s}': expected KIND:KEY=VALUE[,KEY=VALUE...], e.g. background:strength=0.6")
    })?;
    let kind = parse_kind(kind)?;
    let mut out = KindSettings::none(kind);
    for pair in rest.split(',') {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("'{pair}': expected KEY=VALUE"))?;
        if key.trim() == "negative" {
            if value.trim() != "source" {
                return Err(format!(
                    "negative = '{value}': the only negative a kind can take is 'source' (the clip's caption)"
                ));
            }
            out.negative_source = true;
            continue;
        }
        if key.trim() == "layout" {
            out.layout = Some(value.trim().parse::<LayoutHold>()?);
            continue;
        }
        let v: f64 = value
            .trim()
            .parse()
            .map_err(|_| format!("{key} = '{value}' is not a number"))?;
        match key.trim() {
            "strength" if v > 0.0 && v <= 1.0 => out.strength = Some(v),
            "blend" if (0.0..=1.0).contains(&v) => out.blend = Some(v as f32),
            "guidance" if (0.0..=50.0).contains(&v) => out.guidance = Some(v as f32),
            "source_detail" if (0.0..=1.0).contains(&v) => out.source_detail = Some(v),
            k @ ("strength" | "blend" | "guidance" | "source_detail") => {
                return Err(format!("{k} = {v} is out of range"))
            }
            k => {
                return Err(format!(
                    "'{k}' is not a per-edit key (strength, blend, guidance, layout, source_detail, negative)"
                ))
            }
        }
    }
    Ok(out)
}

/// The settings of `kind`: the last `--edit` that names it wins, key by key.
pub fn for_kind(all: &[KindSettings], kind: EditKind) -> KindSettings {
    let mut out = KindSettings::none(kind);
    for k in all.iter().filter(|k| k.kind == kind) {
        out.strength = k.strength.or(out.strength);
        out.blend = k.blend.or(out.blend);
        out.guidance = k.guidance.or(out.guidance);
        out.layout = k.layout.or(out.layout);
        out.source_detail = k.source_detail.or(out.source_detail);
        out.negative_source |= k.negative_source;
    }
    out
}

impl KindSettings {
    /// No settings of its own: the preset's for everything.
    fn none(kind: EditKind) -> KindSettings {
        KindSettings {
            kind,
            strength: None,
            blend: None,
            guidance: None,
            layout: None,
            source_detail: None,
            negative_source: false,
        }
    }

    /// Sets them on an edit of this kind of a clip captioned `source`.
    pub fn apply(&self, target: &mut EditTarget, source: &str) {
        if self.negative_source {
            target.negative = Some(source.to_string());
        }
        if let Some(s) = self.strength {
            target.strength = Some(s);
        }
        if let Some(b) = self.blend {
            target.blend_threshold = Some(b);
        }
        if let Some(g) = self.guidance {
            target.guidance = g;
        }
        if let Some(h) = self.layout {
            target.layout = Some(h);
        }
        if let Some(d) = self.source_detail {
            target.source_detail = Some(d);
        }
    }

    fn is_empty(&self) -> bool {
        self.strength.is_none()
            && self.blend.is_none()
            && self.guidance.is_none()
            && self.layout.is_none()
            && self.source_detail.is_none()
            && !self.negative_source
    }

    /// `strength 0.6, blend 0.3` (empty when none is set).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(s) = self.strength {
            parts.push(format!("strength {s}"));
        }
        if let Some(b) = self.blend {
            parts.push(format!("blend {b}"));
        }
        if let Some(g) = self.guidance {
            parts.push(format!("guidance {g}"));
        }
        if let Some(h) = self.layout {
            parts.push(format!("layout held from {} until {}", h.from, h.until));
        }
        if let Some(d) = self.source_detail {
            parts.push(format!("source detail {d}"));
        }
        if self.negative_source {
            parts.push("negative: the source caption".to_string());
        }
        parts.join(", ")
    }
}

/// Every kind with settings of its own, by name (for the JSON and the table's heading).
pub fn by_name(all: &[KindSettings]) -> BTreeMap<&'static str, KindSettings> {
    EditKind::ALL
        .into_iter()
        .map(|k| (k.name(), for_kind(all, k)))
        .filter(|(_, s)| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_merges_and_refuses() {
        let a = parse("background:strength=0.6").unwrap();
        let b = parse("background: blend=0.3 , guidance=3").unwrap();
        let s = parse("shape:strength=0.8,layout=0.6:0.7,source_detail=0.5").unwrap();
        assert_eq!(
            s.layout,
            Some(LayoutHold {
                from: 0.6,
                until: 0.7
            })
        );
        assert_eq!(s.source_detail, Some(0.5));
        assert_eq!(
            s.describe(),
            "strength 0.8, layout held from 0.6 until 0.7, source detail 0.5"
        );
        assert!(parse("sky:blend=0.3")
            .unwrap_err()
            .contains("not an edit kind"));
        let c = parse("colour:strength=0.9").unwrap();
        let merged = for_kind(&[a.clone(), c, b], EditKind::Background);
        assert_eq!(
            (merged.strength, merged.blend, merged.guidance),
            (Some(0.6), Some(0.3), Some(3.0))
        );
        assert_eq!(merged.describe(), "strength 0.6, blend 0.3, guidance 3");
        assert_eq!(
            by_name(&[a]).keys().copied().collect::<Vec<_>>(),
            ["background"]
        );
        for bad in [
            "shape:strength=0",
            "shape:strength=1.5",
            "shape:blend=2",
            "shape:steps=3",
            "shape:layout=0.7:0.6",
            "shape:layout=0.6",
            "shape:source_detail=1.5",
            "shape:source_detail=-0.1",
            "shape:strength",
            "shape",
            "shape:strength=x",
            "shape:negative=a red circle",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn negative_source_puts_the_caption_in_the_negative_prompt() {
        let s = for_kind(
            &[parse("shape:negative=source,guidance=3").unwrap()],
            EditKind::Shape,
        );
        assert!(s.negative_source);
        assert_eq!(s.describe(), "guidance 3, negative: the source caption");
        let mut t = EditTarget {
            name: "shape".into(),
            prompt: "a red circle".into(),
            negative: None,
            guidance: 1.0,
            seed: 0,
            output: "out.mp4".into(),
            blend: false,
            strength: None,
            blend_threshold: None,
            layout: None,
            source_detail: None,
        };
        s.apply(&mut t, "a red square");
        assert_eq!(
            (t.negative.as_deref(), t.guidance),
            (Some("a red square"), 3.0)
        );
        KindSettings::none(EditKind::Shape).apply(&mut t, "a blue square");
        assert_eq!(
            t.negative.as_deref(),
            Some("a red square"),
            "no setting, no change"
        );
    }
}
