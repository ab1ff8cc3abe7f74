//! `ctxd bench chaos --mode stream`: `ctxd stream` killed while it writes HLS.

use super::*;

/// `ctxd stream` into an HLS folder, killed while it streams and started again on the same
/// folder: after every kill the playlist lists only segments that are whole (each decodes to
/// its frames), and the last, unkilled run ends the playlist cleanly with no temporary file
/// left from the killed ones.
pub(super) fn stream_campaign(
    args: &ChaosBenchArgs,
    dir: &Path,
    exe: &Path,
    bundle: &Path,
    preset: &Path,
) -> Result<ChaosResult> {
    let clip = dir.join("live-source.mp4");
    let seconds = 12;
    let st = Command::new("ffmpeg")
        .args(["-nostdin", "-y", "-v", "error", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size=160x120:rate=10:duration={seconds}"))
        .args(["-f", "lavfi", "-i"])
        .arg(format!("sine=frequency=440:duration={seconds}"))
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-c:a",
            "aac",
            "-shortest",
        ])
        .arg(&clip)
        .status()
        .context("running ffmpeg (run scripts/setup)")?;
    if !st.success() {
        bail!("ffmpeg could not make the stream's source");
    }
    let live = dir.join("live");
    std::fs::create_dir_all(&live)?;
    let log = dir.join("stream.log");
    let stream = || -> Result<Command> {
        let mut c = Command::new(exe);
        c.arg("stream")
            .arg("-i")
            .arg(&clip)
            .arg("--realtime")
            .arg("-o")
            .arg(format!("{}/", live.display()))
            .arg("--preset")
            .arg(preset)
            .arg("--bundle")
            .arg(bundle)
            .args(["--source", "a test pattern", "--prompt", "red"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)?,
            );
        Ok(c)
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
    let mut violations = Vec::new();
    // Segments are 2 s: lives three times longer than for jobs.
    let args = &ChaosBenchArgs {
        max_life_ms: 3 * args.max_life_ms,
        ..args.clone()
    };
    // Nothing arrives; "busy" is this start's first playlist update (a killed start's
    // playlist stays until the next one writes), so half the kills land while segments are
    // being written.
    let playlist = live.join("index.m3u8");
    let started = std::cell::Cell::new(std::time::SystemTime::now());
    let with_segments = kill_loop(
        args,
        &mut rng,
        &mut [],
        |_| PathBuf::new(),
        || {
            started.set(std::time::SystemTime::now());
            Ok(stream()?.spawn()?)
        },
        || {
            std::fs::metadata(&playlist)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t > started.get())
        },
        |k, exited| {
            if let Some(st) = exited.filter(|st| !st.success()) {
                violations.push(format!("run {k}: ctxd stream ended with {st}"));
            }
            Ok(check_playlist(&live, &mut violations, &format!("after kill {k}"))? > 0)
        },
    )?;
    let t0 = Instant::now();
    let st = stream()?.status()?;
    let final_run_s = t0.elapsed().as_secs_f64();
    if !st.success() {
        violations.push(format!("the last run ended with {st}"));
    }
    check_playlist(&live, &mut violations, "at the end")?;
    let playlist = std::fs::read_to_string(live.join("index.m3u8")).unwrap_or_default();
    if !playlist.contains("#EXT-X-ENDLIST") {
        violations.push("the last run's playlist has no end tag".into());
    }
    for e in std::fs::read_dir(&live)?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.ends_with(".tmp") || n.contains(".part") {
            violations.push(format!("live/{n}: a temporary file left behind"));
        }
    }
    Ok(ChaosResult {
        inputs: 1,
        bad_inputs: 0,
        kills: args.kills,
        kills_mid_job: with_segments,
        interrupted_runs: args.kills as u64,
        max_attempts_seen: 0,
        jobs_done: usize::from(st.success()),
        jobs_failed: usize::from(!st.success()),
        jobs_given_up: 0,
        final_run_s,
        violations,
    })
}

/// Every segment the playlist lists exists and decodes whole; returns how many it lists.
fn check_playlist(live: &Path, violations: &mut Vec<String>, when: &str) -> Result<usize> {
    let path = live.join("index.m3u8");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(0);
    };
    if !text.starts_with("#EXTM3U") {
        violations.push(format!("{when}: index.m3u8 is not a playlist: {text:?}"));
        return Ok(0);
    }
    let segments: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    for seg in &segments {
        let file = live.join(seg);
        if !file.is_file() {
            violations.push(format!("{when}: listed segment {seg} is missing"));
            continue;
        }
        let (frames, clean) = decoded_frames(&file)?;
        if !clean || frames == 0 {
            violations.push(format!(
                "{when}: listed segment {seg} does not decode whole ({frames} frames)"
            ));
        }
    }
    Ok(segments.len())
}
