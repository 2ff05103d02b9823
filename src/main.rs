//! The `sqscale` binary: everything lives in the library; see `sqscale --help`.

fn main() -> std::process::ExitCode {
    sqscale::cli::main()
}
