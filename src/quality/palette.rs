//! The domain's vocabulary: named object and background colours, the shapes and the
//! background textures, as the generator wrote them into `heldout.json` (`"palette"`).
//! Shapes and textures are a closed set here because the analyser has to know their geometry;
//! a palette naming one it does not know is refused.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{QualityError, Result};

/// An axis-aligned shape of the demo domain (`domain.py::shape_mask`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Circle,
    Square,
    /// Pointing up; its labelled position is the bounding box's centre, not the centroid.
    Triangle,
    /// A square turned 45°.
    Diamond,
}

impl Shape {
    pub const ALL: [Shape; 4] = [
        Shape::Circle,
        Shape::Square,
        Shape::Triangle,
        Shape::Diamond,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Diamond => "diamond",
        }
    }

    pub fn from_name(s: &str) -> Option<Shape> {
        Shape::ALL.into_iter().find(|x| x.name() == s)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the background is modulated (`domain.py::background`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Texture {
    Plain,
    /// Vertical stripes: constant down each column.
    Striped,
    Checkered,
}

impl Texture {
    pub const ALL: [Texture; 3] = [Texture::Plain, Texture::Striped, Texture::Checkered];

    pub fn name(self) -> &'static str {
        match self {
            Texture::Plain => "plain",
            Texture::Striped => "striped",
            Texture::Checkered => "checkered",
        }
    }

    pub fn from_name(s: &str) -> Option<Texture> {
        Texture::ALL.into_iter().find(|x| x.name() == s)
    }

    /// Plain or not: the coarse class, for checks that cannot tell stripes from checks.
    pub fn textured(self) -> bool {
        self != Texture::Plain
    }
}

impl fmt::Display for Texture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One named colour.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Swatch {
    pub name: String,
    pub rgb: [u8; 3],
}

impl Swatch {
    pub fn rgb_f32(&self) -> [f32; 3] {
        self.rgb.map(f32::from)
    }
}

/// The palette as written by `domain.py::palette()`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Palette {
    pub objects: Vec<Swatch>,
    pub backgrounds: Vec<Swatch>,
    pub shapes: Vec<Shape>,
    pub textures: Vec<Texture>,
}

/// The JSON form: `{"object": {name: [r, g, b]}, "background": {...}, "shapes": [..],
/// "textures": [..]}`.
#[derive(Debug, Deserialize)]
pub(crate) struct RawPalette {
    object: serde_json::Map<String, serde_json::Value>,
    background: serde_json::Map<String, serde_json::Value>,
    shapes: Vec<String>,
    textures: Vec<String>,
}

fn swatches(kind: &str, map: &serde_json::Map<String, serde_json::Value>) -> Result<Vec<Swatch>> {
    let mut out = Vec::new();
    for (name, v) in map {
        let rgb: [u8; 3] = serde_json::from_value(v.clone()).map_err(|_| {
            QualityError::Palette(format!(
                "{kind} colour '{name}' is {v}, expected [r, g, b] with 0..=255"
            ))
        })?;
        out.push(Swatch {
            name: name.clone(),
            rgb,
        });
    }
    if out.is_empty() {
        return Err(QualityError::Palette(format!("no {kind} colours")));
    }
    Ok(out)
}

impl TryFrom<RawPalette> for Palette {
    type Error = QualityError;

    fn try_from(raw: RawPalette) -> Result<Palette> {
        let shapes = raw
            .shapes
            .iter()
            .map(|s| {
                Shape::from_name(s).ok_or_else(|| {
                    QualityError::Palette(format!(
                        "unknown shape '{s}' (the analyser knows circle, square, triangle, diamond)"
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let textures = raw
            .textures
            .iter()
            .map(|s| {
                Texture::from_name(s).ok_or_else(|| {
                    QualityError::Palette(format!(
                        "unknown texture '{s}' (the analyser knows plain, striped, checkered)"
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if shapes.is_empty() {
            return Err(QualityError::Palette("no shapes".into()));
        }
        if !textures.contains(&Texture::Plain) {
            return Err(QualityError::Palette(
                "the textures must include plain".into(),
            ));
        }
        Ok(Palette {
            objects: swatches("object", &raw.object)?,
            backgrounds: swatches("background", &raw.background)?,
            shapes,
            textures,
        })
    }
}

impl Palette {
    /// Parses the `"palette"` value of `heldout.json`.
    ///
    /// # Errors
    /// `Palette` naming the bad entry.
    pub fn from_json(v: &serde_json::Value) -> Result<Palette> {
        let raw: RawPalette =
            serde_json::from_value(v.clone()).map_err(|e| QualityError::Palette(e.to_string()))?;
        raw.try_into()
    }

    pub fn object(&self, name: &str) -> Option<&Swatch> {
        self.objects.iter().find(|s| s.name == name)
    }

    pub fn background(&self, name: &str) -> Option<&Swatch> {
        self.backgrounds.iter().find(|s| s.name == name)
    }
}

pub(crate) fn dist2(a: [f32; 3], b: [f32; 3]) -> f32 {
    (0..3).map(|i| (a[i] - b[i]) * (a[i] - b[i])).sum()
}

/// Index and distance of the swatch nearest to `rgb` (the first on ties).
pub(crate) fn nearest(swatches: &[Swatch], rgb: [f32; 3]) -> (usize, f32) {
    let mut best = (0, f32::INFINITY);
    for (i, s) in swatches.iter().enumerate() {
        let d = dist2(rgb, s.rgb_f32());
        if d < best.1 {
            best = (i, d);
        }
    }
    (best.0, best.1.sqrt())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The demo domain's palette (`domain.py`), for tests that draw frames.
    pub fn demo() -> Palette {
        Palette::from_json(&serde_json::json!({
            "object": {"red": [220, 40, 40], "green": [40, 180, 60], "blue": [40, 80, 225],
                       "yellow": [235, 210, 40], "purple": [150, 55, 195]},
            "background": {"gray": [128, 128, 128], "white": [235, 235, 235],
                           "black": [28, 28, 28], "beige": [200, 180, 135]},
            "shapes": ["circle", "square", "triangle", "diamond"],
            "textures": ["plain", "striped", "checkered"]
        }))
        .unwrap()
    }

    #[test]
    fn parses_and_refuses_what_it_cannot_analyse() {
        let p = demo();
        assert_eq!(p.objects.len(), 5);
        assert_eq!(p.background("beige").unwrap().rgb, [200, 180, 135]);
        assert_eq!(
            p.objects[nearest(&p.objects, [210.0, 50.0, 45.0]).0].name,
            "red"
        );
        let bad = serde_json::json!({"object": {"red": [1, 2, 3]}, "background": {"k": [0, 0, 0]},
                                     "shapes": ["hexagon"], "textures": ["plain"]});
        let e = Palette::from_json(&bad).unwrap_err().to_string();
        assert!(e.contains("hexagon"), "{e}");
        let bad = serde_json::json!({"object": {"red": [1, 2, 300]}, "background": {"k": [0, 0, 0]},
                                     "shapes": ["circle"], "textures": ["plain"]});
        let e = Palette::from_json(&bad).unwrap_err().to_string();
        assert!(e.contains("red"), "{e}");
    }
}
