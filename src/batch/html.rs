//! `report.html`: one static page per batch that works from the file system with no server:
//! per clip an animated before|after preview and a before/after contact sheet, the
//! measurements, failures with their reasons; the table sorts by any column.
//!
//! Opened as `report.html#selftest`, the page checks itself once loaded (every image decoded,
//! the table sorts both ways, no script error) and writes the verdict into the `<body>`'s
//! `data-selftest` attribute, so a headless browser's DOM dump tells a test what a person
//! would see.

use std::path::Path;

use super::store::JobState;
use super::summary::SummaryRow;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A path relative to the report's folder, as a URL path (each segment escaped).
fn href(rel: &str) -> String {
    rel.split('/')
        .map(|seg| {
            seg.bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn num_cell(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(x) => format!("<td class=\"n\" data-v=\"{x}\">{x:.digits$}</td>"),
        None => "<td class=\"n\" data-v=\"\"></td>".into(),
    }
}

const STYLE: &str = r#"
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; margin: 0 0 .3em; }
.counts span { margin-right: 1.2em; }
table { border-collapse: collapse; margin-top: 1em; }
th, td { border-bottom: 1px solid #ddd; padding: .35em .6em; vertical-align: middle; text-align: left; }
th { cursor: pointer; user-select: none; background: #f4f4f4; position: sticky; top: 0; }
th[aria-sort="ascending"]::after { content: " \25B2"; }
th[aria-sort="descending"]::after { content: " \25BC"; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.failed td { background: #fff1f0; }
tr.pending td { color: #888; }
.status-done { color: #1a7f37; } .status-failed { color: #cf222e; font-weight: 600; }
img.preview { image-rendering: pixelated; max-height: 120px; display: block; }
details img { max-width: 640px; image-rendering: pixelated; }
.err { color: #cf222e; max-width: 40em; }
"#;

const SCRIPT: &str = r#"
(function () {
  var errors = [];
  window.addEventListener('error', function (e) { errors.push(String(e.message || e)); });
  var table = document.getElementById('jobs');
  function value(row, i, num) {
    var c = row.cells[i];
    var v = c.getAttribute('data-v');
    if (v === null) v = c.textContent;
    if (!num) return v.toLowerCase();
    return v === '' ? NaN : parseFloat(v);
  }
  function sortBy(i, dir) {
    var th = table.tHead.rows[0].cells[i];
    var num = th.getAttribute('data-type') === 'num';
    var rows = Array.prototype.slice.call(table.tBodies[0].rows);
    rows.sort(function (a, b) {
      var x = value(a, i, num), y = value(b, i, num);
      if (num) {  // empty cells last either way
        if (isNaN(x)) return isNaN(y) ? 0 : 1;
        if (isNaN(y)) return -1;
        return dir * (x - y);
      }
      return dir * (x < y ? -1 : x > y ? 1 : 0);
    });
    rows.forEach(function (r) { table.tBodies[0].appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (c) { c.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', dir > 0 ? 'ascending' : 'descending');
  }
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
    th.addEventListener('click', function () {
      sortBy(i, th.getAttribute('aria-sort') === 'ascending' ? -1 : 1);
    });
  });
  if (location.hash !== '#selftest') return;
  window.addEventListener('load', function () {
    var images = Array.prototype.slice.call(document.images);
    var broken = images.filter(function (im) { return !(im.complete && im.naturalWidth > 0); })
      .map(function (im) { return im.getAttribute('src'); });
    var checks = {};
    var ths = table.tHead.rows[0].cells;
    for (var i = 0; i < ths.length; i++) {
      if (ths[i].getAttribute('data-type') !== 'num') continue;
      ths[i].click();
      var up = Array.prototype.map.call(table.tBodies[0].rows, function (r) { return value(r, i, true); })
        .filter(function (v) { return !isNaN(v); });
      ths[i].click();
      var down = Array.prototype.map.call(table.tBodies[0].rows, function (r) { return value(r, i, true); })
        .filter(function (v) { return !isNaN(v); });
      var okUp = up.every(function (v, k) { return k === 0 || up[k - 1] <= v; });
      var okDown = down.every(function (v, k) { return k === 0 || down[k - 1] >= v; });
      checks[ths[i].textContent] = okUp && okDown;
    }
    document.body.setAttribute('data-selftest', JSON.stringify({
      images: images.length, broken: broken, sorted: checks,
      rows: table.tBodies[0].rows.length, errors: errors
    }));
  });
})();
"#;

/// The page for `rows`, with links relative to the folder it is written in.
pub fn render(title: &str, rows: &[SummaryRow]) -> String {
    let count = |s: JobState| rows.iter().filter(|r| r.status == s).count();
    let mut body = String::new();
    for r in rows {
        let status = r.status.as_str();
        let mut preview = String::new();
        if let Some(p) = &r.preview {
            preview.push_str(&format!(
                "<img class=\"preview\" src=\"{}\" alt=\"before | after\">",
                href(p)
            ));
        }
        if let Some(t) = &r.thumb {
            preview.push_str(&format!(
                "<details><summary>frames</summary><img src=\"{}\" alt=\"source and edits, frames across\"></details>",
                href(t)
            ));
        }
        let outputs: Vec<String> = r
            .outputs
            .iter()
            .map(|o| {
                let name = o.rsplit('/').next().unwrap_or(o);
                format!("<a href=\"{}\">{}</a>", href(o), esc(name))
            })
            .collect();
        let cache = match (r.cache_hits, r.cache_misses) {
            (Some(h), Some(m)) if h + m > 0 => {
                let share = h as f64 / (h + m) as f64;
                format!("<td class=\"n\" data-v=\"{share}\">{h}/{}</td>", h + m)
            }
            _ => "<td class=\"n\" data-v=\"\"></td>".into(),
        };
        body.push_str(&format!(
            "<tr class=\"{status}\"><td>{preview}</td><td title=\"{}\">{}</td><td class=\"status-{status}\">{status}</td>{}{}{cache}{}{}<td>{}</td><td class=\"err\">{}</td></tr>\n",
            esc(&r.input),
            esc(&r.rel),
            num_cell(r.frames.map(|f| f as f64), 0),
            num_cell(r.wall_s, 1),
            num_cell(r.clip_t, 3),
            num_cell(r.clip_f, 3),
            outputs.join("<br>"),
            esc(r.error.as_deref().unwrap_or("")),
        ));
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title><style>{STYLE}</style></head>\n<body>\n<h1>{t}</h1>\n<p class=\"counts\"><span>{n} jobs</span><span class=\"status-done\">{done} done</span><span class=\"{failed_class}\">{failed} failed</span><span>{pending} not run</span><span>{frames} frames</span></p>\n<p>Previews loop before | after; open <em>frames</em> for the source and every edit, frames across. Click a column to sort.</p>\n<table id=\"jobs\"><thead><tr><th>preview</th><th>input</th><th>status</th><th data-type=\"num\">frames</th><th data-type=\"num\">wall s</th><th data-type=\"num\">cache hits</th><th data-type=\"num\">CLIP-T</th><th data-type=\"num\">CLIP-F</th><th>outputs</th><th>error</th></tr></thead>\n<tbody>\n{body}</tbody></table>\n<script>{SCRIPT}</script>\n</body></html>\n",
        t = esc(title),
        n = rows.len(),
        done = count(JobState::Done),
        failed = count(JobState::Failed),
        failed_class = if count(JobState::Failed) > 0 { "status-failed" } else { "" },
        pending = count(JobState::Pending) + count(JobState::Running),
        frames = rows.iter().filter_map(|r| r.frames).sum::<u64>(),
    )
}

/// Writes `report.html` into `dir`.
///
/// # Errors
/// It cannot be written.
pub fn write(dir: &Path, title: &str, rows: &[SummaryRow]) -> std::io::Result<std::path::PathBuf> {
    let path = dir.join("report.html");
    crate::atomic::write_atomic(&path, render(title, rows).as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_links_are_encoded() {
        assert_eq!(esc("<a href='x'>&"), "&lt;a href=&#39;x&#39;&gt;&amp;");
        assert_eq!(href("a b/c#1.mp4"), "a%20b/c%231.mp4");
        assert_eq!(href("ümlaut.mp4"), "%C3%BCmlaut.mp4");
    }
}
