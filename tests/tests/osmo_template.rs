//! The OSMO opt-in of docs/osmo.md, as OSMO would apply it: the snippets
//! are read from the doc, merged into an OSMO task pod by OSMO's rules
//! (tests/src/k8s.rs: maps key by key, lists by `name`, strings rendered,
//! `osmo.*` and nodeSelector labels set again after), and the annotation
//! must reach the pod as the string "true" (the API server refuses a pod
//! whose annotation is anything else). The cluster test creates its
//! OSMO-shaped pods the same way and checks the live pods.

use std::{collections::BTreeMap, path::PathBuf};

use roar_node_tests::k8s::*;
use serde_json::{Value, json};

fn task() -> OsmoTask {
    OsmoTask {
        namespace: "osmo-workflows".into(),
        workflow_name: "train".into(),
        workflow_uuid: "0123456789abcdef0123456789abcdef".into(),
        task_name: "Pre_Process".into(),
        task_uuid: "fedcba9876543210fedcba9876543210".into(),
        retry_id: 0,
        input: None,
        script: "true".into(),
        opt_in: false,
        shared_dir: PathBuf::from("/var/tmp/unused"),
    }
}

/// OSMO's default pool templates (its chart's `default_ctrl` and
/// `default_user`, reduced to what shows the merge): a pool lists them
/// before ours, and the user container is named by a variable.
fn osmo_defaults() -> BTreeMap<String, Value> {
    BTreeMap::from([
        (
            "default_ctrl".to_string(),
            json!({"spec": {"containers": [{"name": "osmo-ctrl",
                "resources": {"limits": {"cpu": "{{USER_CPU}}"}}}]}}),
        ),
        (
            "default_user".to_string(),
            json!({"spec": {"containers": [{"name": "{{USER_CONTAINER_NAME}}",
                "resources": {"limits": {"cpu": "{{USER_CPU}}"}}}]}}),
        ),
    ])
}

fn vars(t: &OsmoTask) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("USER_CONTAINER_NAME".to_string(), t.container_name()),
        ("USER_CPU".to_string(), "2".to_string()),
    ])
}

/// OSMO's rule for config names (6.4): a letter, then letters, digits,
/// `-` or `_`, ending with a letter or digit.
fn valid_osmo_name(n: &str) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    n.starts_with(|c: char| c.is_ascii_alphabetic())
        && n.ends_with(|c: char| c.is_ascii_alphanumeric())
        && n.chars().all(ok)
}

/// Renders `t`'s pod with the named templates, looked up in `templates`
/// and OSMO's defaults, in order.
fn render(t: &OsmoTask, names: &[&str], templates: &Value) -> Value {
    let defaults = osmo_defaults();
    let list: Vec<&Value> = names
        .iter()
        .map(|n| {
            templates
                .get(*n)
                .or_else(|| defaults.get(*n))
                .unwrap_or_else(|| panic!("template {n} is neither documented nor OSMO's"))
        })
        .collect();
    osmo_render_pod(t.base_pod(), &list, &vars(t))
}

/// What the API server requires of annotations: every value a string.
fn annotations_are_strings(pod: &Value) -> bool {
    pod["metadata"]["annotations"]
        .as_object()
        .is_some_and(|a| a.values().all(Value::is_string))
}

fn trace_annotation(pod: &Value) -> &Value {
    &pod["metadata"]["annotations"]["roar-node/trace"]
}

