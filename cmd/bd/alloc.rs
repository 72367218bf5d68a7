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
//! The choice is read with `getenv` (which does not allocate) on the first
//! allocation and never changes, so every block is freed by the allocator that
//! made it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU8, Ordering};

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
        let which = if wanted { MIMALLOC } else { SYSTEM };
        // If two threads raced here they computed the same answer.
        self.which.store(which, Ordering::Relaxed);
        wanted
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
