use roar_node_common::path::{PATH_RAW_READ_ERROR, PATH_TRUNCATED, PATH_UNLINKED};

use super::*;
use crate::events::Link;

fn fp(p: &str) -> FilePath {
    FilePath {
        bytes: p.as_bytes().to_vec(),
        inexact: 0,
    }
}

/// A path as the decoder makes an inexact one.
fn inexact(known: &str, flags: u16) -> FilePath {
    FilePath {
        bytes: format!("…{known}").into_bytes(),
        inexact: flags,
    }
}

fn open(p: &str, read: bool, write: bool, created: bool) -> Open {
    Open {
        path: fp(p),
        read,
        write,
        created,
        truncated: false,
        flags_unknown: false,
        size_unknown: false,
        tmpfile: false,
        dev: 1 << 20,
        ino: 7,
        generation: 0,
        size: 3,
        syscall: 257,
    }
}

/// An O_TMPFILE open of inode `ino` in `dir`, as the kernel reports it.
fn tmpfile(dir: &str, ino: u64) -> Open {
    Open {
        path: inexact(&format!("{dir}/#{ino}"), PATH_UNLINKED),
        tmpfile: true,
        ino,
        ..open("/unused", false, true, false)
    }
}

fn outputs(t: &FileTable) -> Vec<String> {
    t.iter()
        .filter(|(_, st)| st.output.is_some())
        .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
        .collect()
}

/// Two tasks share a budget of 3 paths: the second overflows once the
/// first holds 2; when the first is dropped its paths come back.
#[test]
fn a_shared_budget_bounds_all_tasks() {
    let budget = FileBudget::new(3);
    let mut a = FileTable::new(100).with_budget(Some(budget.clone()));
    let mut b = FileTable::new(100).with_budget(Some(budget.clone()));
    let write = |t: &mut FileTable, p: &str| {
        t.open(&open(p, false, true, true), 1, 0);
    };
    write(&mut a, "/a1");
    write(&mut a, "/a2");
    write(&mut b, "/b1");
    write(&mut b, "/b2");
    write(&mut b, "/b1"); // known path: no budget needed
    assert_eq!((a.len(), b.len(), b.overflow), (2, 1, 1));
    assert_eq!(budget.used(), 3);
    drop(a);
    assert_eq!(budget.used(), 1);
    write(&mut b, "/b3");
    assert_eq!((b.len(), b.overflow), (2, 1));
}

#[test]
fn read_of_existing_file_is_an_input_once() {
    let mut t = FileTable::new(100);
    assert!(t.open(&open("/d/a", true, false, false), 1, 0).is_some());
    assert!(t.open(&open("/d/a", true, false, false), 2, 0).is_none());
    let st = t.get(b"/d/a").unwrap();
    assert_eq!(st.input.as_ref().unwrap().time_ns, 1);
    assert!(st.output.is_none());
}

#[test]
fn reading_back_own_output_is_not_an_input() {
    let mut t = FileTable::new(100);
    t.open(&open("/d/b", false, true, true), 1, 0);
    assert!(t.open(&open("/d/b", true, false, false), 2, 0).is_none());
    let st = t.get(b"/d/b").unwrap();
    assert!(st.input.is_none());
    assert!(st.output.as_ref().unwrap().created);
}

/// O_RDWR with flags the kernel could not read: it may have been
/// O_TRUNC, so the old content is not claimed as read; the table says the
/// question is open. Read-only, or with a size the truncation could not
/// have left, nothing is in doubt.
#[test]
fn unknown_open_flags_never_claim_an_input() {
    let mut t = FileTable::new(100);
    let rw = Open {
        flags_unknown: true,
        ..open("/d/rw", true, true, false)
    };
    assert!(t.open(&rw, 1, 0).is_none());
    let st = t.get(b"/d/rw").unwrap();
    assert!(st.input.is_none() && st.input_unknown && st.output.is_some());
    let ro = Open {
        flags_unknown: true,
        ..open("/d/ro", true, false, false)
    };
    assert!(t.open(&ro, 1, 0).is_some());
    assert!(!t.get(b"/d/ro").unwrap().input_unknown);
}