/// The pod is the base pod plus the template's annotation: OSMO's labels,
/// the other annotation and the containers are untouched.
fn assert_opted_in(t: &OsmoTask, pod: &Value, value: &str) {
    assert_eq!(trace_annotation(pod), &json!(value), "{pod:#}");
    assert!(annotations_are_strings(pod), "{pod:#}");
    let base = t.base_pod();
    assert_eq!(pod["metadata"]["labels"], base["metadata"]["labels"]);
    assert_eq!(
        pod["metadata"]["annotations"]["pod-group-name"],
        base["metadata"]["annotations"]["pod-group-name"]
    );
    let names = |p: &Value| -> Vec<Value> {
        p["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].clone())
            .collect()
    };
    assert_eq!(names(pod), names(&base));
    assert_eq!(
        pod["spec"]["initContainers"],
        base["spec"]["initContainers"]
    );
}

fn helm_values(snippet: &str) -> Option<Value> {
    let helm = helm()?;
    let yaml = documented_snippet(snippet);
    let mut objs = yaml_objects(helm, &yaml);
    assert_eq!(objs.len(), 1, "{snippet}: one YAML document");
    Some(objs.remove(0))
}

#[test]
fn cli_templates_opt_a_task_pod_in_with_the_string_true() {
    let templates = documented_cli_templates();
    for name in templates.as_object().unwrap().keys() {
        assert!(valid_osmo_name(name), "OSMO refuses the name {name:?}");
    }
    let t = task();
    let pod = render(
        &t,
        &["default_ctrl", "default_user", OPT_IN_TEMPLATE],
        &templates,
    );
    assert_opted_in(&t, &pod, "true");
    // The other templates merged by name into the containers OSMO made
    // (the user container's name came from a variable).
    let user = pod["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == t.container_name().as_str())
        .unwrap();
    assert_eq!(user["resources"]["limits"]["cpu"], "2");
    assert_eq!(user["command"][0], "/osmo/bin/osmo_exec");
    // OsmoTask::pod() (what the cluster test submits) is this pod.
    let submitted = OsmoTask {
        opt_in: true,
        ..task()
    }
    .pod();
    assert_eq!(trace_annotation(&submitted), &json!("true"));
}

#[test]
fn opt_out_template_gives_the_string_false() {
    let templates = documented_cli_templates();
    let t = task();
    let pod = render(&t, &["default_ctrl", OPT_OUT_TEMPLATE], &templates);
    assert_opted_in(&t, &pod, "false");
}

#[test]
fn helm_values_pool_template_reaches_the_pod() {
    let Some(v) = helm_values("osmo-helm-values") else {
        return;
    };
    let configs = &v["services"]["configs"];
    let templates = &configs["podTemplates"];
    for name in templates.as_object().unwrap().keys() {
        assert!(valid_osmo_name(name), "OSMO refuses the name {name:?}");
    }
    let pools = configs["pools"].as_object().unwrap();
    assert!(!pools.is_empty());
    for (pool, p) in pools {
        let names: Vec<&str> = p["common_pod_template"]
            .as_array()
            .unwrap_or_else(|| panic!("pool {pool}: no common_pod_template list"))
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        assert!(names.contains(&OPT_IN_TEMPLATE), "{pool}: {names:?}");
        let t = task();
        assert_opted_in(&t, &render(&t, &names, templates), "true");
    }
}

#[test]
fn helm_values_platform_override_reaches_the_pod() {
    let (Some(pool_values), Some(v)) = (
        helm_values("osmo-helm-values"),
        helm_values("osmo-helm-platform"),
    ) else {
        return;
    };
    let templates = &pool_values["services"]["configs"]["podTemplates"];
    let pools = v["services"]["configs"]["pools"].as_object().unwrap();
    for (pool, p) in pools {
        let platforms = p["platforms"].as_object().unwrap();
        for (platform, pl) in platforms {
            let over: Vec<&str> = pl["override_pod_template"]
                .as_array()
                .unwrap_or_else(|| panic!("{pool}/{platform}: no override_pod_template list"))
                .iter()
                .map(|n| n.as_str().unwrap())
                .collect();
            // The pool's own templates first, then the platform's.
            let mut names = vec!["default_ctrl", "default_user"];
            names.extend(over);
            let t = task();
            assert_opted_in(&t, &render(&t, &names, templates), "true");
        }
    }
}

/// The quotes matter: the same values without them give a boolean, which
/// the API server refuses (the cluster test shows the refusal).
#[test]
fn unquoted_true_is_not_a_string() {
    let Some(helm) = helm() else {
        return;
    };
    let yaml = documented_snippet("osmo-helm-values");
    assert!(yaml.contains(r#"roar-node/trace: "true""#), "{yaml}");
    let unquoted = yaml.replace(r#"roar-node/trace: "true""#, "roar-node/trace: true");
    let v = yaml_objects(helm, &unquoted).remove(0);
    let templates = &v["services"]["configs"]["podTemplates"];
    let t = task();
    let pod = render(&t, &[OPT_IN_TEMPLATE], templates);
    assert_eq!(trace_annotation(&pod), &json!(true));
    assert!(!annotations_are_strings(&pod));
}

/// OSMO sets its labels and the platform's nodeSelector labels after the
/// templates: a template can add labels, not change those.
#[test]
fn templates_cannot_change_osmo_labels() {
    let t = task();
    let sneaky = json!({
        "metadata": {"labels": {"osmo.task_uuid": "changed", "team": "ml"}},
        "spec": {"nodeSelector": {"pool": "gpu"}},
    });
    let pod = osmo_render_pod(t.base_pod(), &[&sneaky], &vars(&t));
    let labels = &pod["metadata"]["labels"];
    assert_eq!(labels["osmo.task_uuid"], t.task_uuid.as_str());
    assert_eq!(labels["team"], "ml");
    assert_eq!(labels["pool"], "gpu");
    assert_eq!(pod["spec"]["nodeSelector"]["pool"], "gpu");
}
