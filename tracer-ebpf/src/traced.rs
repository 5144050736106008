//! "Is the current task traced?" — the first check of every program.

use aya_ebpf::helpers::bpf_get_current_cgroup_id;
use roar_node_common::traced::TracedCgroup;

use crate::maps::TRACED;

/// A traced task: its root cgroup id and its root filter entry (which holds
/// the task's epoch and loss counter).
#[derive(Clone, Copy)]
pub struct Traced {
    pub root: u64,
    pub entry: *mut TracedCgroup,
}

/// The task the current process belongs to, if it is traced.
#[inline(always)]
pub fn current() -> Option<Traced> {
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    let entry = TRACED.get_ptr_mut(cgroup)?;
    let root = unsafe { (*entry).root };
    if root == cgroup {
        return Some(Traced { root, entry });
    }
    // A descendant cgroup: its task's state lives on the root's entry.
    let entry = TRACED.get_ptr_mut(root)?;
    Some(Traced { root, entry })
}
