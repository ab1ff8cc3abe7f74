//! Transparent huge pages for the large blocks: ONNX Runtime's arena and the windows'
//! latents are hundreds of megabytes touched once each, and on 4 KiB pages the kernel spends
//! more on faulting them in (one fault per page) than on zeroing them. glibc asks the kernel
//! for huge pages on every large block it maps when its tunable `glibc.malloc.hugetlb=1` is
//! set, and glibc reads tunables only when a process starts. So the binary starts itself
//! again, once, with the tunable added, before anything else runs (no thread, no file open).
//! Measured in README.md ("Huge pages"): the 1-s oracle edit's page faults 129 k → 19 k.
//! `CTXD_HUGE_PAGES=off` runs without (also the setting for running ctxd under a tool such
//! as valgrind, which does not follow a process into a new program unless told to).

use std::ffi::OsString;

/// The glibc tunable that makes malloc `madvise(MADV_HUGEPAGE)` the blocks it maps.
const TUNABLE: &str = "glibc.malloc.hugetlb";

/// Where the kernel says whether a process may ask for transparent huge pages.
const THP_MODE: &str = "/sys/kernel/mm/transparent_hugepage/enabled";

/// Whether this process runs with glibc asking for huge pages, on a kernel that grants them.
pub fn in_use() -> bool {
    cfg!(all(target_os = "linux", target_env = "gnu"))
        && std::env::var("GLIBC_TUNABLES").is_ok_and(|t| asks_for_huge_pages(&t))
        && kernel_grants()
}

/// Starts this binary again with the tunable set, where it helps and the user did not say
/// `CTXD_HUGE_PAGES=off`; returns only when it does not (or cannot) start again, and the
/// process then runs as it is. Call first thing in `main`, while the process has one thread.
pub fn restart_with_huge_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        if std::env::var_os("CTXD_HUGE_PAGES").is_some_and(|v| v == "off") {
            return;
        }
        let Some(tunables) = with_huge_pages(std::env::var_os("GLIBC_TUNABLES")) else {
            return;
        };
        if !kernel_grants() {
            return;
        }
        let mut args = std::env::args_os();
        let arg0 = args.next().unwrap_or_default();
        // The binary's own path, not /proc/self/exe: the kernel names a process after the
        // file it executes, and `ps`, `top` and `pkill ctxd` would see "exe". A binary
        // deleted or replaced since it started has no such path left; it runs as it is.
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let error = std::process::Command::new(exe)
            .arg0(arg0)
            .args(args)
            .env("GLIBC_TUNABLES", tunables)
            .exec();
        // exec returned, so this process goes on without huge pages; it still works.
        if std::env::var_os("CTXD_LOG").is_some() {
            eprintln!("ctxd: running without huge pages: {error}");
        }
    }
}

/// The tunables to start again with, or None where glibc already has (or cannot take) them.
fn with_huge_pages(current: Option<OsString>) -> Option<String> {
    let current = match current {
        None => String::new(),
        // Tunables that are not UTF-8 are not ours to rewrite.
        Some(t) => t.into_string().ok()?,
    };
    if current.contains(TUNABLE) {
        return None;
    }
    Some(if current.is_empty() {
        format!("{TUNABLE}=1")
    } else {
        format!("{current}:{TUNABLE}=1")
    })
}

fn asks_for_huge_pages(tunables: &str) -> bool {
    tunables
        .split(':')
        .any(|t| t.strip_prefix(TUNABLE).is_some_and(|v| v == "=1"))
}

/// Whether this kernel grants a process's ask for transparent huge pages.
fn kernel_grants() -> bool {
    kernel_grants_them(&std::fs::read_to_string(THP_MODE).unwrap_or_default())
}

/// "always [madvise] never": the bracket marks the mode; only `never` refuses a process's ask.
fn kernel_grants_them(mode: &str) -> bool {
    mode.contains("[always]") || mode.contains("[madvise]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tunable_is_added_once_and_others_are_kept() {
        assert_eq!(
            with_huge_pages(None).as_deref(),
            Some("glibc.malloc.hugetlb=1")
        );
        assert_eq!(
            with_huge_pages(Some("glibc.malloc.arena_max=2".into())).as_deref(),
            Some("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")
        );
        // Set already, to either value: the user's choice stands and nothing restarts.
        assert_eq!(with_huge_pages(Some("glibc.malloc.hugetlb=1".into())), None);
        assert_eq!(
            with_huge_pages(Some("glibc.malloc.hugetlb=0:x=1".into())),
            None
        );
    }

    #[test]
    fn only_hugetlb_1_and_a_kernel_that_grants_count_as_in_use() {
        assert!(asks_for_huge_pages("a=1:glibc.malloc.hugetlb=1"));
        assert!(!asks_for_huge_pages("glibc.malloc.hugetlb=0"));
        assert!(!asks_for_huge_pages("glibc.malloc.hugetlb=10"));
        assert!(kernel_grants_them("always [madvise] never\n"));
        assert!(kernel_grants_them("[always] madvise never\n"));
        assert!(!kernel_grants_them("always madvise [never]\n"));
        assert!(!kernel_grants_them(""));
    }
}
