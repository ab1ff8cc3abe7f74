//! Validation shared by presets, prompt files and the command line: range checks on
//! values ([`Checker`]) and non-empty prompts ([`non_empty`]).

use std::ops::RangeInclusive;

use super::{Overrides, SpecError};

const STEPS: RangeInclusive<usize> = 1..=1000;
const GUIDANCE: RangeInclusive<f32> = 0.0..=50.0;
const SHORT_SIDE: RangeInclusive<u32> = 0..=8192;
/// A window's frames are held decoded and go through the UNet at once: beyond this a window
/// only buys memory (a huge one from a sidecar or `POST /jobs` aborted the process).
const WINDOW: RangeInclusive<usize> = 1..=super::MAX_WINDOW;
pub(super) const MULTIPLE: RangeInclusive<u32> = 1..=1024;

/// Range checks; `origin` names the file (and `[[edit]]`) or the command line.
pub(super) struct Checker<'a> {
    pub(super) origin: &'a str,
}

impl Checker<'_> {
    fn out_of_range(&self, field: &str, value: impl ToString, allowed: &str) -> SpecError {
        SpecError::OutOfRange {
            origin: self.origin.to_owned(),
            field: field.to_owned(),
            value: value.to_string(),
            allowed: allowed.to_owned(),
        }
    }

    pub(super) fn range<T>(&self, field: &str, v: T, r: RangeInclusive<T>) -> Result<(), SpecError>
    where
        T: PartialOrd + std::fmt::Display,
    {
        if r.contains(&v) {
            Ok(())
        } else {
            let allowed = format!("{}..={}", r.start(), r.end());
            Err(self.out_of_range(field, v, &allowed))
        }
    }

    pub(super) fn steps(&self, v: usize) -> Result<(), SpecError> {
        self.range("steps", v, STEPS)
    }

    pub(super) fn guidance(&self, v: f32) -> Result<(), SpecError> {
        self.range("guidance", v, GUIDANCE)
    }

    pub(super) fn blend(&self, v: f32) -> Result<(), SpecError> {
        self.range("blend", v, 0.0..=1.0)
    }

    /// Both noise levels between 0 and 1, `from` below `until`.
    pub(super) fn layout(&self, v: crate::diffusion::LayoutHold) -> Result<(), SpecError> {
        v.check().map_err(|_| {
            self.out_of_range(
                "layout",
                format!("{{ from = {}, until = {} }}", v.from, v.until),
                "0 < from < until < 1",
            )
        })
    }

    /// A share of the source's detail: 0 to 1.
    pub(super) fn source_detail(&self, v: f64) -> Result<(), SpecError> {
        self.range("source_detail", v, 0.0..=1.0)
    }

    /// 0 (off) up to the filter's largest strength.
    pub(super) fn deflicker(&self, v: f32) -> Result<(), SpecError> {
        self.range("deflicker", v, 0.0..=crate::media::deflicker::MAX_STRENGTH)
    }

    /// Greater than 0 (some step must run) and at most 1 (every step).
    pub(super) fn strength(&self, v: f64) -> Result<(), SpecError> {
        if v > 0.0 && v <= 1.0 {
            Ok(())
        } else {
            Err(self.out_of_range("strength", v, "0 < strength <= 1"))
        }
    }

    pub(super) fn eta(&self, v: f64) -> Result<(), SpecError> {
        if v >= 0.0 && v.is_finite() {
            Ok(())
        } else {
            Err(self.out_of_range("eta", v, ">= 0"))
        }
    }

    pub(super) fn window(&self, v: usize) -> Result<(), SpecError> {
        self.range("window", v, WINDOW)
    }

    pub(super) fn short_side(&self, v: u32) -> Result<(), SpecError> {
        self.range("short_side", v, SHORT_SIDE)
    }

    /// Each value on its own; `overlap < window` is checked after the merge.
    pub(super) fn overrides(&self, o: &Overrides) -> Result<(), SpecError> {
        if let Some(v) = o.steps {
            self.steps(v)?;
        }
        if let Some(v) = o.guidance {
            self.guidance(v)?;
        }
        if let Some(v) = o.eta {
            self.eta(v)?;
        }
        if let Some(v) = o.strength {
            self.strength(v)?;
        }
        if let Some(v) = o.deflicker {
            self.deflicker(v)?;
        }
        if let Some(v) = o.window {
            self.window(v)?;
        }
        if let Some(v) = o.short_side {
            self.short_side(v)?;
        }
        Ok(())
    }
}

/// `s` trimmed, or [`SpecError::Empty`].
pub(super) fn non_empty(s: &str, origin: &str, field: &str) -> Result<String, SpecError> {
    let s = s.trim();
    if s.is_empty() {
        Err(SpecError::Empty {
            origin: origin.to_owned(),
            field: field.to_owned(),
        })
    } else {
        Ok(s.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::test_support::{cli, preset, toml, toml_err};
    use super::super::{CliOverrides, JobSpec, PromptFormat};

    #[test]
    fn empty_prompts_and_bad_values_are_errors() {
        let err = toml_err(
            "[[edit]]\nprompt = \"a\"\n[[edit]]\nprompt = \"  \"\n",
            "c.prompt.toml",
        );
        assert_eq!(err, "c.prompt.toml: [[edit]] #2: prompt is empty");
        let err = toml_err("source = \"\"\n", "c.prompt.toml");
        assert_eq!(err, "c.prompt.toml: source is empty");
        let err = toml_err("[[edit]]\nprompt = \"a\"\nsteps = 1001\n", "c.prompt.toml");
        assert_eq!(
            err,
            "c.prompt.toml: [[edit]] #1: steps = 1001 is out of range (1..=1000)"
        );
        let err = PromptFormat::from_path(Path::new("clip.prompt.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("clip.prompt.yaml: not a prompt file"),
            "{err}"
        );

        let p = preset("default");
        let sidecar = toml(
            "source = \"a\"\n[[edit]]\nprompt = \"b\"\n",
            "c.prompt.toml",
        );
        let bad = CliOverrides {
            steps: Some(0),
            ..cli()
        };
        let err = JobSpec::resolve(&p, None, Some(&sidecar), &bad)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "command line: steps = 0 is out of range (1..=1000)");
        let bad = CliOverrides {
            prompts: vec![" ".into()],
            ..cli()
        };
        let err = JobSpec::resolve(&p, None, Some(&sidecar), &bad)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "command line: prompt is empty");
        let bad = CliOverrides {
            strength: Some(1.5),
            ..cli()
        };
        let err = JobSpec::resolve(&p, None, Some(&sidecar), &bad)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "command line: strength = 1.5 is out of range (0 < strength <= 1)"
        );
        let bad_file = toml_err("source = \"a\"\nstrength = 0\n", "d.prompt.toml");
        assert!(
            bad_file.contains("d.prompt.toml: strength = 0 is out of range (0 < strength <= 1)"),
            "{bad_file}"
        );
    }
}
