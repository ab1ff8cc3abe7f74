//! ONNX Runtime's memory-reuse planning, turned off for CPU sessions.
//!
//! Building a session, ONNX Runtime's allocation planner looks, for every tensor a node writes,
//! through every buffer freed so far for one of the same type and shape it could take over
//! (`FindReusableTensor`), parsing each candidate's type name again on the way. With the
//! exporter's symbolic shapes few candidates match, so the list of freed buffers only grows and
//! the search is quadratic in the graph: without it, loading the tiny bundle's optimized UNet
//! took 24 ms instead of 164, the demo's 54–60 ms instead of 380–430 (ONNX Runtime 1.31.1,
//! one thread). At run
//! time the arena hands a freed buffer to the next tensor anyway, so the plan buys nothing
//! measurable here: the demo UNet's guided step and peak memory were the same with it off.
//!
//! The C API has no switch for it (Python's `SessionOptions.enable_mem_reuse` sets the C++ field
//! directly), so ctxd clears that field in place. It sits between `enable_mem_pattern` and
//! `enable_cpu_mem_arena` in `onnxruntime::SessionOptions`, the first member of
//! `OrtSessionOptions`; their offsets are found once by toggling each through the C API and
//! seeing which byte changes. Anything else in that picture (another ONNX Runtime, another
//! layout) and nothing is written: sessions plan reuse as before. `CTXD_ORT_MEM_REUSE=1` keeps
//! the planning on, for comparison.

use std::sync::OnceLock;

use ort::session::builder::SessionBuilder;
use ort::AsPointer;

use super::runtime::ort_status;

/// Bytes of `OrtSessionOptions` looked at; the three flags sit about 48 bytes in, and the
/// structure is several hundred bytes long.
const SCAN: usize = 128;

/// The offset of `enable_mem_reuse` in `OrtSessionOptions`, when the layout is the known one.
fn offset() -> Option<usize> {
    static OFFSET: OnceLock<Option<usize>> = OnceLock::new();
    *OFFSET.get_or_init(|| {
        let found = probe();
        if let Err(why) = &found {
            tracing::debug!("ONNX Runtime's memory-reuse planning stays on: {why}");
        }
        found.ok()
    })
}

/// `DisableMemPattern`, `EnableCpuMemArena` and the like.
type Toggle = unsafe extern "system" fn(*mut ort::sys::OrtSessionOptions) -> ort::sys::OrtStatusPtr;

fn probe() -> Result<usize, String> {
    let api = ort::api();
    let mut opts: *mut ort::sys::OrtSessionOptions = std::ptr::null_mut();
    // SAFETY: the out-pointer is valid; the options are released below.
    ort_status(unsafe { (api.CreateSessionOptions)(&mut opts) })?;
    let read = || {
        let mut bytes = [0u8; SCAN];
        // SAFETY: `opts` is a live OrtSessionOptions, longer than SCAN bytes (its first member
        // alone holds several strings, thread-pool parameters and maps), created zeroed and
        // then constructed, so every byte read is initialised.
        unsafe { std::ptr::copy_nonoverlapping(opts.cast::<u8>(), bytes.as_mut_ptr(), SCAN) };
        bytes
    };
    let toggled = |off: Toggle, on: Toggle| -> Result<[u8; SCAN], String> {
        // SAFETY: `opts` is live; these calls only set a flag.
        ort_status(unsafe { off(opts) })?;
        let bytes = read();
        ort_status(unsafe { on(opts) })?;
        Ok(bytes)
    };
    let layout = (|| {
        let base = read();
        let no_pattern = toggled(api.DisableMemPattern, api.EnableMemPattern)?;
        let no_arena = toggled(api.DisableCpuMemArena, api.EnableCpuMemArena)?;
        if read() != base {
            return Err("toggling flags changed other bytes".to_string());
        }
        locate(&base, &no_pattern, &no_arena)
    })();
    // SAFETY: created above and not used after this.
    unsafe { (api.ReleaseSessionOptions)(opts) };
    layout
}

/// The reuse flag's offset from the options' bytes as created (`base`) and with only the
/// memory pattern, or only the CPU arena, turned off: the pattern's flag, the reuse flag and
/// the arena's flag must be three consecutive `true` bytes.
fn locate(base: &[u8], no_pattern: &[u8], no_arena: &[u8]) -> Result<usize, String> {
    let cleared = |other: &[u8], what: &str| -> Result<usize, String> {
        let changed: Vec<usize> = (0..base.len()).filter(|&i| base[i] != other[i]).collect();
        match changed[..] {
            [i] if base[i] == 1 && other[i] == 0 => Ok(i),
            _ => Err(format!(
                "turning off {what} changed bytes {changed:?}, not one flag"
            )),
        }
    };
    let pattern = cleared(no_pattern, "the memory pattern")?;
    let arena = cleared(no_arena, "the CPU arena")?;
    if arena == pattern + 2 && base[pattern + 1] == 1 {
        Ok(pattern + 1)
    } else {
        Err(format!(
            "unknown layout (memory pattern at {pattern}, CPU arena at {arena})"
        ))
    }
}

/// Whether sessions are built without memory-reuse planning (the default, where the layout is
/// known), or the user asked to keep it.
pub fn planning_off() -> bool {
    clearable_offset().is_some()
}

