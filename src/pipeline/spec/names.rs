//! Output names and paths: [`sanitize_name`] for an edit's name, unique names within a
//! job, and [`output_path`] (`<stem>.<name>.<ext>`, always inside the output folder).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::{EditSpec, MAX_NAME_LEN};

/// An output name: `raw` lower-cased, characters outside `[a-z0-9_-]` turned into `-`, runs
/// of `-` collapsed, `-` and `_` trimmed from the ends, cut to [`MAX_NAME_LEN`] (at a `-`
/// where one is near), and `"edit"` when nothing is left. The result has no `.` and no path
/// separator, so `<stem>.<name>.<ext>` stays in its folder.
pub fn sanitize_name(raw: &str) -> String {
    let s = slug(raw);
    if s.is_empty() {
        "edit".to_owned()
    } else {
        s
    }
}

/// [`sanitize_name`] without the fallback: may be empty.
fn slug(raw: &str) -> String {
    let mut s = String::with_capacity(raw.len());
    for c in raw.chars().flat_map(char::to_lowercase) {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
            c
        } else {
            '-'
        };
        if !(c == '-' && s.ends_with('-')) {
            s.push(c);
        }
    }
    let s = s.trim_matches(['-', '_']);
    if s.len() <= MAX_NAME_LEN {
        return s.to_owned();
    }
    // ASCII from here on, so byte indices are character boundaries.
    let mut cut = &s[..MAX_NAME_LEN];
    if s.as_bytes()[MAX_NAME_LEN] != b'-' {
        // Mid-word: end at the last word boundary rather than half a word.
        if let Some(i) = cut.rfind('-').filter(|&i| i > 0) {
            cut = &cut[..i];
        }
    }
    cut.trim_end_matches(['-', '_']).to_owned()
}

/// The explicit name if it has anything left after sanitizing, else a slug of the prompt.
pub(super) fn edit_name(spec: &EditSpec) -> String {
    spec.name
        .as_deref()
        .map(slug)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| sanitize_name(&spec.prompt))
}

/// `name`, or `name-2`, `name-3`, … (still at most [`MAX_NAME_LEN`]) if already used.
pub(super) fn unique_name(name: String, used: &mut HashSet<String>) -> String {
    if used.insert(name.clone()) {
        return name;
    }
    let mut n = 2usize;
    loop {
        let suffix = format!("-{n}");
        let keep = name.len().min(MAX_NAME_LEN - suffix.len());
        let candidate = format!("{}{suffix}", name[..keep].trim_end_matches(['-', '_']));
        if used.insert(candidate.clone()) {
            return candidate;
        }
        n += 1;
    }
}

/// An input's file stem and extension as output names use them (`video` and `mp4` where it
/// has none).
pub fn stem_and_ext(input: &Path) -> (String, String) {
    let part = |s: Option<&std::ffi::OsStr>, default: &str| {
        s.map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| default.into())
    };
    (
        part(input.file_stem(), "video"),
        part(input.extension(), "mp4"),
    )
}

/// Each edit's output for `input` in `out_dir` ([`output_path`]), in the edits' order.
pub fn output_paths(out_dir: &Path, input: &Path, edits: &[super::Edit]) -> Vec<PathBuf> {
    let (stem, ext) = stem_and_ext(input);
    edits
        .iter()
        .map(|e| output_path(out_dir, &stem, &e.name, &ext))
        .collect()
}

