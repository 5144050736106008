//! Struct offsets of the running kernel, read from its BTF.
//!
//! Rust eBPF has no CO-RE relocations, so the programs receive every
//! offset they use as a read-only global. A field that moved is found by
//! name here; a field that was renamed is looked up under each name it has
//! had.

use btf_rs::{Btf, Type};
use roar_node_common::offsets::KernelOffsets;

use super::ProbeError;

/// Parsed vmlinux BTF with offset lookups.
pub(crate) struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    pub(crate) fn from_file(path: &std::path::Path) -> Result<Self, ProbeError> {
        // Parse from memory: btf-rs's file reader seeks once per type
        // (over 100k syscalls for vmlinux, a third of start-up time).
        let bytes =
            std::fs::read(path).map_err(|e| ProbeError::Btf(format!("{}: {e}", path.display())))?;
        let btf = Btf::from_bytes(&bytes)
            .map_err(|e| ProbeError::Btf(format!("{}: {e}", path.display())))?;
        Ok(Self { btf })
    }

    /// Byte offset of `path` (dot-separated members, searched through
    /// anonymous structs and unions) inside `struct name`.
    pub(crate) fn offset(&self, name: &str, path: &str) -> Result<u32, ProbeError> {
        let ty = self.struct_type(name)?;
        let mut ty = ty;
        let mut total_bits = 0u32;
        for field in path.split('.') {
            let (bits, member_ty) = self
                .find_member(&ty, field)?
                .ok_or_else(|| ProbeError::Btf(format!("struct {name} has no member {path}")))?;
            total_bits += bits;
            ty = self.strip(member_ty)?;
        }
        if !total_bits.is_multiple_of(8) {
            return Err(ProbeError::Btf(format!("{name}.{path} is a bitfield")));
        }
        Ok(total_bits / 8)
    }

    /// The first of several historical names that exists.
    pub(crate) fn offset_any(&self, name: &str, paths: &[&str]) -> Result<u32, ProbeError> {
        let mut last = None;
        for p in paths {
            match self.offset(name, p) {
                Ok(o) => return Ok(o),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ProbeError::Btf(format!("no member names given for {name}"))))
    }

    fn struct_type(&self, name: &str) -> Result<Type, ProbeError> {
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|e| ProbeError::Btf(format!("struct {name}: {e}")))?;
        types
            .into_iter()
            .find(|t| matches!(t, Type::Struct(s) if !s.members.is_empty()))
            .ok_or_else(|| ProbeError::Btf(format!("struct {name} not found in kernel BTF")))
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn strip(&self, mut ty: Type) -> Result<Type, ProbeError> {
        loop {
            ty = match &ty {
                Type::Typedef(t) => self.chained(t)?,
                Type::Volatile(t) | Type::Const(t) | Type::Restrict(t) => self.chained(t)?,
                Type::TypeTag(t) => self.chained(t)?,
                _ => return Ok(ty),
            };
        }
    }

    fn chained<T: btf_rs::BtfType + ?Sized>(&self, t: &T) -> Result<Type, ProbeError> {
        self.btf
            .resolve_chained_type(t)
            .map_err(|e| ProbeError::Btf(e.to_string()))
    }

    /// Finds `field` in a struct or union, descending into anonymous
    /// members. Returns its bit offset and type.
    fn find_member(&self, ty: &Type, field: &str) -> Result<Option<(u32, Type)>, ProbeError> {
        let members = match ty {
            Type::Struct(s) | Type::Union(s) => &s.members,
            _ => return Ok(None),
        };
        for m in members {
            let name = self.btf.resolve_name(m).unwrap_or_default();
            let mty = self.strip(self.chained(m)?)?;
            if name == field {
                return Ok(Some((m.bit_offset(), mty)));
            }
            if name.is_empty()
                && let Some((bits, t)) = self.find_member(&mty, field)?
            {
                return Ok(Some((m.bit_offset() + bits, t)));
            }
        }
        Ok(None)
    }

    /// Every offset the programs use.
    pub(crate) fn kernel_offsets(&self) -> Result<KernelOffsets, ProbeError> {
        let o = |s: &str, f: &str| self.offset(s, f);
        Ok(KernelOffsets {
            task_pid: o("task_struct", "pid")?,
            task_tgid: o("task_struct", "tgid")?,
            task_real_parent: o("task_struct", "real_parent")?,
            task_mm: o("task_struct", "mm")?,
            task_fs: o("task_struct", "fs")?,
            task_files: o("task_struct", "files")?,
            task_nsproxy: o("task_struct", "nsproxy")?,
            task_exit_code: o("task_struct", "exit_code")?,
            task_real_cred: o("task_struct", "real_cred")?,
            cred_uid: o("cred", "uid")?,
            fs_root: o("fs_struct", "root")?,
            fs_pwd: o("fs_struct", "pwd")?,
            path_mnt: o("path", "mnt")?,
            path_dentry: o("path", "dentry")?,
            files_fdt: o("files_struct", "fdt")?,
            fdt_max_fds: o("fdtable", "max_fds")?,
            fdt_fd: o("fdtable", "fd")?,
            file_f_path: o("file", "f_path")?,
            file_f_inode: o("file", "f_inode")?,
            file_f_mode: o("file", "f_mode")?,
            inode_i_mode: o("inode", "i_mode")?,
            inode_i_ino: o("inode", "i_ino")?,
            inode_i_sb: o("inode", "i_sb")?,
            inode_i_generation: o("inode", "i_generation")?,
            inode_i_size: o("inode", "i_size")?,
            // `i_nlink` sits in an anonymous union with `__i_nlink`.
            inode_i_nlink: o("inode", "i_nlink")?,
            sb_s_dev: o("super_block", "s_dev")?,
            sb_s_magic: o("super_block", "s_magic")?,
            dentry_d_parent: o("dentry", "d_parent")?,
            dentry_d_name: o("dentry", "d_name")?,
            qstr_len: o("qstr", "len")?,
            qstr_name: o("qstr", "name")?,
            vfsmount_mnt_root: o("vfsmount", "mnt_root")?,
            mount_mnt: o("mount", "mnt")?,
            mount_mnt_parent: o("mount", "mnt_parent")?,
            mount_mnt_mountpoint: o("mount", "mnt_mountpoint")?,
            mm_arg_start: o("mm_struct", "arg_start")?,
            mm_arg_end: o("mm_struct", "arg_end")?,
            bprm_file: o("linux_binprm", "file")?,
            nsproxy_mnt_ns: o("nsproxy", "mnt_ns")?,
            mnt_ns_inum: o("mnt_namespace", "ns.inum")?,
            cgroup_kn: o("cgroup", "kn")?,
            cgroup_level: o("cgroup", "level")?,
            cgroup_root: o("cgroup", "root")?,
            cgroup_root_hierarchy_id: o("cgroup_root", "hierarchy_id")?,
            // Renamed to __parent in 6.15.
            kn_parent: self.offset_any("kernfs_node", &["__parent", "parent"])?,
            kn_id: o("kernfs_node", "id")?,
            regs_di: o("pt_regs", "di")?,
            regs_si: o("pt_regs", "si")?,
            regs_dx: o("pt_regs", "dx")?,
            regs_r10: o("pt_regs", "r10")?,
            regs_r8: o("pt_regs", "r8")?,
            regs_orig_ax: o("pt_regs", "orig_ax")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the real kernel's BTF: offsets that every kernel agrees on.
    #[test]
    fn resolves_offsets_of_this_kernel() {
        let path = std::path::Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            panic!("no kernel BTF at {}: roar-node needs it", path.display());
        }
        let btf = KernelBtf::from_file(path).unwrap();
        let o = btf.kernel_offsets().unwrap();
        // Stable ABI facts: struct path is {mnt, dentry}; pt_regs on x86_64
        // keeps orig_ax at 15 * 8.
        assert_eq!((o.path_mnt, o.path_dentry), (0, 8));
        assert_eq!(o.regs_orig_ax, 120);
        assert_eq!(o.qstr_name, 8);
        // Members inside anonymous unions/structs are found.
        assert!(o.file_f_path > 0);
        assert!(o.mm_arg_end == o.mm_arg_start + 8);
        assert!(btf.offset("task_struct", "no_such_member").is_err());
    }
}
