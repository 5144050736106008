//! One definition of every roar-node event, for both halves of the tracer.
//!
//! The eBPF programs (`tracer-ebpf`) write these `#[repr(C)]` structs into
//! the ring buffer; the daemon (`tracer-daemon`, with the `user` feature)
//! decodes them. Every event is `EventHeader` + a fixed payload + a
//! variable-length tail (paths, argv), so small events stay small.
#![no_std]

pub mod event;
pub mod limits;
pub mod loss;
pub mod offsets;
pub mod path;
pub mod syscalls;
pub mod traced;

#[cfg(feature = "user")]
pub mod decode;

pub use event::*;
