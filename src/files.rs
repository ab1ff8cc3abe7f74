//! Opening files that someone else controls (an inbox, a prompt beside a video) so that what
//! is checked is what is read: opened without blocking and (optionally) without following a
//! link, then checked on the open descriptor.

use std::fs::{File, Metadata};
use std::io;
use std::path::Path;

/// Why a file was not opened.
#[derive(Debug)]
pub enum Refused {
    /// A symbolic link where one is not followed.
    Link,
    /// Not a regular file: says what it is instead.
    NotRegular(&'static str),
    Io(io::Error),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Link => write!(f, "is a symbolic link, which is not followed here"),
            Refused::NotRegular(kind) => write!(f, "is not a regular file ({kind})"),
            Refused::Io(e) => write!(f, "{e}"),
        }
    }
}

/// Opens `path` for reading without blocking (a named pipe with no writer would hang the
/// caller), following a link only if `follow`, and checks on the open file that it is a
/// regular file.
///
/// # Errors
/// [`Refused`] saying why.
pub fn open_regular(path: &Path, follow: bool) -> Result<(File, Metadata), Refused> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = libc::O_NONBLOCK | if follow { 0 } else { libc::O_NOFOLLOW };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) && !follow {
                Refused::Link
            } else {
                Refused::Io(e)
            }
        })?;
    let meta = file.metadata().map_err(Refused::Io)?;
    if !meta.is_file() {
        return Err(Refused::NotRegular(if meta.is_dir() {
            "a folder"
        } else {
            "a pipe, socket or device"
        }));
    }
    Ok((file, meta))
}

/// Which file this is and as what it was last seen: device, inode, size and modification
/// time. Equal identities mean the same file, unchanged (short of tampering with times).
pub fn identity(meta: &Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "{}:{}:{}:{}.{:09}",
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_pipes_and_folders_are_refused_and_identity_follows_changes() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.mp4");
        std::fs::write(&real, b"abc").unwrap();
        let link = dir.path().join("link.mp4");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(matches!(open_regular(&link, false), Err(Refused::Link)));
        assert!(open_regular(&link, true).is_ok());
        assert!(matches!(
            open_regular(dir.path(), true),
            Err(Refused::NotRegular("a folder"))
        ));
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(matches!(
            open_regular(&fifo, false),
            Err(Refused::NotRegular(_))
        ));

        let (_, before) = open_regular(&real, false).unwrap();
        let (_, same) = open_regular(&real, false).unwrap();
        assert_eq!(identity(&before), identity(&same));
        // Replaced under the same name: another file.
        std::fs::write(dir.path().join("new"), b"abd").unwrap();
        std::fs::rename(dir.path().join("new"), &real).unwrap();
        let (_, after) = open_regular(&real, false).unwrap();
        assert_ne!(identity(&before), identity(&after));
    }
}
