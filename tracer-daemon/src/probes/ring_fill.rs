//! How many bytes the kernel has written into the ring buffer that the
//! consumer has not read yet: the ring buffer's own producer and consumer
//! positions, read from read-only mappings of its first two pages (the
//! consumer page, then the producer page: the kernel's layout of a
//! `BPF_MAP_TYPE_RINGBUF` mapping). Reading them costs two loads; nothing
//! is written, so the one consumer is not disturbed.

use std::{
    os::fd::{AsFd, AsRawFd, OwnedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

/// Read-only views of the ring buffer's position pages.
pub(crate) struct RingFill {
    consumer: NonNull<libc::c_void>,
    producer: NonNull<libc::c_void>,
    page: usize,
    /// The map, held open while the pages are mapped.
    _fd: OwnedFd,
}

// SAFETY: the mappings are read-only views of kernel memory that lives as
// long as `_fd`; only atomic loads read them.
unsafe impl Send for RingFill {}
unsafe impl Sync for RingFill {}

fn map_page(fd: &OwnedFd, page: usize, offset: usize) -> std::io::Result<NonNull<libc::c_void>> {
    // SAFETY: a fresh shared read-only mapping of one page of the map.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            page,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            offset as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    NonNull::new(p).ok_or_else(|| std::io::Error::other("mmap returned NULL"))
}

impl RingFill {
    /// Maps the position pages of the ring buffer whose map fd is `fd`.
    pub(crate) fn new(fd: impl AsFd) -> std::io::Result<Self> {
        let fd = fd.as_fd().try_clone_to_owned()?;
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| std::io::Error::other("no page size"))?;
        let consumer = map_page(&fd, page, 0)?;
        let producer = match map_page(&fd, page, page) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: mapped just above, with this length.
                unsafe { libc::munmap(consumer.as_ptr(), page) };
                return Err(e);
            }
        };
        Ok(Self {
            consumer,
            producer,
            page,
            _fd: fd,
        })
    }

    /// Bytes written by the kernel and not read yet (record headers
    /// included).
    pub(crate) fn unread_bytes(&self) -> u64 {
        // SAFETY: each page starts with the kernel's u64 position, which
        // the kernel (producer) and the consumer update atomically.
        let load = |p: NonNull<libc::c_void>| unsafe {
            (*p.as_ptr().cast::<AtomicU64>()).load(Ordering::Acquire)
        };
        let consumer = load(self.consumer);
        let producer = load(self.producer);
        producer.saturating_sub(consumer)
    }
}

impl Drop for RingFill {
    fn drop(&mut self) {
        // SAFETY: mapped in `new` with these lengths, unmapped once.
        unsafe {
            libc::munmap(self.consumer.as_ptr(), self.page);
            libc::munmap(self.producer.as_ptr(), self.page);
        }
    }
}
