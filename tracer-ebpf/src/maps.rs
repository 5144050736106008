//! Maps and read-only globals shared by all programs.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use roar_node_common::{
    limits::SCRATCH_SIZE,
    loss::STATS_LEN,
    offsets::{KernelOffsets, TracerConfig},
    traced::{SeenKey, TracedCgroup},
};

/// Events to userspace. The daemon sizes it at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// cgroup id -> filter entry: the only policy the kernel knows.
#[map]
pub static TRACED: HashMap<u64, TracedCgroup> = HashMap::with_max_entries(16 * 1024, 0);

/// (task, file object, epoch) -> accesses already reported.
#[map]
pub static SEEN: LruHashMap<SeenKey, u32> = LruHashMap::with_max_entries(256 * 1024, 0);

/// Where one event is assembled before it is copied to the ring buffer.
#[map]
pub static SCRATCH: PerCpuArray<[u8; SCRATCH_SIZE]> = PerCpuArray::with_max_entries(1, 0);

/// Loss and activity counters (`roar_node_common::loss`).
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STATS_LEN, 0);

/// Struct offsets from the running kernel's BTF, set by the loader.
#[unsafe(no_mangle)]
pub static KERNEL: KernelOffsets = unsafe { core::mem::zeroed() };

/// Settings, set by the loader.
#[unsafe(no_mangle)]
pub static CONFIG: TracerConfig = unsafe { core::mem::zeroed() };

/// Reads one field of a loader-set global. The volatile read keeps LLVM from
/// folding the zero initializer; the verifier sees the loaded value as a
/// constant because the global lives in a frozen read-only map.
macro_rules! global {
    ($g:ident . $field:ident) => {
        unsafe { core::ptr::read_volatile(&raw const $crate::maps::$g.$field) }
    };
}
pub(crate) use global;

/// Increments a `STATS` counter.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(p) = STATS.get_ptr_mut(index) {
        // Per-CPU slot: no other CPU writes it.
        unsafe { *p += 1 };
    }
}

/// Atomically adds to a u32 in a map value shared by all CPUs.
#[inline(always)]
pub fn atomic_add32(p: *mut u32, v: u32) {
    #[cfg(target_arch = "bpf")]
    unsafe {
        core::intrinsics::atomic_xadd::<u32, u32, { core::intrinsics::AtomicOrdering::Relaxed }>(
            p, v,
        );
    }
    #[cfg(not(target_arch = "bpf"))]
    unsafe {
        core::sync::atomic::AtomicU32::from_ptr(p)
            .fetch_add(v, core::sync::atomic::Ordering::Relaxed);
    }
}

/// Atomically adds to a u64 in a map value shared by all CPUs.
#[inline(always)]
pub fn atomic_add(p: *mut u64, v: u64) {
    #[cfg(target_arch = "bpf")]
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            p, v,
        );
    }
    #[cfg(not(target_arch = "bpf"))]
    unsafe {
        core::sync::atomic::AtomicU64::from_ptr(p)
            .fetch_add(v, core::sync::atomic::Ordering::Relaxed);
    }
}
