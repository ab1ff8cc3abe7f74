//! The `ctxd` binary: parse, run, map the result to an exit code (see `cli`).

mod zeroed_memalign;

fn main() -> std::process::ExitCode {
    ctxd::cli::main()
}
