//! The `ctxd` binary: parse, run, map the result to an exit code (see `cli`).

mod zeroed_memalign;

fn main() -> std::process::ExitCode {
    ctxd::huge_pages::restart_with_huge_pages();
    ctxd::cli::main()
}
