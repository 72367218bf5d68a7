//! The process's allocator, chosen once, before the first allocation.
//!
//! The daemon is long-lived and allocation heavy (every field of every issue it
//! reads or writes is a `String`): mimalloc halves a daemon `list` there, where
//! glibc's malloc spent ~20% in arena consolidation. A CLI process lives a few
//! milliseconds, and mimalloc's set-up cost it ~0.6 ms of CPU per run
//! (`perf stat`: 2.7 against 2.1 ms for `bd --no-daemon ready --json`). So the
//! daemon, which bd always starts itself, gets `BD_ALLOCATOR=mimalloc` in its
//! environment and every other process keeps the system allocator.
//!
//! Commands that churn through thousands of ops or issues in one run (`sync`,
//! `rebuild`, `import`, `export`, `doctor`, `demo`) also get mimalloc: there
//! glibc's malloc was ~17% of the instructions of applying other clones' ops,
//! far more than mimalloc's set-up. So does `mcp`, a server as long-lived as
//! the daemon. On glibc, `.init_array` functions receive
//! `argc`/`argv` before `main`; [`peek_command`] looks for the command word there
//! without allocating.
//!
//! The choice is read with `getenv` (which does not allocate) on the first
//! allocation and never changes, so every block is freed by the allocator that
//! made it. A wrong guess costs time, never correctness.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// Set before `main` when the command is one of [`HEAVY`].
static HEAVY_COMMAND: AtomicBool = AtomicBool::new(false);

/// Commands that process the whole tracker or every op in one run.
const HEAVY: &[&[u8]] = &[
    b"sync", b"rebuild", b"import", b"export", b"doctor", b"demo", b"mcp",
];

/// Global options that take a value as the next argument.
const VALUED: &[&[u8]] = &[b"--actor", b"--db", b"--dir", b"--timeout"];

/// Finds the command word (the first argument that is not an option or an
/// option's value) and notes whether it is heavy. Runs from `.init_array`, so it
/// must not allocate.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
extern "C" fn peek_command(
    argc: libc::c_int,
    argv: *const *const libc::c_char,
    _envp: *const *const libc::c_char,
) {
    if argv.is_null() {
        return;
    }
    let mut i = 1;
    while i < argc as isize {
        // SAFETY: glibc passes `argc` valid NUL-terminated strings in `argv`.
        let arg = unsafe {
            let p = *argv.offset(i);
            if p.is_null() {
                return;
            }
            std::ffi::CStr::from_ptr(p).to_bytes()
        };
        if VALUED.contains(&arg) {
            i += 2;
        } else if arg.starts_with(b"-") {
            i += 1;
        } else {
            HEAVY_COMMAND.store(HEAVY.contains(&arg), Ordering::Relaxed);
            return;
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[used]
#[unsafe(link_section = ".init_array")]
static PEEK_COMMAND: extern "C" fn(
    libc::c_int,
    *const *const libc::c_char,
    *const *const libc::c_char,
) = peek_command;

const UNDECIDED: u8 = 0;
const SYSTEM: u8 = 1;
const MIMALLOC: u8 = 2;

pub struct Chosen {
    which: AtomicU8,
}

impl Chosen {
    pub const fn new() -> Chosen {
        Chosen {
            which: AtomicU8::new(UNDECIDED),
        }
    }

    #[inline]
    fn mimalloc(&self) -> bool {
        match self.which.load(Ordering::Relaxed) {
            MIMALLOC => true,
            SYSTEM => false,
            _ => self.decide(),
        }
    }

    #[cold]
    fn decide(&self) -> bool {
        // SAFETY: getenv with a NUL-terminated name; the result is only read
        // here, before this process starts threads (the first allocation
        // happens during start-up, on the main thread).
        let wanted = unsafe {
            let v = libc::getenv(c"BD_ALLOCATOR".as_ptr());
            !v.is_null() && std::ffi::CStr::from_ptr(v).to_bytes() == b"mimalloc"
        };
        let wanted = wanted || HEAVY_COMMAND.load(Ordering::Relaxed);
        let which = if wanted { MIMALLOC } else { SYSTEM };
        // If two threads raced here they computed the same answer.
        self.which.store(which, Ordering::Relaxed);
        wanted
    }
}

/// The allocator this process uses ("mimalloc" or "system"); asking decides it
/// if nothing has allocated yet.
pub fn name() -> &'static str {
    if super::ALLOC.mimalloc() {
        "mimalloc"
    } else {
        "system"
    }
}

// SAFETY: every call forwards to one allocator, fixed before the first block was
// handed out, so `dealloc`/`realloc` always reach the allocator that allocated.
unsafe impl GlobalAlloc for Chosen {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe {
            if self.mimalloc() {
                mimalloc::MiMalloc.alloc(layout)
            } else {
                System.alloc(layout)
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe {
            if self.mimalloc() {
                mimalloc::MiMalloc.alloc_zeroed(layout)
            } else {
                System.alloc_zeroed(layout)
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe {
            if self.mimalloc() {
                mimalloc::MiMalloc.dealloc(ptr, layout)
            } else {
                System.dealloc(ptr, layout)
            }
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe {
            if self.mimalloc() {
                mimalloc::MiMalloc.realloc(ptr, layout, new_size)
            } else {
                System.realloc(ptr, layout, new_size)
            }
        }
    }
}
