//! The binary's start-up: it restarts itself once so glibc asks for huge pages
//! (`src/huge_pages.rs`), and what must survive that restart.

use std::path::PathBuf;

use crate::pipeline_edit::{gray_clip, quick};
use crate::util::*;

/// The binary restarts itself once so glibc asks for huge pages (where the kernel grants
/// them), keeps its arguments and exit code through that, and `CTXD_HUGE_PAGES=off` or a
/// user's own `glibc.malloc.hugetlb` setting is left alone; the report says which ran. Same
/// frames either way.
#[test]
fn an_edit_asks_for_huge_pages_unless_told_not_to() {
    let granted = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|m| !m.contains("[never]"));
    let d = Dir::new();
    let src = gray_clip(&d, "clip.mp4", 0.5, false);
    let mut frames = Vec::new();
    for (name, env, want) in [
        ("default", None, granted),
        ("off", Some(("CTXD_HUGE_PAGES", "off")), false),
        (
            "users",
            Some(("GLIBC_TUNABLES", "glibc.malloc.hugetlb=0")),
            false,
        ),
    ] {
        let out = d.path(&format!("{name}.mp4"));
        let mut cmd = ctxd();
        cmd.env_remove("GLIBC_TUNABLES")
            .env_remove("CTXD_HUGE_PAGES");
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        cmd.arg("edit").arg(&src).arg("--output").arg(&out).args([
            "--source",
            "gray",
            "--prompt",
            "red",
            "--no-cache",
        ]);
        run_ok(quick(&mut cmd));
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.path(&format!("{name}.json"))).unwrap())
                .unwrap();
        assert_eq!(report["huge_pages"], want, "{name}");
        frames.push(rgb_frames(&out).2);
    }
    assert!(frames.iter().all(|f| *f == frames[0]), "the same frames");
    // A usage error's exit code and message come through the restart.
    let (code, err) = run_err(
        ctxd()
            .env_remove("CTXD_HUGE_PAGES")
            .args(["edit", "--nope"]),
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--nope"), "{err}");
    // After the restart the process still goes by the binary's name (ps, top, pkill ctxd):
    // a stream waiting for a named pipe's writer, looked at from outside.
    if granted {
        let fifo = d.path("wait.fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let mut child = ctxd()
            .env_remove("GLIBC_TUNABLES")
            .env_remove("CTXD_HUGE_PAGES")
            .args(["stream", "-i", fifo.to_str().unwrap(), "-o"])
            .arg(d.path("wait.mkv"))
            .args([
                "--bundle",
                "models/oracle",
                "--prompt",
                "red",
                "--source",
                "gray",
            ])
            .spawn()
            .unwrap();
        let proc_dir = PathBuf::from(format!("/proc/{}", child.id()));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let restarted = loop {
            let env = std::fs::read(proc_dir.join("environ")).unwrap_or_default();
            if env
                .split(|b| *b == 0)
                .any(|v| v == b"GLIBC_TUNABLES=glibc.malloc.hugetlb=1")
            {
                break true;
            }
            if std::time::Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let comm = std::fs::read_to_string(proc_dir.join("comm")).unwrap_or_default();
        let _ = child.kill();
        let _ = child.wait();
        assert!(restarted, "the stream restarted with the tunable");
        assert_eq!(comm.trim(), "ctxd");
    }
}
