//! Kernel struct layouts, read from BTF at start-up by the daemon and
//! handed to the programs as a read-only global (`KERNEL`): Rust eBPF has
//! no CO-RE relocations, so this is how one object runs on many kernels.
//! The verifier sees the values as constants.

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    // task_struct
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_real_parent: u32,
    pub task_mm: u32,
    pub task_fs: u32,
    pub task_files: u32,
    pub task_nsproxy: u32,
    pub task_exit_code: u32,
    pub task_real_cred: u32,
    // cred
    pub cred_uid: u32,
    // fs_struct
    pub fs_root: u32,
    pub fs_pwd: u32,
    // struct path
    pub path_mnt: u32,
    pub path_dentry: u32,
    // files_struct / fdtable
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    // file
    pub file_f_path: u32,
    pub file_f_inode: u32,
    pub file_f_mode: u32,
    // inode
    pub inode_i_mode: u32,
    pub inode_i_ino: u32,
    pub inode_i_sb: u32,
    pub inode_i_generation: u32,
    pub inode_i_size: u32,
    pub inode_i_nlink: u32,
    // super_block
    pub sb_s_dev: u32,
    pub sb_s_magic: u32,
    // dentry
    pub dentry_d_parent: u32,
    pub dentry_d_name: u32,
    // qstr
    pub qstr_len: u32,
    pub qstr_name: u32,
    // vfsmount / mount
    pub vfsmount_mnt_root: u32,
    pub mount_mnt: u32,
    pub mount_mnt_parent: u32,
    pub mount_mnt_mountpoint: u32,
    // mm_struct
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    // linux_binprm
    pub bprm_file: u32,
    // nsproxy / mnt_namespace
    pub nsproxy_mnt_ns: u32,
    pub mnt_ns_inum: u32,
    // cgroup / kernfs_node
    pub cgroup_kn: u32,
    pub cgroup_level: u32,
    pub kn_parent: u32,
    pub kn_id: u32,
    // pt_regs (syscall arguments and number)
    pub regs_di: u32,
    pub regs_si: u32,
    pub regs_dx: u32,
    pub regs_r10: u32,
    pub regs_r8: u32,
    pub regs_orig_ax: u32,
    // cgroup -> cgroup_root (which hierarchy: 0 is the v2 one)
    pub cgroup_root: u32,
    pub cgroup_root_hierarchy_id: u32,
}

/// Run-time settings for the programs (a read-only global, `CONFIG`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TracerConfig {
    /// Wake the consumer when this many bytes are waiting in the ring
    /// buffer; below it, records are sent without a wakeup and the daemon
    /// drains on a short timer (one wakeup per event is the largest traced
    /// cost).
    pub wakeup_bytes: u64,
    /// tgid of the daemon itself, never traced.
    pub daemon_tgid: u32,
    pub _pad: u32,
}