#[test]
fn temp_file_renamed_over_final_name() {
    let mut t = FileTable::new(100);
    t.open(&open("/d/ckpt.tmp", false, true, true), 1, 0);
    t.rename(&fp("/d/ckpt.tmp"), &fp("/d/ckpt"), false, 2);
    let tmp = t.get(b"/d/ckpt.tmp").unwrap();
    assert!(tmp.output.is_none() && tmp.removed);
    let fin = t.get(b"/d/ckpt").unwrap();
    let out = fin.output.as_ref().unwrap();
    assert!(out.created);
    assert_eq!(out.renamed_from.as_deref(), Some(&b"/d/ckpt.tmp"[..]));
}

#[test]
fn renaming_an_input_keeps_it_an_input_and_makes_an_output() {
    let mut t = FileTable::new(100);
    t.open(&open("/d/in", true, false, false), 1, 0);
    t.rename(&fp("/d/in"), &fp("/d/moved"), false, 2);
    assert!(t.get(b"/d/in").unwrap().input.is_some());
    assert!(t.get(b"/d/moved").unwrap().output.is_some());
}

#[test]
fn directory_rename_moves_children() {
    let mut t = FileTable::new(100);
    t.open(&open("/w/stage/x", false, true, true), 1, 0);
    t.open(&open("/w/stage2/y", false, true, true), 1, 0);
    t.rename(&fp("/w/stage"), &fp("/w/final"), false, 2);
    assert!(t.get(b"/w/final/x").unwrap().output.is_some());
    assert!(t.get(b"/w/stage/x").unwrap().output.is_none());
    // A sibling with a common prefix is not a child.
    assert!(t.get(b"/w/stage2/y").unwrap().output.is_some());
}

/// renameat2(RENAME_EXCHANGE): the names swap what they hold, and so do
/// the trees below two exchanged directories.
#[test]
fn exchange_swaps_outputs_and_trees() {
    let mut t = FileTable::new(100);
    t.open(&open("/w/model.new", false, true, true), 1, 0);
    t.rename(&fp("/w/model.new"), &fp("/w/model"), true, 2);
    // The new content is at `model`; `model.new` holds the old content,
    // which the task put under that name.
    assert!(t.get(b"/w/model").unwrap().output.as_ref().unwrap().created);
    let old = t.get(b"/w/model.new").unwrap().output.as_ref().unwrap();
    assert!(!old.created);
    t.open(&open("/w/left/x", false, true, true), 3, 0);
    t.open(&open("/w/right/y", false, true, true), 3, 0);
    t.rename(&fp("/w/left"), &fp("/w/right"), true, 4);
    let mut outs = outputs(&t);
    outs.sort();
    assert_eq!(
        outs,
        [
            "/w/left",
            "/w/left/y",
            "/w/model",
            "/w/model.new",
            "/w/right",
            "/w/right/x"
        ]
    );
    assert!(t.get(b"/w/left/x").unwrap().removed);
}

#[test]
fn unlink_then_recreate() {
    let mut t = FileTable::new(100);
    t.open(&open("/d/c", false, true, true), 1, 0);
    t.unlink(&fp("/d/c"));
    assert!(t.get(b"/d/c").unwrap().removed);
    t.open(&open("/d/c", false, true, true), 3, 0);
    assert!(!t.get(b"/d/c").unwrap().removed);
}

/// `ln a b; rm a`: `b` holds the output, `a` is removed.
#[test]
fn link_then_unlink_of_the_first_name() {
    let mut t = FileTable::new(100);
    t.open(&open("/d/a", false, true, true), 1, 0);
    let l = Link {
        old: fp("/d/a"),
        new: fp("/d/b"),
        source: None,
    };
    t.link(&l, 2);
    t.unlink(&fp("/d/a"));
    let b = t.get(b"/d/b").unwrap();
    assert!(b.output.as_ref().unwrap().created && !b.removed);
    assert!(t.get(b"/d/a").unwrap().removed);
}

