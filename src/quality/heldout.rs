//! The held-out set written by `models/train` (`write_heldout`): `heldout.json` beside clips
//! `000.mp4`, `001.mp4`, … Each clip has its labels (background, objects with their paths) and
//! three edits (colour, shape, background), each with the scene it should produce.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::palette::{Palette, Shape, Texture};
use super::score::{Expected, ExpectedObject};
use super::{QualityError, Result};

/// The held-out set: where it is, its palette and its clips.
#[derive(Debug, Clone)]
pub struct Heldout {
    pub dir: PathBuf,
    pub size: u32,
    pub frames: usize,
    pub fps: f64,
    pub palette: Palette,
    pub clips: Vec<HeldoutClip>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HeldoutClip {
    /// File name inside the held-out folder.
    pub file: String,
    /// What the clip shows: the source (inversion) prompt.
    pub caption: String,
    pub labels: Labels,
    pub edits: Vec<EditCase>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Labels {
    pub size: u32,
    pub frames: usize,
    pub background: BackgroundLabel,
    pub objects: Vec<ObjectLabel>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BackgroundLabel {
    pub colour: String,
    pub texture: Texture,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ObjectLabel {
    pub shape: Shape,
    pub colour: String,
    pub radius: f64,
    /// Labelled position (x, y) per frame, pixel units with (0, 0) the frame's corner.
    pub path: Vec<[f32; 2]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EditKind {
    Colour,
    Shape,
    Background,
}

impl EditKind {
    pub const ALL: [EditKind; 3] = [EditKind::Colour, EditKind::Shape, EditKind::Background];

    pub fn name(self) -> &'static str {
        match self {
            EditKind::Colour => "colour",
            EditKind::Shape => "shape",
            EditKind::Background => "background",
        }
    }
}

/// One edit of a clip: the prompt and the scene it should give.
#[derive(Debug, Clone, Deserialize)]
pub struct EditCase {
    pub kind: EditKind,
    pub prompt: String,
    /// Which object (left to right by x in the first frame) a colour or shape edit changes.
    pub target: Option<usize>,
    pub expect: ExpectLabels,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ExpectLabels {
    pub background: String,
    pub texture: Texture,
    /// Left to right by x in the first frame.
    pub objects: Vec<ExpectObject>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ExpectObject {
    pub shape: Shape,
    pub colour: String,
}

#[derive(Deserialize)]
struct RawHeldout {
    size: u32,
    frames: usize,
    fps: f64,
    palette: serde_json::Value,
    clips: Vec<HeldoutClip>,
}

impl Heldout {
    /// Reads `dir/heldout.json` and checks that every name in it is in its palette and every
    /// clip file exists.
    ///
    /// # Errors
    /// `Read` when the folder or a file is missing (the message says how the set is made),
    /// `Format` for a malformed or inconsistent `heldout.json`.
    pub fn load(dir: &Path) -> Result<Heldout> {
        let path = dir.join("heldout.json");
        let text = std::fs::read(&path).map_err(|e| QualityError::Read {
            path: path.clone(),
            cause: format!(
                "{e}; the held-out set is written by models/train/train.py (see models/train/README.md)"
            ),
        })?;
        let raw: RawHeldout = serde_json::from_slice(&text).map_err(|e| QualityError::Format {
            path: path.clone(),
            cause: e.to_string(),
        })?;
        let palette = Palette::from_json(&raw.palette).map_err(|e| QualityError::Format {
            path: path.clone(),
            cause: e.to_string(),
        })?;
        let bad = |cause: String| QualityError::Format {
            path: path.clone(),
            cause,
        };
        for c in &raw.clips {
            let file = dir.join(&c.file);
            if !file.is_file() {
                return Err(QualityError::Read {
                    path: file,
                    cause: "listed in heldout.json but missing".into(),
                });
            }
            let mut colours: Vec<(&str, bool)> = vec![(&c.labels.background.colour, false)];
            colours.extend(c.labels.objects.iter().map(|o| (o.colour.as_str(), true)));
            for e in &c.edits {
                colours.push((&e.expect.background, false));
                colours.extend(e.expect.objects.iter().map(|o| (o.colour.as_str(), true)));
                if e.expect.objects.len() != c.labels.objects.len() {
                    return Err(bad(format!(
                        "{}: the {} edit expects {} objects, the clip has {}",
                        c.file,
                        e.kind.name(),
                        e.expect.objects.len(),
                        c.labels.objects.len()
                    )));
                }
                if e.target.is_some_and(|t| t >= c.labels.objects.len()) {
                    return Err(bad(format!("{}: edit target out of range", c.file)));
                }
            }
            for (name, object) in colours {
                let known = if object {
                    palette.object(name).is_some()
                } else {
                    palette.background(name).is_some()
                };
                if !known {
                    return Err(bad(format!(
                        "{}: colour '{name}' is not in the palette",
                        c.file
                    )));
                }
            }
            if c.labels
                .objects
                .iter()
                .any(|o| o.path.len() != c.labels.frames)
            {
                return Err(bad(format!(
                    "{}: an object's path does not have one point per frame",
                    c.file
                )));
            }
        }
        Ok(Heldout {
            dir: dir.to_path_buf(),
            size: raw.size,
            frames: raw.frames,
            fps: raw.fps,
            palette,
            clips: raw.clips,
        })
    }

    pub fn path_of(&self, clip: &HeldoutClip) -> PathBuf {
        self.dir.join(&clip.file)
    }
}

impl HeldoutClip {
    /// The labelled objects, left to right by x in the first frame (the order of captions and
    /// of `expect.objects`).
    pub fn objects_left_to_right(&self) -> Vec<&ObjectLabel> {
        let mut v: Vec<&ObjectLabel> = self.labels.objects.iter().collect();
        v.sort_by(|a, b| a.path[0][0].total_cmp(&b.path[0][0]));
        v
    }

    /// The scene the source clip shows.
    pub fn expected(&self) -> Expected {
        Expected {
            background: self.labels.background.colour.clone(),
            texture: self.labels.background.texture,
            objects: self
                .objects_left_to_right()
                .into_iter()
                .map(|o| ExpectedObject {
                    shape: o.shape,
                    colour: o.colour.clone(),
                    path: o.path.clone(),
                })
                .collect(),
        }
    }

    /// The scene `edit` should produce: its attributes, on the source's paths.
    pub fn expected_after(&self, edit: &EditCase) -> Expected {
        Expected {
            background: edit.expect.background.clone(),
            texture: edit.expect.texture,
            objects: self
                .objects_left_to_right()
                .into_iter()
                .zip(&edit.expect.objects)
                .map(|(o, e)| ExpectedObject {
                    shape: e.shape,
                    colour: e.colour.clone(),
                    path: o.path.clone(),
                })
                .collect(),
        }
    }

    /// The edit of `kind`, if the clip has one.
    pub fn edit(&self, kind: EditKind) -> Option<&EditCase> {
        self.edits.iter().find(|e| e.kind == kind)
    }
}
