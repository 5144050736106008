//! The records are real roar records: roar-cli 0.4.7 ingests them and
//! draws the lineage edge between two tasks.

use roar_node_tests::*;

#[test]
fn two_step_pipeline_becomes_a_roar_dag_edge() {
    let roar = Roar::get();
    let w = Work::new("pipeline");
    w.write("data/raw.csv", "b,2\na,1\nc,3\n");
    let bundles = w.path("bundles");
    std::fs::create_dir_all(&bundles).unwrap();
    let run = |name: &str, script: &str| {
        let t = w.trace_with(&["--name", name], &["sh", "-c", script]).ok();
        std::fs::copy(
            &t.bundle_path,
            bundles.join(t.bundle_path.file_name().unwrap()),
        )
        .unwrap();
        t
    };
    let s1 = run("prepare", "sort data/raw.csv > data/sorted.csv");
    let s2 = run("summarize", "head -1 data/sorted.csv > data/top.csv");
    let sorted = w.s("data/sorted.csv");
    assert_eq!(
        s1.write(&sorted).unwrap()["hash"],
        s2.read(&sorted).unwrap()["hash"]
    );

    roar.init(&w.dir);
    let said = roar.run(
        &w.dir,
        &["k8s", "ingest-bundles", bundles.to_str().unwrap()],
    );
    assert!(
        said.contains("2 fragment(s) merged"),
        "roar merged fewer fragments than it read:\n{said}"
    );

    // In roar's own database: step 2's input artifact is step 1's output.
    assert_eq!(
        roar.edges(&w.dir, "prepare", "summarize", Some(&sorted)),
        1,
        "no edge prepare -> summarize through {sorted}"
    );
    // The job carries our metadata (argv, process tree, capture stats).
    let md = roar.query(
        &w.dir,
        "select metadata from jobs where command = 'k8s_task:prepare'",
    );
    let md: serde_json::Value = serde_json::from_str(md[0][0].as_str().unwrap()).unwrap();
    assert_eq!(
        md["argv"],
        serde_json::json!(["sh", "-c", "sort data/raw.csv > data/sorted.csv"])
    );
    assert_eq!(md["capture"]["events_lost"], 0);

    // And roar's graph shows the dependency.
    let dag = roar.run(&w.dir, &["dag", "--json"]);
    let dag: serde_json::Value =
        serde_json::from_str(dag.trim()).unwrap_or_else(|e| panic!("{e}: {dag}"));
    let text = dag.to_string();
    assert!(
        text.contains("prepare") && text.contains("summarize"),
        "{text}"
    );
}
