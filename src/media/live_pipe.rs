//! Pipes that `ctxd stream` reads without blocking. FFmpeg reads a pipe with a plain
//! `read(2)`, which waits for as long as the writer is silent: a stop (SIGINT/SIGTERM) and the
//! stall timeout went unnoticed until the writer wrote again or closed the pipe. With the
//! descriptor non-blocking, an empty pipe makes the read say "try again", and FFmpeg's retry
//! loop then checks the interrupt callback and `rw_timeout` between short sleeps (1 ms), as it
//! does for network inputs.
//!
//! Two kinds: standard input when it is a pipe or socket (its flags are put back when the
//! stream is done, since a shell may share that descriptor), and a named pipe given by path,
//! opened here once a writer has opened it (waiting for one can be stopped), made
//! non-blocking and handed to FFmpeg as `pipe:FD`.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossbeam_channel::RecvTimeoutError;

/// A pipe set up for non-blocking reads; FFmpeg reads it by `ffmpeg_name`. Keep it alive
/// for as long as FFmpeg's input context: dropping it closes the named pipe or restores
/// standard input's flags.
#[derive(Debug)]
pub(crate) struct LivePipe {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// File status flags of fd 0 before O_NONBLOCK was added.
    Stdin {
        flags: libc::c_int,
    },
    Named(OwnedFd),
}

/// Why a named pipe could not be read.
#[derive(Debug)]
pub(crate) enum PipeError {
    /// The stream was stopped before any writer opened the pipe.
    Stopped,
    Io(std::io::Error),
}

impl LivePipe {
    /// Standard input made non-blocking, where it is a pipe or a socket; None where it is a
    /// file or terminal (a file never blocks; a terminal is left as the user's shell has it).
    pub(crate) fn stdin() -> Option<LivePipe> {
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(0, &mut st) } != 0 {
            return None;
        }
        let kind = st.st_mode & libc::S_IFMT;
        if kind != libc::S_IFIFO && kind != libc::S_IFSOCK {
            return None;
        }
        let flags = add_nonblock(0).ok()?;
        Some(LivePipe {
            kind: Kind::Stdin { flags },
        })
    }

    /// `path` as a non-blocking descriptor if it is a named pipe (None if it is not), once a
    /// writer has opened it; waits for that writer for as long as it takes, or until `stop`.
    pub(crate) fn named(
        path: &Path,
        stop: Option<&AtomicBool>,
    ) -> Result<Option<LivePipe>, PipeError> {
        let is_fifo = std::fs::metadata(path)
            .map_err(PipeError::Io)?
            .file_type()
            .is_fifo();
        if !is_fifo {
            return Ok(None);
        }
        // Opening a named pipe for reading returns when a writer opens it, and nothing else
        // tells that a writer came (a silent writer makes no poll event, and until one comes
        // a non-blocking read says end of file). So a helper thread opens it the blocking
        // way while this one watches `stop`.
        let (tx, rx) = crossbeam_channel::bounded(1);
        let opening = path.to_path_buf();
        std::thread::Builder::new()
            .name("pipe-open".into())
            .spawn(move || {
                let _ = tx.send(std::fs::File::open(&opening));
            })
            .map_err(PipeError::Io)?;
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(opened) => {
                    let fd = OwnedFd::from(opened.map_err(PipeError::Io)?);
                    add_nonblock(fd.as_raw_fd()).map_err(PipeError::Io)?;
                    return Ok(Some(LivePipe {
                        kind: Kind::Named(fd),
                    }));
                }
                Err(RecvTimeoutError::Timeout) => {
                    if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
                        // Be the writer it waits for, so the helper's open returns (and its
                        // descriptor is closed) instead of waiting for ever.
                        let _ = std::fs::OpenOptions::new()
                            .write(true)
                            .custom_flags(libc::O_NONBLOCK)
                            .open(path);
                        return Err(PipeError::Stopped);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(PipeError::Io(std::io::Error::other(
                        "the thread opening the pipe ended without a result",
                    )))
                }
            }
        }
    }

    /// The name FFmpeg opens this pipe by.
    pub(crate) fn ffmpeg_name(&self) -> String {
        match &self.kind {
            Kind::Stdin { .. } => "pipe:0".into(),
            Kind::Named(fd) => format!("pipe:{}", fd.as_raw_fd()),
        }
    }
}

/// Adds O_NONBLOCK to `fd`'s status flags; returns the flags it had.
fn add_nonblock(fd: libc::c_int) -> std::io::Result<libc::c_int> {
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(flags)
}

impl Drop for LivePipe {
    fn drop(&mut self) {
        if let Kind::Stdin { flags } = self.kind {
            unsafe { libc::fcntl(0, libc::F_SETFL, flags) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::io::Write;
    use std::os::unix::ffi::OsStrExt;
    use std::sync::Arc;
    use std::time::Instant;

    fn fifo(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("p.fifo");
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        path
    }

    #[test]
    fn a_named_pipe_waits_for_its_writer_and_then_reads_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let path = fifo(dir.path());
        let writer = std::thread::spawn({
            let path = path.clone();
            move || {
                std::thread::sleep(Duration::from_millis(300));
                let mut w = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                // Silent at first: the pipe is handed over when the writer opens it, not
                // when it first writes (a silent writer is the stall timeout's to judge).
                std::thread::sleep(Duration::from_millis(700));
                w.write_all(b"abc").unwrap();
                // Held open and silent again: the reader must not block on it.
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        let pipe = LivePipe::named(&path, None).unwrap().expect("a named pipe");
        let Kind::Named(fd) = &pipe.kind else {
            panic!("named")
        };
        let mut buf = [0u8; 16];
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        assert_eq!(n, -1, "handed over before the writer wrote");
        std::thread::sleep(Duration::from_millis(900));
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        assert_eq!(&buf[..n.max(0) as usize], b"abc");
        let started = Instant::now();
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        let e = std::io::Error::last_os_error();
        assert_eq!(n, -1);
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}");
        assert!(started.elapsed() < Duration::from_millis(200));
        writer.join().unwrap();
        assert!(pipe.ffmpeg_name().starts_with("pipe:"));
    }

    #[test]
    fn waiting_for_a_writer_that_never_comes_ends_on_stop() {
        let dir = tempfile::tempdir().unwrap();
        let path = fifo(dir.path());
        let stop = Arc::new(AtomicBool::new(false));
        std::thread::spawn({
            let stop = stop.clone();
            move || {
                std::thread::sleep(Duration::from_millis(300));
                stop.store(true, Ordering::Relaxed);
            }
        });
        assert!(matches!(
            LivePipe::named(&path, Some(&stop)),
            Err(PipeError::Stopped)
        ));
        // The helper's blocked open was let go and its descriptor closed: no reader is left
        // (a writer that will not wait is refused).
        std::thread::sleep(Duration::from_millis(300));
        let e = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .expect_err("no reader left");
        assert_eq!(e.raw_os_error(), Some(libc::ENXIO), "{e}");
        // Not a pipe: left to FFmpeg.
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(LivePipe::named(&file, None).unwrap().is_none());
    }
}
