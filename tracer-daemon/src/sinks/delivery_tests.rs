use std::fs;

use super::*;
use crate::records::{BundleName, Record, Summary, fragment::Fragment};
use crate::sinks::make_sink;

fn record(pod: &str) -> Record {
    Record {
        fragment: Fragment {
            task_id: format!("uid-{pod}:c:0:0"),
            ..Fragment::example()
        },
        bundle: BundleName {
            pod: pod.into(),
            container: "c".into(),
            attempt: "0".into(),
        },
        owner: Owner {
            namespace: Some("ns".into()),
            workflow_id: Some("wf".into()),
        },
        summary: Summary::default(),
    }
}

/// Through the spool into a sink that takes it: delivered once, marked
/// delivered in the spool (a spool lock held while marking it deadlocked).
#[test]
fn spooled_records_are_delivered_and_marked() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("bundles");
    let spool = spool(root.path());
    let d = Delivery::new(
        Box::new(BundleDir::new(&dir).unwrap()),
        root.path().join("unsent"),
    )
    .with_spool(spool.clone(), Budgets::default());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let ok = matches!(d.deliver("t", &record("a")), Ok(Delivered::At(_)));
        tx.send(ok).unwrap()
    });
    let delivered = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("delivery through the spool did not finish (deadlock?)");
    assert!(delivered);
    assert!(dir.join("roar-fragments-a-c-0.json").exists());
    assert_eq!(spool.lock().undelivered_count(), 0);
}

/// A bundle directory that refuses writes (a file stands where the
/// directory was) until `heal`: a real refusal, as root too.
struct Refusing {
    dir: PathBuf,
}

impl Refusing {
    fn new(dir: PathBuf) -> (Self, BundleDir) {
        let sink = BundleDir::new(&dir).unwrap();
        fs::remove_dir(&dir).unwrap();
        fs::write(&dir, b"not a directory").unwrap();
        (Self { dir }, sink)
    }
    fn heal(&self) {
        fs::remove_file(&self.dir).unwrap();
        fs::create_dir(&self.dir).unwrap();
    }
}

fn spool(root: &std::path::Path) -> SharedSpool {
    SharedSpool::open(&root.join("spool"), "n").unwrap().0
}

/// Without a spool, a record the sink refuses is kept in the fallback
/// directory; with one, it waits in the spool, later records do not
/// hammer the refusing sink (back-off), and a retry puts them all once
/// the sink takes them.
#[test]
fn refused_records_wait_then_are_delivered() {
    let root = tempfile::tempdir().unwrap();
    let fallback = root.path().join("unsent");
    let (bad, sink) = Refusing::new(root.path().join("plain"));
    let plain = Delivery::new(Box::new(sink), fallback.clone());
    let e = plain.deliver("t", &record("a")).unwrap_err();
    assert!(matches!(e, DeliveryError::Kept { .. }), "{e}");
    assert!(fallback.join("roar-fragments-a-c-0.json").exists());
    assert_eq!(plain.stats.unsent.load(Ordering::Relaxed), 1);
    drop(bad);

    let (bad, sink) = Refusing::new(root.path().join("bundles"));
    let d =
        Delivery::new(Box::new(sink), fallback).with_spool(spool(root.path()), Budgets::default());
    let first = d.deliver("t1", &record("b")).unwrap();
    assert!(matches!(first, Delivered::Waiting(_)), "{first:?}");
    assert_eq!(d.stats.errors.load(Ordering::Relaxed), 1);
    assert!(d.problem().is_some());
    // Backing off: the second record is spooled, the sink not asked.
    let second = d.deliver("t2", &record("c")).unwrap();
    assert!(matches!(second, Delivered::Waiting(_)), "{second:?}");
    assert_eq!(d.stats.errors.load(Ordering::Relaxed), 1, "not tried again");
    assert_eq!(d.spool().unwrap().lock().undelivered_count(), 2);
    bad.heal();
    d.deliver_spooled(Duration::ZERO);
    assert_eq!(d.spool().unwrap().lock().undelivered_count(), 0);
    assert!(bad.dir.join("roar-fragments-b-c-0.json").exists());
    assert!(bad.dir.join("roar-fragments-c-c-0.json").exists());
    assert_eq!(d.stats.redelivered.load(Ordering::Relaxed), 2);
    assert!(d.problem().is_none());
}