/// The flag's offset, unless the layout is unknown or the user keeps the planning.
fn clearable_offset() -> Option<usize> {
    offset().filter(|_| std::env::var("CTXD_ORT_MEM_REUSE").as_deref() != Ok("1"))
}

/// Turns memory-reuse planning off for sessions built with `builder`; false where it stays on.
pub(crate) fn turn_off(builder: &mut SessionBuilder) -> bool {
    let Some(at) = clearable_offset() else {
        return false;
    };
    let flag = builder.ptr().cast_mut().cast::<u8>().wrapping_add(at);
    // SAFETY: the builder owns its live OrtSessionOptions, whose layout `offset` checked: the
    // byte is the `bool enable_mem_reuse` field, written while nothing else uses the options.
    unsafe {
        if *flag != 1 {
            return false;
        }
        *flag = 0;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reuse_flag_is_found_between_the_pattern_and_the_arena_flags() {
        let mut base = [0u8; 16];
        base[4..7].copy_from_slice(&[1, 1, 1]);
        let mut no_pattern = base;
        no_pattern[4] = 0;
        let mut no_arena = base;
        no_arena[6] = 0;
        assert_eq!(locate(&base, &no_pattern, &no_arena), Ok(5));
        // A gap or a false byte between them is another layout.
        let mut far = base;
        far[7] = 1;
        let mut far_no_arena = far;
        far_no_arena[7] = 0;
        let mut far_no_pattern = far;
        far_no_pattern[4] = 0;
        assert!(locate(&far, &far_no_pattern, &far_no_arena).is_err());
        let mut hole = base;
        hole[5] = 0;
        let (mut hp, mut ha) = (hole, hole);
        hp[4] = 0;
        ha[6] = 0;
        assert!(locate(&hole, &hp, &ha).is_err());
        // Two bytes changing for one flag is not a flag.
        let mut two = no_pattern;
        two[9] = 3;
        assert!(locate(&base, &two, &no_arena).is_err());
    }

    #[test]
    fn a_session_without_the_plan_computes_the_same() {
        use crate::model::{Bundle, Input, Kind, RuntimeOptions};
        use ndarray::{Array, IxDyn};
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny");
        let bundle = Bundle::open(&dir).unwrap();
        let run = |plan_memory_reuse: bool| {
            let opts = RuntimeOptions {
                plan_memory_reuse,
                ..RuntimeOptions::default()
            };
            let mut unet = bundle.load(Kind::Unet, &opts).unwrap();
            let x = Array::from_shape_fn(IxDyn(&[2, 4, 3, 8, 8]), |i| {
                ((i[1] * 7 + i[2] * 5 + i[3] * 3 + i[4]) % 11) as f32 / 11.0 - 0.5
            });
            let c = Array::from_shape_fn(IxDyn(&[2, 77, 32]), |i| ((i[1] + i[2]) % 5) as f32 / 5.0);
            let t = Array::from_elem(IxDyn(&[2]), 500.0f32);
            unet.run_one(
                vec![
                    ("sample", Input::F32(x)),
                    ("timestep", Input::F32(t)),
                    ("encoder_hidden_states", Input::F32(c)),
                ],
                "out_sample",
            )
            .unwrap()
        };
        assert!(offset().is_some(), "the layout is known (below)");
        let (planned, unplanned) = (run(true), run(false));
        assert_eq!(planned.shape(), &[2, 4, 3, 8, 8]);
        // Where tensors live changes, not what is computed: bit for bit the same.
        assert_eq!(planned, unplanned);
    }

    #[test]
    fn onnx_runtime_reads_the_cleared_flag() {
        use ort::logging::LogLevel;
        use ort::session::Session;
        use std::sync::{Arc, Mutex};
        let env = crate::model::runtime::environment().unwrap();
        let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models/tiny/context_adapter.onnx");
        // ONNX Runtime traces a session's options when it is created, at the verbose level.
        let traced = |clear: bool| -> String {
            let log = Arc::new(Mutex::new(String::new()));
            let sink = log.clone();
            let mut b = Session::builder(&env).unwrap();
            if clear {
                assert!(turn_off(&mut b) || !planning_off());
            }
            let mut b = b
                .with_log_level(LogLevel::Verbose)
                .unwrap()
                .with_logger(Arc::new(move |_, _, _, _, msg: &str| {
                    sink.lock().unwrap().push_str(msg);
                }))
                .unwrap();
            drop(b.commit_from_file(&model).unwrap());
            let text = log.lock().unwrap().clone();
            text
        };
        if !planning_off() {
            return; // CTXD_ORT_MEM_REUSE=1 in the environment
        }
        assert!(
            traced(false).contains("enable_mem_reuse:1"),
            "{}",
            traced(false)
        );
        assert!(
            traced(true).contains("enable_mem_reuse:0"),
            "{}",
            traced(true)
        );
    }

    #[test]
    fn the_pinned_onnx_runtime_has_the_known_layout() {
        // scripts/setup installs the ONNX Runtime this was measured on; a new one with another
        // layout must be looked at (sessions would silently plan reuse again, loading slower).
        assert!(probe().is_ok(), "{:?}", probe());
    }
}
