use super::*;

fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().find(|l| l.starts_with(prefix))
}

#[test]
fn every_family_has_help_and_type() {
    let text = Metrics::new("9.9.9").encode();
    for (name, ty) in [
        ("events", "counter"),
        ("events_lost", "counter"),
        ("kernel_counters", "counter"),
        ("unattributed_events", "counter"),
        ("ignored_events", "counter"),
        ("cgroups_recovered", "counter"),
        ("trace_set_released", "counter"),
        ("queue_depth", "gauge"),
        ("records_emitted", "counter"),
        ("records_pending", "gauge"),
        ("record_errors", "counter"),
        ("records_spooled", "gauge"),
        ("spool_bytes", "gauge"),
        ("hash_bytes", "counter"),
        ("hash_files", "counter"),
        ("hash_over_budget", "counter"),
        ("hash_workers_abandoned", "counter"),
        ("hash_workers_stuck", "gauge"),
        ("active_tasks", "gauge"),
        ("tasks_started", "counter"),
        ("tasks_discarded", "counter"),
        ("policy_reload_errors", "counter"),
        ("policy_generation", "gauge"),
        ("pod_watch_errors", "counter"),
        ("api_server_reachable", "gauge"),
        ("node_supported", "gauge"),
        ("build_info", "gauge"),
    ] {
        let full = format!("roar_node_{name}");
        assert!(
            line(&text, &format!("# HELP {full} ")).is_some(),
            "no HELP for {full}:\n{text}"
        );
        assert_eq!(
            line(&text, &format!("# TYPE {full} ")),
            Some(format!("# TYPE {full} {ty}").as_str()),
            "TYPE of {full}:\n{text}"
        );
    }
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(
        text.contains("roar_node_build_info{version=\"9.9.9\"} 1\n"),
        "{text}"
    );
    // Every known label is there before anything happens.
    let zero = |family: &str, label: &str, value: &str| {
        let l = format!("roar_node_{family}{{{label}=\"{value}\"}} 0\n");
        assert!(text.contains(&l), "missing {l}in\n{text}");
    };
    for kind in EventKind::ALL {
        zero("events_total", "kind", kind.name());
    }
    for c in LossCause::ALL {
        zero("events_lost_total", "cause", c.name());
    }
    for name in (0..loss::STATS_LEN).filter_map(loss::stat_name) {
        zero("kernel_counters_total", "counter", name);
    }
    for q in queue::ALL
        .into_iter()
        .filter(|q| *q != queue::RING_BUFFER_UNREAD_BYTES)
    {
        zero("queue_depth", "queue", q);
    }
}

#[test]
fn counters_and_gauges_show_their_values() {
    let m = Metrics::new("0");
    m.records_emitted.inc_by(3);
    m.hash_bytes.inc_by(4096);
    m.spool_bytes.set(10);
    m.set_queue_depth(queue::HASH_JOBS, 7);
    m.api_server_reachable.set(1);
    let t = m.encode();
    for l in [
        "roar_node_records_emitted_total 3\n",
        "roar_node_hash_bytes_total 4096\n",
        "roar_node_spool_bytes 10\n",
        "roar_node_queue_depth{queue=\"hash_jobs\"} 7\n",
        "roar_node_api_server_reachable 1\n",
    ] {
        assert!(t.contains(l), "missing {l:?} in\n{t}");
    }
    // Units are declared for the byte metrics.
    assert!(t.contains("# UNIT roar_node_hash_bytes bytes\n"), "{t}");
}

#[test]
fn observe_total_adds_deltas_and_never_decreases() {
    let m = Metrics::new("0");
    let lost = |m: &Metrics| {
        m.events_lost
            .get(&CauseLabel::new("new_cause"))
            .map(|c| c.get())
    };
    assert_eq!(lost(&m), None);
    m.observe_lost("new_cause", 0);
    assert_eq!(lost(&m), Some(0), "a zero observation creates the series");
    m.observe_lost("new_cause", 10);
    assert_eq!(lost(&m), Some(10));
    m.observe_lost("new_cause", 10);
    assert_eq!(lost(&m), Some(10), "same total: no increment");
    m.observe_lost("new_cause", 25);
    assert_eq!(lost(&m), Some(25), "increment by the delta (15)");
    m.observe_lost("new_cause", 5);
    assert_eq!(lost(&m), Some(25), "a lower total never decreases it");
    m.observe_lost("new_cause", 26);
    assert_eq!(lost(&m), Some(26));

    observe_total(&m.unattributed_events, 4);
    observe_total(&m.unattributed_events, 2);
    assert_eq!(m.unattributed_events.get(), 4);
    m.observe_events("open", 1000);
    assert!(
        m.encode()
            .contains("roar_node_events_total{kind=\"open\"} 1000\n")
    );
}

#[test]
fn concurrent_observers_do_not_count_twice() {
    let m = std::sync::Arc::new(Metrics::new("0"));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let m = m.clone();
            std::thread::spawn(move || {
                for total in 0..=1000u64 {
                    m.observe_events("exec", total);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let c = m.events.get(&KindLabel::new("exec")).unwrap().get();
    assert_eq!(c, 1000);
}

#[test]
fn handles_are_send_sync_clone() {
    fn check<T: Clone + Send + Sync + 'static>() {}
    check::<Counter>();
    check::<Gauge>();
    check::<Family<KindLabel, Counter>>();
    check::<Family<QueueLabel, Gauge>>();
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Metrics>();
}
