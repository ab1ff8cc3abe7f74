//! Every input a fuzz target (fuzz/, cargo-fuzz) ever crashed on, and its seeds, replayed
//! through the same entry points (`ctxd::fuzzing`): `cargo test` keeps them fixed.

use std::path::PathBuf;

#[test]
fn fuzz_seeds_and_past_crashes_run_clean() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for (name, target) in ctxd::fuzzing::TARGETS {
        let mut replayed = 0;
        for kind in ["seeds", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(kind).join(name)) else {
                continue;
            };
            for e in entries.flatten() {
                let data = std::fs::read(e.path()).unwrap();
                // A panic here names the file that caused it.
                eprintln!("{name}: {}", e.path().display());
                target(&data);
                replayed += 1;
            }
        }
        assert!(replayed > 0, "fuzz/seeds/{name} has no inputs");
    }
}
