//! Naming outputs: a file (written to a temporary name, renamed into place when complete),
//! `-` (standard output, MPEG-TS), an HLS folder (a rolling playlist) or a URL FFmpeg can push
//! to (udp, tcp, srt: MPEG-TS; rtmp: FLV). The conventions are ffmpeg's own.

use std::fmt;
use std::path::{Path, PathBuf};

/// An output as the user named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputTarget {
    /// A finished file; the container comes from the extension.
    File(PathBuf),
    /// `-`: MPEG-TS on standard output, flushed packet by packet.
    Stdout,
    /// A folder (existing, or named with a trailing `/`) or a `.m3u8` path: an HLS playlist
    /// `index.m3u8` with a rolling window of segments beside it.
    Hls { playlist: PathBuf },
    /// `udp://`, `tcp://`, `srt://`, `rtmp://`... (and `file:` for a named pipe): written as
    /// it goes.
    Url(String),
}

/// Segment length and playlist size of an HLS output.
pub const HLS_SEGMENT_SECONDS: u32 = 2;
pub const HLS_LIST_SIZE: u32 = 6;

impl OutputTarget {
    pub fn parse(s: &str) -> OutputTarget {
        if s == "-" {
            return OutputTarget::Stdout;
        }
        if let Some((scheme, rest)) = s.split_once("://") {
            if !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric()) {
                let _ = rest;
                return OutputTarget::Url(s.to_string());
            }
        }
        let p = PathBuf::from(s);
        let is_playlist = p
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("m3u8"));
        if is_playlist {
            return OutputTarget::Hls { playlist: p };
        }
        if is_fifo(&p) {
            // A named pipe: MPEG-TS written into it as it goes, like stdout.
            return OutputTarget::Url(format!("file:{s}"));
        }
        if s.ends_with('/') || p.is_dir() {
            return OutputTarget::Hls {
                playlist: p.join("index.m3u8"),
            };
        }
        OutputTarget::File(p)
    }

    /// Written as it goes (no temporary file, no rename): everything but a file.
    pub fn is_live(&self) -> bool {
        !matches!(self, OutputTarget::File(_))
    }

    /// The muxer for a live target; None for a file (its extension decides).
    pub(crate) fn muxer(&self) -> Option<&'static str> {
        match self {
            OutputTarget::File(_) => None,
            OutputTarget::Stdout => Some("mpegts"),
            OutputTarget::Hls { .. } => Some("hls"),
            OutputTarget::Url(u) if u.starts_with("rtmp") => Some("flv"),
            OutputTarget::Url(_) => Some("mpegts"),
        }
    }

    /// The name FFmpeg opens for a live target.
    pub(crate) fn ffmpeg_name(&self) -> String {
        match self {
            OutputTarget::File(p) => p.display().to_string(),
            OutputTarget::Stdout => "pipe:1".into(),
            OutputTarget::Hls { playlist } => playlist.display().to_string(),
            OutputTarget::Url(u) => u.clone(),
        }
    }

    /// The path errors and reports name.
    pub fn shown(&self) -> PathBuf {
        match self {
            OutputTarget::File(p) => p.clone(),
            OutputTarget::Stdout => PathBuf::from("<stdout>"),
            OutputTarget::Hls { playlist } => playlist.clone(),
            OutputTarget::Url(u) => PathBuf::from(u),
        }
    }

    /// Muxer options for a live target: flush every packet (a reader sees frames as they are
    /// encoded), and for HLS a rolling playlist whose old segments are deleted.
    pub(crate) fn header_options(&self) -> Vec<(&'static str, String)> {
        let mut o = vec![("flush_packets", "1".to_string())];
        if let OutputTarget::Hls { playlist } = self {
            let dir = playlist.parent().unwrap_or(Path::new("."));
            o.push(("hls_time", HLS_SEGMENT_SECONDS.to_string()));
            o.push(("hls_list_size", HLS_LIST_SIZE.to_string()));
            o.push((
                "hls_flags",
                "delete_segments+independent_segments+temp_file".to_string(),
            ));
            o.push((
                "hls_segment_filename",
                dir.join("segment_%06d.ts").display().to_string(),
            ));
        }
        o
    }
}

fn is_fifo(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_fifo())
}

impl fmt::Display for OutputTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.shown().display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_four_kinds() {
        assert_eq!(OutputTarget::parse("-"), OutputTarget::Stdout);
        assert_eq!(
            OutputTarget::parse("udp://127.0.0.1:5000"),
            OutputTarget::Url("udp://127.0.0.1:5000".into())
        );
        assert_eq!(
            OutputTarget::parse("out/live.m3u8"),
            OutputTarget::Hls {
                playlist: "out/live.m3u8".into()
            }
        );
        assert_eq!(
            OutputTarget::parse("hls/"),
            OutputTarget::Hls {
                playlist: "hls/index.m3u8".into()
            }
        );
        assert_eq!(
            OutputTarget::parse("take 2: out.ts"),
            OutputTarget::File("take 2: out.ts".into())
        );
        assert_eq!(OutputTarget::parse("rtmp://h/live/k").muxer(), Some("flv"));
        assert!(!OutputTarget::parse("a.mp4").is_live());
    }
}
