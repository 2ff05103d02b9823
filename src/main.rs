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

/// Opts the process out of transparent huge pages, before `main` and so before the
/// first allocation. mimalloc asks for them on its segments (`madvise(MADV_HUGEPAGE)`),
/// and a 2 MiB page is resident as soon as one byte of it is touched: with ten
/// thousand rules that was 63 MiB of the resident memory, about 9 MiB of it never used
/// (PERFORMANCE.md). A daemon that mostly sleeps gains nothing from huge pages; Redis
/// and most databases recommend the same.
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static NO_HUGE_PAGES: extern "C" fn() = {
    extern "C" fn no_huge_pages() {
        // SAFETY: PR_SET_THP_DISABLE takes integer arguments and touches no memory.
        unsafe {
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        }
    }
    no_huge_pages
};
