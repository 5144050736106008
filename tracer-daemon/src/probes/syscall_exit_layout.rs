//! The file program reads `__syscall_nr` and `ret` from the
//! `syscalls/sys_exit_*` record at fixed offsets (8 and 16). Check that
//! against the kernel's own description before attaching, so a kernel that
//! changed it is refused with a clear error instead of traced wrongly.

use std::path::Path;

use super::ProbeError;

const TRACEFS: &[&str] = &["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
const EXPECTED: &[(&str, u32)] = &[("__syscall_nr", 8), ("ret", 16)];

pub(crate) fn check() -> Result<(), ProbeError> {
    let Some(format) = TRACEFS
        .iter()
        .map(|t| Path::new(t).join("events/syscalls/sys_exit_openat/format"))
        .find_map(|p| std::fs::read_to_string(p).ok())
    else {
        return Err(ProbeError::Preflight(
            "syscall tracepoints not found: mount tracefs (`mount -t tracefs tracefs /sys/kernel/tracing`) \
             and check the kernel has CONFIG_FTRACE_SYSCALLS"
                .into(),
        ));
    };
    verify(&format)
}

/// `field:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;` -> offsets.
fn verify(format: &str) -> Result<(), ProbeError> {
    for (field, want) in EXPECTED {
        let found = format.lines().find_map(|line| {
            let decl = line.trim().strip_prefix("field:")?.split(';').next()?;
            if decl.rsplit([' ', '*']).next()? != *field {
                return None;
            }
            let off = line.split("offset:").nth(1)?.split(';').next()?;
            off.trim().parse::<u32>().ok()
        });
        match found {
            Some(off) if off == *want => {}
            other => {
                return Err(ProbeError::Preflight(format!(
                    "unsupported kernel: sys_exit tracepoint field `{field}` is at {other:?}, expected offset {want}"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: &str = "name: sys_exit_openat\nID: 781\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n\
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\
\tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;\n\nprint fmt: \"0x%lx\", REC->ret\n";

    #[test]
    fn accepts_this_kernels_layout() {
        verify(REAL).unwrap();
    }

    #[test]
    fn refuses_a_moved_field() {
        let moved = REAL.replace("long ret;\toffset:16", "long ret;\toffset:24");
        let e = verify(&moved).unwrap_err().to_string();
        assert!(e.contains("`ret`") && e.contains("24"), "{e}");
        let gone = REAL.replace("__syscall_nr", "nr");
        assert!(verify(&gone).is_err());
    }
}