/// Past its budget the spool takes no more records: a refused one is kept
/// in the fallback directory, counted; the waiting ones stay.
#[test]
fn spool_budget_sends_the_overflow_to_the_fallback() {
    let root = tempfile::tempdir().unwrap();
    let fallback = root.path().join("unsent");
    let (_bad, sink) = Refusing::new(root.path().join("bundles"));
    let d = Delivery::new(Box::new(sink), fallback.clone()).with_spool(
        spool(root.path()),
        Budgets {
            spool_bytes: bundle_bytes(&record("a")).unwrap().len() as u64 + 10,
        },
    );
    assert!(matches!(
        d.deliver("t1", &record("a")),
        Ok(Delivered::Waiting(_))
    ));
    let e = d.deliver("t2", &record("b")).unwrap_err();
    assert!(matches!(e, DeliveryError::Kept { .. }), "{e}");
    assert!(fallback.join("roar-fragments-b-c-0.json").exists());
    assert_eq!(d.stats.over_spool_budget.load(Ordering::Relaxed), 1);
    assert_eq!(d.stats.unsent.load(Ordering::Relaxed), 1);
    assert_eq!(d.spool().unwrap().lock().undelivered_count(), 1);
}

/// A journal written before the owner was spooled: the object's name is
/// made from the record itself.
#[test]
fn old_spool_entries_find_their_owner_in_the_record() {
    let bundle = br#"{"fragments":[{"task_id":"u:c:0:0","backend_metadata":{"pod":{"namespace":"ns"},"osmo":{"osmo.workflow_id":"wf-9"}}}]}"#;
    let old = pb::RecordReady {
        task_id: "u:c:0:0".into(),
        bundle_file: "roar-fragments-p-c-0.json".into(),
        bundle_json: bundle.to_vec().into(),
        owner: None,
    };
    let o = owner_of(&old);
    assert_eq!(
        (o.namespace.as_deref(), o.workflow_id.as_deref()),
        (Some("ns"), Some("wf-9"))
    );
    let new = pb::RecordReady {
        owner: Some((&Owner::default()).into()),
        ..old
    };
    assert_eq!(owner_of(&new), Owner::default(), "the spooled owner wins");
}

/// Into a store (a local directory through object_store): a record
/// delivered, then delivered again from the spool (as after a crash
/// between the put and the spool's note), is one object; the node keeps
/// no copy unless asked, and copies are trimmed to their budget.
#[test]
fn store_delivery_is_idempotent_and_keeps_copies_to_budget() {
    let root = tempfile::tempdir().unwrap();
    let url = format!("file://{}/bucket/prefix", root.path().display());
    let sink = make_sink(Some(&url), &root.path().join("unused"), None).unwrap();
    let one = bundle_bytes(&record("a")).unwrap().len() as u64;
    let copies = LocalCopies::new(&root.path().join("copies"), one + 1, None).unwrap();
    let spool = spool(root.path());
    let d = Delivery::new(sink, root.path().join("unsent"))
        .with_spool(spool.clone(), Budgets::default())
        .with_local_copies(copies);
    let at = match d.deliver("uid-a:c:0:0", &record("a")).unwrap() {
        Delivered::At(at) => at,
        w => panic!("{w:?}"),
    };
    assert_eq!(at, format!("{url}/ns/wf/uid-a=3Ac=3A0=3A0.json"));
    // As if the daemon died before noting the delivery.
    spool
        .lock()
        .record_ready(pb::RecordReady {
            task_id: "uid-a:c:0:0".into(),
            bundle_file: "roar-fragments-a-c-0.json".into(),
            bundle_json: bundle_bytes(&record("a")).unwrap().into(),
            owner: Some((&record("a").owner).into()),
        })
        .unwrap();
    d.deliver_spooled(Duration::ZERO);
    d.deliver("uid-b:c:0:0", &record("b")).unwrap();
    let objects: Vec<_> = walk(&root.path().join("bucket/prefix/ns/wf"));
    assert_eq!(objects.len(), 2, "{objects:?}");
    let index: Vec<_> = walk(&root.path().join("bucket/prefix/_by-workflow/wf/ns"));
    assert_eq!(index.len(), 2, "{index:?}");
    // Copies: one fits the budget, the older one went.
    let kept: Vec<_> = walk(&root.path().join("copies"));
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(d.local_bytes() <= one + 1);
    assert!(!root.path().join("unused").exists());
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
