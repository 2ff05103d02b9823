//! The `sqscale` binary: everything lives in the library; see `sqscale --help`.

/// mimalloc instead of glibc's malloc: with ten thousand rules, glibc spent a quarter of
/// the daemon's CPU in malloc/free and kept the memory freed after start-up in its
/// per-thread arenas (PERFORMANCE.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    sqscale::cli::main()
}
