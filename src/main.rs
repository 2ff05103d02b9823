//! The `sqscale` binary: everything lives in the library; see `sqscale --help`.

/// mimalloc instead of glibc's malloc: with ten thousand rules, glibc spent a quarter of
/// the daemon's CPU in malloc/free and kept the memory freed after start-up in its
/// per-thread arenas (PERFORMANCE.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    #[cfg(feature = "mimalloc")]
    purge_at_once();
    sqscale::cli::main()
}

/// mimalloc's `purge_delay` option (`mi_option_purge_delay` in v3's `mimalloc.h`; the
/// Rust bindings do not name it). Checked against the library's default by a test.
#[cfg(feature = "mimalloc")]
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

#[cfg(feature = "mimalloc")]
unsafe extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    #[cfg(test)]
    fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
}

/// Has mimalloc give freed pages back to the OS at once instead of a second later. Start-up
/// (the rule file's parse, ten thousand first polls) and every TLS request free memory
/// in bursts; with the delay, pages freed between the bursts stayed resident: at 10,000
/// rules over TLS, 64.7 -> 51.3 MiB of RSS idle and 69.7 -> 59.1 MiB busy, the start-up
/// peak 118.7 -> 82.7 MiB, for the same CPU (PERFORMANCE.md). A `MIMALLOC_PURGE_DELAY`
/// in the environment still wins.
#[cfg(feature = "mimalloc")]
fn purge_at_once() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: mi_option_set takes an option index and a value and only stores the value.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
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

#[cfg(all(test, feature = "mimalloc"))]
mod tests {
    use super::*;

    /// The index names the purge delay: its default in mimalloc v3 is 1000 ms (an
    /// index that pointed at another option would read its default instead).
    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: reads an option's value.
        assert_eq!(unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) }, 1000);
        purge_at_once();
        // SAFETY: as above.
        assert_eq!(unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) }, 0);
    }
}