/// A link of an input: the new name is an output (existing content the
/// task named), the input stays an input.
#[test]
fn link_of_an_input_is_an_output() {
    let mut t = FileTable::new(100);
    t.open(&open("/d/in", true, false, false), 1, 0);
    t.link(
        &Link {
            old: fp("/d/in"),
            new: fp("/d/alias"),
            source: None,
        },
        2,
    );
    assert!(t.get(b"/d/in").unwrap().input.is_some());
    let alias = t.get(b"/d/alias").unwrap();
    assert!(alias.output.is_some() && alias.input.is_none());
}

/// O_TMPFILE: no name at the open, found by its identity when linkat
/// names it; a second one never named stays a nameless temporary.
#[test]
fn o_tmpfile_gets_the_name_linkat_gives_it() {
    let mut t = FileTable::new(100);
    assert!(t.open(&tmpfile("/w", 41), 1, 0).is_none());
    t.open(&tmpfile("/w", 42), 1, 0);
    let dev = open("/x", false, false, false).user_dev();
    t.link(
        &Link {
            old: fp("/w/#41"),
            new: fp("/w/final.bin"),
            source: Some((dev, 41)),
        },
        2,
    );
    let fin = t.get(b"/w/final.bin").unwrap().output.as_ref().unwrap();
    assert!(fin.created);
    let unnamed: Vec<_> = t
        .iter()
        .filter_map(|(k, st)| match FileKey::parse(k) {
            FileKey::Unnamed { ino, shown, .. } => Some((ino, shown.to_vec(), st.output.is_some())),
            _ => None,
        })
        .collect();
    assert_eq!(
        unnamed,
        vec![
            (41, b"\xe2\x80\xa6/w/#41".to_vec(), false),
            (42, b"\xe2\x80\xa6/w/#42".to_vec(), true)
        ]
    );
    assert_eq!(outputs(&t).len(), 2, "{:?}", outputs(&t));
}

/// A rename or unlink whose name could not be read touches no exact path
/// (the kernel used to send the working directory instead: every output
/// below it was "renamed"); it is noted under an inexact key.
#[test]
fn unreadable_names_never_touch_exact_paths() {
    let mut t = FileTable::new(100);
    t.open(&open("/w/out", false, true, true), 1, 0);
    let unknown = inexact("", PATH_RAW_READ_ERROR);
    t.unlink(&unknown);
    t.rename(&unknown, &fp("/w/new"), false, 2);
    let out = t.get(b"/w/out").unwrap();
    assert!(out.output.is_some() && !out.removed);
    // The renamed-to name holds whatever came: an output.
    assert!(t.get(b"/w/new").unwrap().output.is_some());
    let noted = t.get("…".as_bytes()).unwrap();
    assert!(noted.removed && noted.inexact & PATH_RAW_READ_ERROR != 0);
    // An output renamed to a name that could not be resolved leaves its
    // exact name, and is noted under what is known of the new one.
    t.rename(
        &fp("/w/out"),
        &inexact("/deep/out", PATH_TRUNCATED),
        false,
        3,
    );
    assert!(t.get(b"/w/out").unwrap().output.is_none());
    let moved = t.get("…/deep/out".as_bytes()).unwrap();
    assert!(moved.output.is_some() && moved.inexact & PATH_TRUNCATED != 0);
}

#[test]
fn inexact_opens_are_never_hashed_at_first_read() {
    let mut t = FileTable::new(100);
    let o = Open {
        path: inexact("/dd/in.txt", PATH_TRUNCATED),
        ..open("/unused", true, false, false)
    };
    assert!(t.open(&o, 1, 0).is_none());
    let key = "…/dd/in.txt".as_bytes();
    assert!(matches!(FileKey::parse(key), FileKey::Inexact(_)));
    assert!(t.get(key).unwrap().input.is_some());
}

#[test]
fn cap_counts_overflow() {
    let mut t = FileTable::new(2);
    t.open(&open("/a", true, false, false), 1, 0);
    t.open(&open("/b", true, false, false), 1, 0);
    t.open(&open("/c", true, false, false), 1, 0);
    assert_eq!((t.len(), t.overflow), (2, 1));
}