/// `<out_dir>/<input_stem>.<edit_name>.<ext>`, always a direct child of `out_dir`.
///
/// `edit_name` goes through [`sanitize_name`] again; path separators and NULs in
/// `input_stem` become `_` (an empty stem becomes `output`); `ext` keeps only ASCII letters
/// and digits, lower-cased (none left: no extension).
pub fn output_path(out_dir: &Path, input_stem: &str, edit_name: &str, ext: &str) -> PathBuf {
    let stem: String = input_stem
        .chars()
        .map(|c| {
            if matches!(c, '/' | '\\' | '\0') {
                '_'
            } else {
                c
            }
        })
        .collect();
    let stem = if stem.is_empty() { "output" } else { &stem };
    let name = sanitize_name(edit_name);
    let ext: String = ext
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let file = if ext.is_empty() {
        format!("{stem}.{name}")
    } else {
        format!("{stem}.{name}.{ext}")
    };
    out_dir.join(file)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{cli, preset, toml};
    use super::super::JobSpec;
    use super::*;

    #[test]
    fn names_are_sanitized() {
        assert_eq!(sanitize_name("../../etc/passwd"), "etc-passwd");
        assert_eq!(sanitize_name(""), "edit");
        assert_eq!(sanitize_name(".."), "edit");
        assert_eq!(sanitize_name("."), "edit");
        assert_eq!(sanitize_name("猫"), "edit");
        assert_eq!(sanitize_name("Café au Lait"), "caf-au-lait");
        assert_eq!(
            sanitize_name("A Cat, wearing  Sunglasses!"),
            "a-cat-wearing-sunglasses"
        );
        assert_eq!(sanitize_name("__keep_under_scores__"), "keep_under_scores");
        assert_eq!(sanitize_name("C:\\x\\y"), "c-x-y");
        let long = sanitize_name(
            "a photorealistic golden retriever running on a beach at sunset in the rain",
        );
        assert_eq!(long, "a-photorealistic-golden-retriever-running-on-a");
        assert!(long.len() <= MAX_NAME_LEN);
        let word = sanitize_name(&"x".repeat(100));
        assert_eq!(word.len(), MAX_NAME_LEN);

        let mut used = HashSet::new();
        let names: Vec<_> = ["cat", "cat", "cat-2", "cat"]
            .into_iter()
            .map(|n| unique_name(n.to_owned(), &mut used))
            .collect();
        assert_eq!(names, ["cat", "cat-2", "cat-2-2", "cat-3"]);
        let mut used = HashSet::new();
        unique_name("y".repeat(48), &mut used);
        let second = unique_name("y".repeat(48), &mut used);
        assert_eq!(second.len(), MAX_NAME_LEN);
        assert!(second.ends_with("-2"));
    }

    #[test]
    fn edit_names_from_names_or_prompts() {
        let p = preset("default");
        let sidecar = toml(
            r#"
source = "a dog"
[[edit]]
prompt = "A tiger"
name = "../../etc/passwd"
[[edit]]
prompt = "A tiger"
[[edit]]
prompt = "A tiger"
name = "猫"
"#,
            "clip.prompt.toml",
        );
        let job = JobSpec::resolve(&p, None, Some(&sidecar), &cli()).unwrap();
        let names: Vec<_> = job.edits.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["etc-passwd", "a-tiger", "a-tiger-2"]);
    }

    #[test]
    fn output_path_stays_in_the_folder() {
        let out = Path::new("/out");
        assert_eq!(
            output_path(out, "clip", "tiger", "mp4"),
            Path::new("/out/clip.tiger.mp4")
        );
        for (stem, name, ext) in [
            ("clip", "../../etc/passwd", "mp4"),
            ("..", "..", ".."),
            ("../x", "/abs", "/mp4"),
            ("", "", ""),
            ("a\\b", "x/y", ".MP4"),
        ] {
            let p = output_path(out, stem, name, ext);
            assert_eq!(p.parent(), Some(out), "{p:?}");
            let file = p.file_name().unwrap().to_str().unwrap();
            assert!(file != "." && file != ".." && !file.contains('/'), "{p:?}");
        }
        assert_eq!(output_path(out, "", "", ""), Path::new("/out/output.edit"));
        assert_eq!(
            output_path(out, "a\\b", "x/y", ".MP4"),
            Path::new("/out/a_b.x-y.mp4")
        );
    }
}
