//! A `ctxd watch` daemon driven from outside, as the benchmarks that test its promises need
//! it: a folder layout and config, the process started and waited for, its API asked, its
//! resources read from `/proc`, and a kill -9 when a benchmark wants a crash.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A watch root: `inbox`, `outbox`, `failed`, `done` and `state` beside a `watch.toml`.
pub(crate) struct WatchRoot {
    pub root: PathBuf,
    pub config: PathBuf,
}

/// What the daemon's config says beyond the folders.
pub(crate) struct WatchSettings<'a> {
    pub preset: &'a Path,
    pub bundle: &'a Path,
    pub concurrency: usize,
    /// Extra top-level lines (`max_attempts = 50`, ...).
    pub extra: &'a str,
}

impl WatchRoot {
    pub fn create(root: &Path, s: &WatchSettings, defaults: &str) -> Result<WatchRoot> {
        for sub in ["inbox", "outbox", "failed", "done", "state"] {
            std::fs::create_dir_all(root.join(sub))?;
        }
        std::fs::write(root.join("inbox/_defaults.toml"), defaults)?;
        let config = root.join("watch.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = \"state\"\npoll_seconds = 0.1\nconcurrency = {}\n{}\n[api]\nlisten = \"127.0.0.1:0\"\n\
                 [[mapping]]\nname = \"bench\"\ninbox = \"inbox\"\noutbox = \"outbox\"\nfailed = \"failed\"\ndone = \"done\"\n\
                 preset = \"{}\"\nbundle = \"{}\"\nsettle_seconds = 0.2\nsidecar_grace_seconds = 0\n",
                s.concurrency,
                s.extra,
                s.preset.display(),
                s.bundle.display()
            ),
        )?;
        Ok(WatchRoot {
            root: root.to_path_buf(),
            config,
        })
    }

    pub fn dir(&self, sub: &str) -> PathBuf {
        self.root.join(sub)
    }

    /// The daemon's command line (log appended to `log` when given, else quiet).
    pub fn command(&self, exe: &Path, log: Option<&Path>) -> Result<Command> {
        let _ = std::fs::remove_file(self.dir("state").join("api.addr"));
        let mut cmd = Command::new(exe);
        cmd.args(["watch", "--config"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        match log {
            Some(l) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(l)
                    .with_context(|| format!("opening {}", l.display()))?;
                cmd.stderr(f);
            }
            None => {
                cmd.arg("-q").stderr(Stdio::null());
            }
        }
        Ok(cmd)
    }

    /// Starts the daemon without waiting for it.
    pub fn spawn(&self, exe: &Path, log: Option<&Path>) -> Result<Daemon> {
        let child = self
            .command(exe, log)?
            .spawn()
            .context("starting ctxd watch")?;
        Ok(Daemon {
            child,
            addr_file: self.dir("state").join("api.addr"),
        })
    }

    /// Starts the daemon and waits until its API answers.
    pub fn start(&self, exe: &Path, log: Option<&Path>) -> Result<(Daemon, String)> {
        let mut d = self.spawn(exe, log)?;
        let addr = d.wait_ready(Duration::from_secs(120))?;
        Ok((d, addr))
    }
}

pub(crate) struct Daemon {
    child: Child,
    addr_file: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The API's address once the daemon has written it and `/healthz` answers.
    pub fn wait_ready(&mut self, limit: Duration) -> Result<String> {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait()? {
                bail!("the daemon exited while starting ({st})");
            }
            if let Ok(a) = std::fs::read_to_string(&self.addr_file) {
                let a = a.trim().to_string();
                if matches!(http_get(&a, "/healthz"), Ok((200, _))) {
                    return Ok(a);
                }
            }
            if t0.elapsed() > limit {
                let _ = self.child.kill();
                bail!("the daemon did not answer within {} s", limit.as_secs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it has exited (and how).
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// SIGTERM, then wait for the orderly stop.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        Ok(self.child.wait()?)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One HTTP/1.1 GET: (status, body).
pub(crate) fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    let mut conn = TcpStream::connect(addr)?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: ctxd\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)?;
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status line")?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// What a process holds, from `/proc` (Linux).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct ProcStats {
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
    pub fds: usize,
    pub threads: usize,
}

pub(crate) fn proc_stats(pid: u32) -> Result<ProcStats> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    Ok(ProcStats {
        rss_mib: field("VmRSS:") / 1024.0,
        peak_rss_mib: field("VmHWM:") / 1024.0,
        fds,
        threads: field("Threads:") as usize,
    })
}

/// Moves a finished file into `dir` under `name`, as an uploader that writes elsewhere
/// first would (one rename: the daemon never sees it half-written).
pub(crate) fn drop_into(file: &Path, dir: &Path, name: &str) -> Result<()> {
    std::fs::rename(file, dir.join(name))
        .with_context(|| format!("moving {} into {}", file.display(), dir.display()))
}

/// Writes to `path` a 1 s clip of `size` (WxH) at 10 fps whose picture no other index gives
/// (the hue turns with `i`), so the daemon sees new content each time, not a job it has
/// already done.
pub(crate) fn unique_clip(i: usize, size: &str, path: &Path) -> Result<()> {
    let st = Command::new("ffmpeg")
        .args(["-nostdin", "-y", "-v", "error", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size={size}:rate=10:duration=1"))
        .arg("-vf")
        .arg(format!(
            "hue=h={}:s={}",
            (i * 37) % 360,
            1.0 + (i / 10) as f64 * 0.01
        ))
        .args(["-c:v", "libx264", "-preset", "ultrafast"])
        .arg(path)
        .status()
        .context("running ffmpeg to make a clip (run scripts/setup)")?;
    if !st.success() {
        bail!("ffmpeg could not make clip {i}");
    }
    Ok(())
}
