//! The `ctxd` binary: parse, run, map the result to an exit code (see `cli`).

fn main() -> std::process::ExitCode {
    ctxd::cli::main()
}
