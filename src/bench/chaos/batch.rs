//! `ctxd bench chaos --mode batch`: `ctxd batch` killed and rerun over a nested tree.

use super::*;

/// `ctxd batch` over a tree (inputs arriving between runs too), killed and rerun: each
/// rerun must skip what is done, redo what a kill cut off and count its attempts.
pub(super) fn batch_campaign(
    args: &ChaosBenchArgs,
    dir: &Path,
    exe: &Path,
    bundle: &Path,
    preset: &Path,
) -> Result<ChaosResult> {
    let archive = dir.join("archive");
    let out = dir.join("edited");
    std::fs::create_dir_all(&archive)?;
    let db = out.join(crate::batch::run::STATE_DIR).join("jobs.sqlite");
    let log = dir.join("batch.log");
    let mut inputs = make_inputs(&dir.join("staging"), args.jobs, args.bad)?;
    // Nested folders: the outputs mirror them.
    let sub = |inp: &Input| {
        let n: usize = inp.name[6..9].parse().unwrap_or(0);
        ["", "a", "a/b"][n % 3].to_string()
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
    let mut violations = Vec::new();
    let mut interrupted: HashMap<String, HashSet<u32>> = HashMap::new();
    let batch = |log: &Path| -> Result<Command> {
        let mut c = Command::new(exe);
        c.arg("batch")
            .arg(&archive)
            .arg("--out")
            .arg(&out)
            .arg("--preset")
            .arg(preset)
            .arg("--bundle")
            .arg(bundle)
            .args(["--source", "a test pattern"])
            .args(EDITS.iter().flat_map(|e| ["--prompt", e]))
            .args(["--jobs", &args.concurrency.to_string(), "--no-previews"])
            .arg("--cache-dir")
            .arg(dir.join("cache"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)?,
            );
        Ok(c)
    };
    let mid = kill_loop(
        args,
        &mut rng,
        &mut inputs,
        |inp| archive.join(sub(inp)).join(&inp.name),
        || Ok(batch(&log)?.spawn()?),
        || batch_rows(&db).is_ok_and(|rows| rows.iter().any(|r| r.1 == "running")),
        |k, exited| {
            // A run may finish its plan before its kill: 0, or 1 for the broken files.
            if let Some(st) = exited {
                if !matches!(st.code(), Some(0) | Some(1)) {
                    violations.push(format!("run {k}: ctxd batch ended with {st}"));
                }
            }
            let mut mid = false;
            for (key, state, attempts) in batch_rows(&db)? {
                if state == "running" {
                    mid |= interrupted.entry(key).or_default().insert(attempts);
                }
            }
            for folder in ["", "a", "a/b"] {
                whole_sets_only(&out.join(folder), k, &mut violations);
            }
            Ok(mid)
        },
    )?;
    for inp in inputs.iter_mut().filter(|i| !i.dropped) {
        arrive(inp, &archive.join(sub(inp)).join(&inp.name))?;
    }
    let t0 = Instant::now();
    let st = batch(&log)?.status()?;
    let final_run_s = t0.elapsed().as_secs_f64();
    let want = if args.bad > 0 { 1 } else { 0 };
    if st.code() != Some(want) {
        violations.push(format!("the final run ended with {st}, not {want}"));
    }

    // The summary covers every input once; outputs and attempts as in the watch campaign.
    let summary = std::fs::read_to_string(out.join("summary.jsonl"))
        .with_context(|| format!("reading {}", out.join("summary.jsonl").display()))?;
    let rows: Vec<serde_json::Value> = summary
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let mut tally = Tally::default();
    for inp in &inputs {
        let rel = Path::new(&sub(inp)).join(&inp.name);
        let rel = rel.to_string_lossy();
        if sha256_file(&archive.join(rel.as_ref()))? != inp.sha256 {
            violations.push(format!("{rel}: the input changed"));
        }
        let mine: Vec<&serde_json::Value> = rows.iter().filter(|r| r["rel"] == *rel).collect();
        let [row] = mine.as_slice() else {
            violations.push(format!("{rel}: {} summary rows", mine.len()));
            continue;
        };
        let state = row["status"].as_str().unwrap_or_default();
        let key = row["key"].as_str().unwrap_or_default();
        let folder = out.join(sub(inp));
        let stem = inp.name.trim_end_matches(".mp4");
        let sets = output_sets(&folder);
        check_outputs(
            inp,
            &folder,
            sets.get(stem).map(Vec::as_slice),
            state == "failed",
            args.max_attempts >= 1000,
            &mut violations,
        )?;
        tally.check(
            &rel,
            state,
            row["attempts"].as_u64().unwrap_or(0) as u32,
            row["error"].as_str(),
            interrupted.get(key).map_or(0, |runs| runs.len() as u64),
            &mut violations,
        );
    }
    for e in walkdir::WalkDir::new(&out).into_iter().flatten() {
        let n = e.file_name().to_string_lossy();
        if n.contains(".part") {
            violations.push(format!(
                "{}: a temporary file left behind",
                e.path().display()
            ));
        }
    }
    Ok(ChaosResult::of_jobs(
        args,
        &inputs,
        mid,
        interrupted.values().map(|r| r.len() as u64).sum(),
        &tally,
        final_run_s,
        violations,
    ))
}

/// (key, state, attempts) of every job in a batch's store.
pub(super) fn batch_rows(db: &Path) -> Result<Vec<(String, String, u32)>> {
    let Some(conn) = super::jobs_table(db)? else {
        return Ok(Vec::new());
    };
    let mut st = conn.prepare("SELECT key, state, attempts FROM jobs")?;
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
