//! Naming and opening inputs: a file, `-` (stdin) or a URL FFmpeg can open. Checks what can be
//! checked before FFmpeg sees the input, so the common mistakes get a precise message.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ffmpeg_next::format;

use super::error::{MediaError, Result};
use super::live_pipe::{LivePipe, PipeError};
use super::log;

/// An input as the user named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputSpec {
    File(PathBuf),
    /// A file already opened and checked by the caller (`ctxd watch` pins the file it keyed
    /// a job by): FFmpeg reads this very file, whatever its name points to by then.
    Pinned(PinnedFile),
    /// `-`: read the container from standard input (it must be streamable: mkv, ts, or an mp4
    /// with its index at the front).
    Stdin,
    /// Anything with a scheme (`rtsp://`, `http://`, `udp://`, `pipe:`...): handed to FFmpeg.
    Url(String),
}

/// An open file and the name it was opened by (for messages and reports).
#[derive(Debug, Clone)]
pub struct PinnedFile {
    file: Arc<std::fs::File>,
    path: PathBuf,
}

impl PinnedFile {
    pub fn new(file: std::fs::File, path: PathBuf) -> PinnedFile {
        PinnedFile {
            file: Arc::new(file),
            path,
        }
    }

    pub fn file(&self) -> &std::fs::File {
        &self.file
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A name that opens this very file again (Linux: the descriptor's link in /proc),
    /// whether or not its original name still leads to it.
    fn reopen_name(&self) -> String {
        use std::os::fd::AsRawFd;
        format!("/proc/self/fd/{}", self.file.as_raw_fd())
    }
}

impl PartialEq for PinnedFile {
    fn eq(&self, other: &PinnedFile) -> bool {
        Arc::ptr_eq(&self.file, &other.file)
    }
}

impl Eq for PinnedFile {}

impl InputSpec {
    pub fn parse(s: &str) -> InputSpec {
        if s == "-" {
            InputSpec::Stdin
        } else if looks_like_url(s) {
            InputSpec::Url(s.to_string())
        } else {
            InputSpec::File(PathBuf::from(s))
        }
    }

    /// The name FFmpeg is given. `file:` keeps a name with a colon in it from being read as
    /// a protocol.
    fn ffmpeg_name(&self) -> Result<String> {
        match self {
            InputSpec::File(p) => Ok(format!("file:{}", ffmpeg_safe(p, &self.to_string())?)),
            InputSpec::Pinned(f) => Ok(format!("file:{}", f.reopen_name())),
            InputSpec::Stdin => Ok("pipe:0".into()),
            InputSpec::Url(u) => Ok(ffmpeg_safe(Path::new(u), u)?.to_string()),
        }
    }

    pub fn as_path(&self) -> Option<&Path> {
        match self {
            InputSpec::File(p) => Some(p),
            InputSpec::Pinned(f) => Some(f.path()),
            _ => None,
        }
    }
}

impl fmt::Display for InputSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InputSpec::File(p) => write!(f, "{}", p.display()),
            InputSpec::Pinned(p) => write!(f, "{}", p.path().display()),
            InputSpec::Stdin => write!(f, "<stdin>"),
            InputSpec::Url(u) => write!(f, "{u}"),
        }
    }
}

/// FFmpeg takes names as C strings and ffmpeg-next panics on names that are not UTF-8 or hold
/// a NUL, so such names are refused here with a clear error instead.
pub(crate) fn ffmpeg_safe<'a>(path: &'a Path, shown: &str) -> Result<&'a str> {
    match path.to_str() {
        Some(s) if !s.contains('\0') => Ok(s),
        _ => Err(MediaError::Read {
            path: shown.to_string(),
            cause: "the name is not valid UTF-8 (FFmpeg cannot open it); rename the file".into(),
        }),
    }
}

fn looks_like_url(s: &str) -> bool {
    if let Some((scheme, _)) = s.split_once(':') {
        let known = [
            "pipe", "rtsp", "rtmp", "http", "https", "udp", "tcp", "srt", "file",
        ];
        return scheme.len() > 1
            && (s[scheme.len()..].starts_with("://") || known.contains(&scheme))
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-');
    }
    false
}

/// How a live input is read (`ctxd stream`).
#[derive(Debug, Clone, Default)]
pub struct LiveOptions {
    /// A file still being written: keep reading as it grows (FFmpeg's `follow`).
    pub follow: bool,
    /// No new data for this long fails the read (a stalled source); pipes and stdin too,
    /// which are read without blocking (`live_pipe`).
    pub stall_timeout: Option<Duration>,
    /// Set it to abort a blocked open or read (shutdown).
    pub interrupt: Option<Arc<AtomicBool>>,
}

impl LiveOptions {
    /// FFmpeg's protocol options for `spec`.
    fn dictionary(&self, spec: &InputSpec) -> ffmpeg_next::Dictionary<'static> {
        let mut d = ffmpeg_next::Dictionary::new();
        // Start after a second of input, not five: a live source's first window should not
        // wait for the demuxer's stream analysis.
        d.set("analyzeduration", "1000000");
        let micros = self.stall_timeout.map(|t| t.as_micros().max(1).to_string());
        if let Some(us) = &micros {
            // Every protocol: the longest a read may wait without data.
            d.set("rw_timeout", us);
        }
        match spec {
            InputSpec::File(_) if self.follow => d.set("follow", "1"),
            InputSpec::Url(u) => {
                let scheme = u.split(':').next().unwrap_or_default();
                // `timeout` means a socket timeout in microseconds for these (for rtmp it
                // would mean "listen", so it is not set there).
                if let (Some(us), true) = (
                    &micros,
                    matches!(scheme, "udp" | "tcp" | "http" | "https" | "rtsp"),
                ) {
                    d.set("timeout", us);
                }
                if matches!(scheme, "http" | "https") {
                    d.set("reconnect", "1");
                }
            }
            _ => {}
        }
        d
    }
}

