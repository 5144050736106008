//! Present so the daemon can name this crate as a build dependency (cargo
//! then rebuilds the daemon when it changes); the programs are the binary.
#![no_std]
