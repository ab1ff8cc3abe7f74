//! FFmpeg's log, routed into `tracing`, with the last warnings and errors kept per thread so a
//! failure can quote what FFmpeg said (e.g. "moov atom not found") instead of a bare errno.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_void};

use ffmpeg_next::ffi;

const KEPT: usize = 8;

thread_local! {
    static RECENT: RefCell<VecDeque<String>> = const { RefCell::new(VecDeque::new()) };
}

/// Installs the callback. Called once from `media::init`.
pub(crate) fn install() {
    unsafe { ffi::av_log_set_callback(Some(callback)) };
}

/// Forgets this thread's kept messages (call before an operation whose failure you will explain).
pub(crate) fn clear() {
    RECENT.with(|r| r.borrow_mut().clear());
}

/// The most recent warning or error FFmpeg logged on this thread, if any.
pub(crate) fn last_message() -> Option<String> {
    RECENT.with(|r| r.borrow().back().cloned())
}

unsafe extern "C" fn callback(
    avcl: *mut c_void,
    level: c_int,
    fmt: *const c_char,
    vl: *mut ffi::__va_list_tag,
) {
    if level > ffi::AV_LOG_VERBOSE as c_int {
        return;
    }
    let mut buf = [0 as c_char; 1024];
    let mut print_prefix: c_int = 1;
    ffi::av_log_format_line2(
        avcl,
        level,
        fmt,
        vl,
        buf.as_mut_ptr(),
        buf.len() as c_int,
        &mut print_prefix,
    );
    let line = CStr::from_ptr(buf.as_ptr()).to_string_lossy();
    let line = line.trim();
    if line.is_empty() {
        return;
    }
    // Debug, not warn: ctxd reports failures itself, with the file's name; FFmpeg's own
    // lines are for `-vv`.
    if level <= ffi::AV_LOG_WARNING as c_int {
        tracing::debug!(target: "ffmpeg", "{line}");
    } else {
        tracing::trace!(target: "ffmpeg", "{line}");
    }
    if level <= ffi::AV_LOG_WARNING as c_int {
        let owned = strip_prefix(line).to_string();
        RECENT.with(|r| {
            let mut r = r.borrow_mut();
            if r.len() == KEPT {
                r.pop_front();
            }
            r.push_back(owned);
        });
    }
}

/// Drops FFmpeg's "[mov,mp4,... @ 0x55d...] " prefix: the address means nothing to a user.
fn strip_prefix(line: &str) -> &str {
    if line.starts_with('[') {
        if let Some(end) = line.find("] ") {
            return &line[end + 2..];
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::strip_prefix;

    #[test]
    fn prefix_is_stripped() {
        assert_eq!(
            strip_prefix("[mov,mp4,m4a @ 0x55d] moov atom not found"),
            "moov atom not found"
        );
        assert_eq!(strip_prefix("plain"), "plain");
    }
}