/// Opens the container and reads stream information.
///
/// # Errors
/// `NotFound`, `Empty`, `NotMedia` (with FFmpeg's own explanation when it gave one).
pub(crate) fn open(spec: &InputSpec) -> Result<format::context::Input> {
    Ok(open_with(spec, None)?.0)
}

/// `open`, for a live input: protocol options and an interrupt flag. A pipe (stdin or a
/// named one) comes back beside the context, set up for non-blocking reads: keep it for as
/// long as the context.
pub(crate) fn open_with(
    spec: &InputSpec,
    live: Option<&LiveOptions>,
) -> Result<(format::context::Input, Option<LivePipe>)> {
    super::init();
    let name = spec.to_string();
    let meta = match spec {
        InputSpec::File(path) => Some(std::fs::metadata(path)),
        InputSpec::Pinned(f) => Some(f.file().metadata()),
        _ => None,
    };
    if let Some(meta) = meta {
        let meta = meta.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => MediaError::NotFound(name.clone()),
            _ => MediaError::Read {
                path: name.clone(),
                cause: e.to_string(),
            },
        })?;
        if meta.is_dir() {
            return Err(MediaError::NotMedia {
                path: name,
                cause: "it is a directory".into(),
            });
        }
        // Opening a named pipe waits for a writer, forever if none comes: only live inputs
        // (`ctxd stream`) read pipes by name.
        if live.is_none() && !meta.is_file() {
            return Err(MediaError::NotMedia {
                path: name,
                cause: "it is a named pipe or device, not a file; read it with `ctxd edit - < NAME` or `ctxd stream -i NAME`".into(),
            });
        }
        // A named pipe has no length; a file being followed may not have one yet.
        if meta.len() == 0 && meta.file_type().is_file() && !live.is_some_and(|l| l.follow) {
            return Err(MediaError::Empty(name));
        }
    }
    let pipe = match (live, spec) {
        (Some(_), InputSpec::Stdin) => LivePipe::stdin(),
        (Some(l), InputSpec::File(path)) => {
            LivePipe::named(path, l.interrupt.as_deref()).map_err(|e| match e {
                PipeError::Stopped => MediaError::InputLost {
                    path: name.clone(),
                    time: 0.0,
                    cause: "stopped before anything was written to the pipe".into(),
                },
                PipeError::Io(e) => MediaError::Read {
                    path: name.clone(),
                    cause: e.to_string(),
                },
            })?
        }
        _ => None,
    };
    let ffmpeg_name = match &pipe {
        Some(p) => p.ffmpeg_name(),
        None => spec.ffmpeg_name()?,
    };
    log::clear();
    let opened = match live {
        None => format::input(&ffmpeg_name),
        Some(l) => {
            let flag = l.interrupt.clone();
            format::input_with_interrupt_and_dictionary(
                &ffmpeg_name,
                move || flag.as_ref().is_some_and(|f| f.load(Ordering::Relaxed)),
                l.dictionary(spec),
            )
        }
    };
    let opened = opened.map_err(|e| {
        // FFmpeg's `rw_timeout` ends a read that got nothing for that long with EIO.
        let stalled = live
            .and_then(|l| l.stall_timeout)
            .filter(|_| matches!(e, ffmpeg_next::Error::Other { errno } if errno == libc::EIO));
        if let Some(t) = stalled {
            return MediaError::InputLost {
                path: name.clone(),
                time: 0.0,
                cause: format!(
                    "nothing arrived for {:.1} s (--stall-timeout) while it was being opened",
                    t.as_secs_f64()
                ),
            };
        }
        let said = log::last_message();
        let cause = match (said, e) {
            (Some(m), _) if m.contains("moov atom not found") && *spec == InputSpec::Stdin => {
                "moov atom not found: an mp4 read from stdin needs its index in front \
                 (ffmpeg -movflags +faststart); or pipe mkv or mpegts"
                    .to_string()
            }
            (Some(m), _) if m.contains("moov atom not found") => {
                "moov atom not found: the file is truncated or still being written".to_string()
            }
            (Some(m), e) => format!("{e}: {m}"),
            (None, e) => e.to_string(),
        };
        MediaError::NotMedia { path: name, cause }
    })?;
    Ok((opened, pipe))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_kinds() {
        assert_eq!(InputSpec::parse("-"), InputSpec::Stdin);
        assert_eq!(
            InputSpec::parse("rtsp://cam/1"),
            InputSpec::Url("rtsp://cam/1".into())
        );
        assert_eq!(InputSpec::parse("pipe:3"), InputSpec::Url("pipe:3".into()));
        assert_eq!(
            InputSpec::parse("clip.mp4"),
            InputSpec::File("clip.mp4".into())
        );
        // A file whose name has a colon is still a file.
        assert_eq!(
            InputSpec::parse("take 2: beach.mp4"),
            InputSpec::File("take 2: beach.mp4".into())
        );
        assert_eq!(
            InputSpec::parse("C:/x.mp4"),
            InputSpec::File("C:/x.mp4".into())
        );
    }
}
