//! A few atomic counters shared by the generator processes of one cell through a file in
//! /dev/shm: how many subscribers are live, and per in-flight message how many receivers
//! got it and when the last one did (publish-to-last-receiver latency without shipping
//! per-message times between processes).

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicU64;

/// Messages tracked at once (the publisher's window must stay far below it).
pub const RING: usize = 8192;
/// Word: subscribers that received their first message.
pub const SUBSCRIBED: usize = 0;
/// Word: subscribers connected (and, for JSON, joined) in every worker.
pub const CONNECTED: usize = 1;
const COUNT_BASE: usize = 8;
const LAST_BASE: usize = COUNT_BASE + RING;
/// Words in the region.
pub const WORDS: usize = LAST_BASE + RING;

/// A shared mapping of [`WORDS`] atomic words.
pub struct Shm {
    ptr: *mut AtomicU64,
}

impl Shm {
    /// Creates (zeroed) or opens the file at `path` and maps it.
    pub fn open(path: &str, create: bool) -> io::Result<Shm> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(create)
            .open(path)?;
        let bytes = WORDS * 8;
        if create {
            f.set_len(bytes as u64)?;
        }
        // SAFETY: a shared read-write mapping of a file we sized; it stays valid after the
        // descriptor closes and is only ever accessed through atomics.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Shm { ptr: ptr.cast() })
    }

    /// Word `i`.
    pub fn word(&self, i: usize) -> &AtomicU64 {
        assert!(i < WORDS);
        // SAFETY: in bounds of a live mapping of WORDS aligned u64 words.
        unsafe { &*self.ptr.add(i) }
    }

    /// Receivers that got message `seq` (mod [`RING`]).
    pub fn count(&self, seq: u64) -> &AtomicU64 {
        self.word(COUNT_BASE + (seq as usize % RING))
    }

    /// When the last receiver got message `seq` (mod [`RING`]).
    pub fn last(&self, seq: u64) -> &AtomicU64 {
        self.word(LAST_BASE + (seq as usize % RING))
    }
}

// The mapping is never unmapped (one per process, for its whole life), so sharing the
// pointer across tasks is sound.
unsafe impl Send for Shm {}
unsafe impl Sync for Shm {}
