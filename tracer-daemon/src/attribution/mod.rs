//! Which task an event belongs to. In `run` mode that is simply the cgroup
//! roar-node made for the command; the cgroup v2 plumbing lives here.

pub mod cgroup_path;
pub mod cgroupfs;
