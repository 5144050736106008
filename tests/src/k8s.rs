//! OSMO-shaped task pods for the cluster demo (`cargo xtask run`) and the
//! cluster end-to-end test, in the shapes OSMO 6.4's source writes
//! (`src/utils/job/task.py`, `kb_objects.py`): the three containers OSMO
//! gives every task (`osmo-init`, the user container first, then
//! `osmo-ctrl`), the user container's command `/osmo/bin/osmo_exec` with
//! one `-commands` per command word and one `-args` per argument,
//! osmo-ctrl's `-inputs task:<i>,<url>,<regex>` / `-outputs task:<url>`,
//! its `osmo.*` labels (`osmo.priority` lowercase), KAI's queue labels,
//! `pod-group-name` and `schedulerName`, the `osmo.nvidia.com/cleanup`
//! finalizer and `restartPolicy: Never`. The data flow is OSMO's:
//! osmo-ctrl "downloads" the inputs into `/osmo/data/input/<i>` before the
//! command starts and "uploads" `/osmo/data/output` after it ends, from and
//! to `file:///shared/<task>` (a hostPath: the local cluster has no network
//! and no object store), which is what links one task's output to the next
//! task's input.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use std::{collections::BTreeMap, fs};

use serde_json::{Value, json};

/// The image with busybox and the osmo_exec stand-in, in the local
/// cluster's registry (`cargo xtask e2e-k8s` pushes it; the node pulls it).
pub const OSMO_IMAGE: &str = "127.0.0.1:5000/roar-e2e/osmo:1";

/// OSMO's finalizer on every task pod: deleting one takes it off first
/// (see [`osmo_delete`]).
pub const OSMO_FINALIZER: &str = "osmo.nvidia.com/cleanup";

/// The osmo-ctrl stand-in (installed by osmo-init as
/// `/osmo/bin/osmo_ctrl`): OSMO's flags, `file://` URLs. An input that is
/// not there fails it the way the real one fails (osmo_exec is told,
/// `/osmo/data/socket/failed`, and runs nothing); it exits 1.
const OSMO_CTRL_SCRIPT: &str = r#"#!/bin/sh
set -f
inputs=""; outputs=""
while [ $# -gt 0 ]; do
  case "$1" in
    -inputs) inputs="$inputs $2"; shift 2 ;;
    -outputs) outputs="$outputs $2"; shift 2 ;;
    -*) shift 2 ;;
    *) break ;;
  esac
done
fail() { echo "osmo-ctrl: $*" >&2; touch /osmo/data/socket/failed; exit 1; }
for i in $inputs; do
  rest=${i#*:}; idx=${rest%%,*}; rest=${rest#*,}; dir=${rest%%,*}; dir=${dir#file://}
  [ -d "$dir" ] || fail "input $idx: no $dir"
  mkdir -p "/osmo/data/input/$idx" && cp -r "$dir/." "/osmo/data/input/$idx/" || fail "input $idx"
done
touch /osmo/data/socket/start
while [ ! -e /osmo/data/socket/done ]; do sleep 0.1; done
for o in $outputs; do
  dir=${o#task:}; dir=${dir#file://}
  mkdir -p "$dir" && cp -r /osmo/data/output/. "$dir/"
done
"#;

/// One OSMO task.
#[derive(Clone, Debug)]
pub struct OsmoTask {
    pub namespace: String,
    pub workflow_name: String,
    pub workflow_uuid: String,
    pub task_name: String,
    pub task_uuid: String,
    pub retry_id: u32,
    /// File under the shared directory whose task folder osmo-ctrl
    /// downloads into /osmo/data/input/0/ (`-inputs task:0,...`).
    pub input: Option<String>,
    /// The user command (run by `sh -c` under osmo_exec).
    pub script: String,
    /// Opted in by the pool's pod template documented in docs/osmo.md
    /// (`roar_node_trace`), applied with OSMO's merge rules.
    pub opt_in: bool,
    /// hostPath shared by all tasks of the workflow.
    pub shared_dir: PathBuf,
}

/// The local cluster's one node.
pub fn local_node() -> String {
    static NODE: OnceLock<String> = OnceLock::new();
    NODE.get_or_init(|| {
        kubectl_ok(
            &kubeconfig(),
            &["get", "nodes", "-o", "jsonpath={.items[0].metadata.name}"],
            None,
        )
        .trim()
        .to_string()
    })
    .clone()
}

impl OsmoTask {
    /// OSMO's pod name: `{workflow_uuid[:16]}-{task_uuid[:16]}`.
    pub fn pod_name(&self) -> String {
        format!("{}-{}", &self.workflow_uuid[..16], &self.task_uuid[..16])
    }

    /// OSMO's user container name: the task name, lowercased, `_` -> `-`.
    pub fn container_name(&self) -> String {
        self.task_name.to_lowercase().replace('_', "-")
    }

    /// The user's command as osmo_exec runs it: commands then args.
    pub fn command(&self) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), self.script.clone()]
    }

    /// The task pod as OSMO submits it: its base pod, then, when opted
    /// in, the documented pool template merged in by OSMO's rules.
    pub fn pod(&self) -> Value {
        let pod = self.base_pod();
        if !self.opt_in {
            return pod;
        }
        let templates = documented_cli_templates();
        osmo_render_pod(pod, &[&templates[OPT_IN_TEMPLATE]], &BTreeMap::new())
    }

    fn labels(&self) -> Value {
        let queue = format!("osmo-pool-{}-local", self.namespace);
        json!({
            "osmo.workflow_id": format!("{}-1", self.workflow_name),
            "osmo.workflow_uuid": self.workflow_uuid,
            "osmo.group_name": self.task_name,
            "osmo.group_uuid": self.task_uuid,
            "osmo.task_name": self.task_name,
            "osmo.task_uuid": self.task_uuid,
            "osmo.retry_id": self.retry_id.to_string(),
            "osmo.submitted_by": "e2e",
            "osmo.pool": "local",
            "osmo.platform": "cpu",
            "osmo.priority": "normal",
            "osmo.lead_container": "true",
            "kai.scheduler/queue": queue,
            "runai/queue": queue,
        })
    }

    /// osmo-ctrl's arguments (`kb_objects.py` and `task.py`'s extra args).
    fn ctrl_args(&self) -> Vec<String> {
        let mut a: Vec<String> = [
            "-socketPath",
            "/osmo/data/socket/data.sock",
            "-inputPath",
            "/osmo/data/input/",
            "-outputPath",
            "/osmo/data/output/",
            "-workflow",
        ]
        .map(String::from)
        .into();
        a.push(format!("{}-1", self.workflow_name));
        if let Some(f) = &self.input {
            let task = f.split('/').next().unwrap_or(f);
            a.push("-inputs".into());
            a.push(format!("task:0,file:///shared/{task},.*"));
        }
        a.push("-outputs".into());
        a.push(format!("task:file:///shared/{}", self.task_name));
        a
    }

    /// osmo_exec's arguments (`task.py` `to_pod_container`): its own
    /// flags, then `-commands` and `-args`.
    fn exec_args(&self) -> Vec<String> {
        let mut a: Vec<String> = [
            "-socketPath",
            "/osmo/data/socket/data.sock",
            "-userBinPath",
            "/osmo/usr/bin",
            "-enableRsync",
        ]
        .map(String::from)
        .into();
        let cmd = self.command();
        for c in &cmd[..2] {
            a.extend(["-commands".to_string(), c.clone()]);
        }
        for c in &cmd[2..] {
            a.extend(["-args".to_string(), c.clone()]);
        }
        a
    }

    /// The pod OSMO builds before applying any template.
    pub fn base_pod(&self) -> Value {
        let annotations = json!({"pod-group-name": self.task_uuid});
        let osmo_vols = [
            ("osmo-bin", "/osmo/bin"),
            ("osmo-socket", "/osmo/data/socket"),
            ("osmo-input", "/osmo/data/input"),
            ("osmo-output", "/osmo/data/output"),
            ("osmo-usr-bin", "/osmo/usr/bin"),
        ];
        let mounts: Vec<Value> = osmo_vols
            .iter()
            .map(|(n, p)| json!({"name": n, "mountPath": p}))
            .collect();
        // osmo-ctrl mounts the output read-only.
        let mut ctrl_mounts: Vec<Value> = osmo_vols
            .iter()
            .map(|(n, p)| json!({"name": n, "mountPath": p, "readOnly": *n == "osmo-output"}))
            .collect();
        ctrl_mounts.push(json!({"name": "shared", "mountPath": "/shared"}));
        let mut volumes: Vec<Value> = osmo_vols
            .iter()
            .map(|(n, _)| json!({"name": n, "emptyDir": {}}))
            .collect();
        volumes.push(json!({"name": "shared", "hostPath": {
            "path": self.shared_dir.to_string_lossy(), "type": "DirectoryOrCreate"}}));
        let init = "cp /osmo_exec /osmo/bin/osmo_exec && cp /bin/busybox /osmo/usr/bin/rsync \
                    && printf '%s' \"$0\" > /osmo/bin/osmo_ctrl && chmod 755 /osmo/bin/osmo_ctrl";
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": self.pod_name(),
                "namespace": self.namespace,
                "labels": self.labels(),
                "annotations": annotations,
                "finalizers": [OSMO_FINALIZER],
            },
            "spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 1,
                // KAI's scheduler, which the local cluster does not run:
                // create() binds the pod as KAI would.
                "schedulerName": KAI_SCHEDULER,
                "initContainers": [{
                    "name": "osmo-init",
                    "image": OSMO_IMAGE,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["/bin/sh", "-c", init, OSMO_CTRL_SCRIPT],
                    "volumeMounts": mounts,
                }],
                "containers": [
                    {
                        "name": self.container_name(),
                        "image": OSMO_IMAGE,
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["/osmo/bin/osmo_exec"],
                        "args": self.exec_args(),
                        "volumeMounts": mounts,
                    },
                    {
                        "name": "osmo-ctrl",
                        "image": OSMO_IMAGE,
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["/osmo/bin/osmo_ctrl"],
                        "args": self.ctrl_args(),
                        "volumeMounts": ctrl_mounts,
                    },
                ],
                "volumes": volumes,
            },
        })
    }
}

/// Deletes an OSMO task pod as OSMO does: its cleanup finalizer off, then
/// the pod (waiting until it is gone).
pub fn osmo_delete(kubeconfig: &Path, ns: &str, name: &str) {
    let _ = kubectl(kubeconfig)
        .args(["-n", ns, "patch", "pod", name, "--type", "merge", "-p"])
        .arg(r#"{"metadata":{"finalizers":null}}"#)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    kubectl_ok(
        kubeconfig,
        &["-n", ns, "delete", "pod", name, "--wait=true"],
        None,
    );
}

/// Deletes a test namespace (not waiting), OSMO's finalizers taken off its
/// pods first so that it can go.
pub fn delete_namespace(kubeconfig: &Path, ns: &str) {
    let names = kubectl(kubeconfig)
        .args(["-n", ns, "get", "pods", "-o", "name"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for pod in names.lines().filter(|l| !l.is_empty()) {
        let _ = kubectl(kubeconfig)
            .args(["-n", ns, "patch", pod, "--type", "merge", "-p"])
            .arg(r#"{"metadata":{"finalizers":null}}"#)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let _ = kubectl(kubeconfig)
        .args(["delete", "namespace", ns, "--wait=false"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

// OSMO's pod templates (NVIDIA/OSMO 6.4): how a template named in a pool's
// `common_pod_template` or a platform's `override_pod_template` becomes
// part of a task pod. Written from OSMO's rules, not its code:
// - maps merge key by key, recursively;
// - a list merges into a list by `name`: an item whose name is already
//   there merges into that item, any other item is appended;
// - anything else (scalars, a list over a non-list) replaces;
// - template strings are rendered with the task's variables; other
//   values (a YAML boolean, a number) stay what they are;
// - after the merge OSMO sets its `osmo.*` labels and the platform's
//   nodeSelector labels again, so a template cannot change them.

/// The opt-in template's name in docs/osmo.md (letters, digits, `_`, `-`).
pub const OPT_IN_TEMPLATE: &str = "roar_node_trace";
/// The opt-out template's name in docs/osmo.md.
pub const OPT_OUT_TEMPLATE: &str = "roar_node_no_trace";

/// Merges `over` into `base` by OSMO's rules.
pub fn osmo_merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(slot) if slot.is_object() && v.is_object() => osmo_merge(slot, v),
                    Some(slot) if slot.is_array() && v.is_array() => osmo_merge(slot, v),
                    Some(slot) => *slot = v.clone(),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(o)) => {
            let mut appended = Vec::new();
            for item in o {
                let name = item.get("name").filter(|n| !n.is_null());
                match name.and_then(|n| b.iter_mut().find(|x| x.get("name") == Some(n))) {
                    Some(same) => osmo_merge(same, item),
                    None => appended.push(item.clone()),
                }
            }
            b.extend(appended);
        }
        (b, o) => *b = o.clone(),
    }
}

/// Renders a template's strings with the task's variables (`{{NAME}}`);
/// values that are not strings are left as they are.
pub fn osmo_substitute(t: &mut Value, vars: &BTreeMap<String, String>) {
    match t {
        Value::String(s) => {
            for (k, v) in vars {
                *s = s.replace(&format!("{{{{{k}}}}}"), v);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| osmo_substitute(x, vars)),
        Value::Object(m) => m.values_mut().for_each(|x| osmo_substitute(x, vars)),
        _ => {}
    }
}

/// The task pod OSMO submits: `base`, then `templates` in order (a pool's
/// `common_pod_template`, then its platform's `override_pod_template`),
/// rendered with `vars`, then the system labels again (the base pod's
/// `osmo.*` labels and the merged nodeSelector's labels).
pub fn osmo_render_pod(
    mut base: Value,
    templates: &[&Value],
    vars: &BTreeMap<String, String>,
) -> Value {
    let mut merged = json!({});
    for t in templates {
        osmo_merge(&mut merged, t);
    }
    osmo_substitute(&mut merged, vars);
    let mut system: serde_json::Map<String, Value> = base["metadata"]["labels"]
        .as_object()
        .map(|l| {
            l.iter()
                .filter(|(k, _)| k.starts_with("osmo."))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    if let Some(sel) = merged["spec"]["nodeSelector"].as_object() {
        system.extend(sel.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    osmo_merge(&mut base, &merged);
    osmo_merge(&mut base, &json!({"metadata": {"labels": system}}));
    base
}

/// The fenced code block that follows `<!-- tested: NAME -->` in
/// docs/osmo.md: the snippets operators copy are the ones tests use.
pub fn documented_snippet(name: &str) -> String {
    let path = crate::workspace().join("docs/osmo.md");
    let doc = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let marker = format!("<!-- tested: {name} -->");
    let after = doc
        .split_once(&marker)
        .unwrap_or_else(|| panic!("{}: no {marker}", path.display()))
        .1;
    let fence = after
        .find("```")
        .unwrap_or_else(|| panic!("no code block after {marker}"));
    let body = &after[fence..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body
        .find("\n```")
        .unwrap_or_else(|| panic!("unclosed block after {marker}"))
        + 1]
        .to_string()
}

/// The templates file of docs/osmo.md's CLI steps (`osmo config update
/// POD_TEMPLATE --file ...`): template name -> template.
pub fn documented_cli_templates() -> Value {
    let text = documented_snippet("osmo-cli-templates");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("docs/osmo.md JSON: {e}\n{text}"))
}

/// The hash a record gives its write of `path`.
pub fn write_hash(rec: &Value, path: &str) -> Option<String> {
    rec["writes"]
        .as_array()?
        .iter()
        .find(|a| a["path"] == path)
        .and_then(|a| a["hash"].as_str().map(String::from))
}

/// Polls `ok` every 250 ms until it holds; fails, saying `what`, after
/// `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(
            t0.elapsed() < timeout,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Sends signal `sig` (as kill(1) takes it: `-STOP`, `-9`) to host
/// process `pid`.
pub fn signal(pid: u32, sig: &str) {
    assert!(
        Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
            .success(),
        "kill {sig} {pid}"
    );
}

/// An opted-in pod that writes `/gate/<name>.before`, then for each
/// `(gate, mark)` waits for the file `/gate/<name>.<gate>` and writes
/// `<mark>` to `/gate/<name>.<mark>`; `/gate` is the host's `shared`.
pub fn gated_pod(ns: &str, name: &str, shared: &Path, steps: &[(&str, &str)]) -> Value {
    let mut script = format!("echo before > /gate/{name}.before");
    for (gate, mark) in steps {
        script += &format!(
            "; while [ ! -e /gate/{name}.{gate} ]; do sleep 0.1; done; \
             echo {mark} > /gate/{name}.{mark}"
        );
    }
    with_volume(
        shell_pod(ns, name, &script, true),
        json!({"name": "gate", "hostPath": {"path": shared, "type": "Directory"}}),
        "/gate",
        false,
    )
}

/// The daemon traces the pod's container (its task is in the spool).
pub fn wait_traced(uid: &str) {
    wait_until(
        &format!("pod {uid} traced (in the spool)"),
        Duration::from_secs(60),
        || in_spool(uid.as_bytes()),
    );
}

/// Whether the spool's journal holds these bytes.
pub fn in_spool(what: &[u8]) -> bool {
    fs::read(node_state().join("spool/journal.pb"))
        .is_ok_and(|b| b.windows(what.len()).any(|w| w == what))
}

/// kubectl from the local cluster's cache, with its kubeconfig.
pub fn kubectl(kubeconfig: &Path) -> Command {
    let bin = std::env::var_os("KUBECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/k8s-local/bin/kubectl")
        });
    let mut c = Command::new(bin);
    c.arg("--kubeconfig").arg(kubeconfig);
    c
}

/// Runs kubectl, returns stdout; panics with stderr on failure.
pub fn kubectl_ok(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let mut c = kubectl(kubeconfig);
    c.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("kubectl");
    if let Some(s) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Creates an object from JSON. A pod for KAI's scheduler, which the
/// local cluster does not run, is put on the node directly, as KAI would.
pub fn create(kubeconfig: &Path, obj: &Value) {
    let mut obj = obj.clone();
    let spec = &obj["spec"];
    if obj["kind"] == "Pod" && spec["schedulerName"] == KAI_SCHEDULER && spec["nodeName"].is_null()
    {
        obj["spec"]["nodeName"] = json!(local_node());
    }
    kubectl_ok(kubeconfig, &["create", "-f", "-"], Some(&obj.to_string()));
}

/// The scheduler OSMO's pods name.
const KAI_SCHEDULER: &str = "kai-scheduler";

/// The pod object, if it exists.
pub fn get_pod(kubeconfig: &Path, ns: &str, name: &str) -> Option<Value> {
    let out = kubectl(kubeconfig)
        .args(["-n", ns, "get", "pod", name, "-o", "json"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

/// Waits until the pod's phase is Succeeded or Failed; returns the pod.
pub fn wait_pod_done(kubeconfig: &Path, ns: &str, name: &str, timeout: Duration) -> Value {
    let t0 = Instant::now();
    loop {
        if let Some(p) = get_pod(kubeconfig, ns, name) {
            let phase = p["status"]["phase"].as_str().unwrap_or("");
            if phase == "Succeeded" || phase == "Failed" {
                return p;
            }
        }
        assert!(
            t0.elapsed() < timeout,
            "pod {ns}/{name} not done after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A new namespace, ready for pods (its default service account has its
/// token: Kubernetes 1.20 admits pods only then).
pub fn create_namespace(kubeconfig: &Path, ns: &str) {
    create(
        kubeconfig,
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
    );
    // Not found yet is expected (the controller manager makes it; after an
    // API server restart it takes a while to reconnect): retry.
    let t0 = Instant::now();
    loop {
        let out = kubectl(kubeconfig)
            .args([
                "-n",
                ns,
                "get",
                "sa",
                "default",
                "-o",
                "jsonpath={.secrets}",
            ])
            .output();
        if out.is_ok_and(|o| o.status.success() && !o.stdout.trim_ascii().is_empty()) {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no default service account in {ns} after 120 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `exitCode` of a container of a finished pod.
pub fn exit_code(pod: &Value, container: &str) -> Option<i64> {
    pod["status"]["containerStatuses"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == container)?["state"]["terminated"]["exitCode"]
        .as_i64()
}

/// The one `skip` (lib.rs), for the suites that import only this module.
pub use crate::skip;

/// Whether the cluster tests run (they need the local cluster with
/// roar-node deployed: `cargo xtask e2e-k8s`, or `cargo xtask test`).
/// Skipped otherwise, which under CI is a failure.
pub fn enabled() -> bool {
    if std::env::var("ROAR_NODE_K8S").as_deref() == Ok("1") {
        return true;
    }
    skip("set ROAR_NODE_K8S=1 (cargo xtask e2e-k8s) to run on the local cluster");
    false
}

/// xtask/helm.py (Helm v4 from helm-python-sdk) run by the Python of
/// $HELM_VENV (set by `cargo xtask test`), or of target/helm-venv (made by
/// `cargo xtask setup`); None, said, when neither exists.
pub fn helm() -> Option<Command> {
    let venv = std::env::var_os("HELM_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace().join("target/helm-venv"));
    if !venv.join("bin/python").exists() {
        skip(&format!(
            "no Helm venv at {} (cargo xtask setup makes it)",
            venv.display()
        ));
        return None;
    }
    let mut c = Command::new(venv.join("bin/python"));
    c.arg(crate::workspace().join("xtask/helm.py"));
    Some(c)
}

/// Runs `cmd` with `stdin`; (success, stdout, stderr).
pub fn run_with(mut cmd: Command, stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The objects of a YAML stream, read by Helm's own YAML reader.
pub fn yaml_objects(mut helm: Command, yaml: &str) -> Vec<Value> {
    helm.arg("yaml2json");
    let (ok, out, err) = run_with(helm, yaml);
    assert!(ok, "helm.py yaml2json: {err}");
    serde_json::from_str(&out).unwrap()
}

pub fn kubeconfig() -> PathBuf {
    std::env::var_os("KUBECONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/k8s-local/kubeconfig"))
}

/// The daemon's hostPath (single-node cluster: this machine).
pub fn node_state() -> PathBuf {
    std::env::var_os("ROAR_NODE_K8S_STATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/roar-node"))
}

pub fn stats() -> Value {
    let p = node_state().join("stats.json");
    serde_json::from_slice(&fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

/// Every bundle on the node, by file name.
pub fn bundles() -> BTreeMap<String, Value> {
    let dir = node_state().join("bundles");
    let mut m = BTreeMap::new();
    for e in fs::read_dir(&dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("roar-fragments-") && name.ends_with(".json") {
            let v: Value = serde_json::from_slice(&fs::read(e.path()).unwrap()).unwrap();
            m.insert(name, v);
        }
    }
    m
}

/// The fragments of one pod, by container name.
pub fn records_of(all: &BTreeMap<String, Value>, uid: &str) -> Vec<(String, Value)> {
    let mut v = Vec::new();
    for (name, b) in all {
        for f in b["fragments"].as_array().unwrap() {
            if f["backend_metadata"]["pod"]["uid"] == uid {
                v.push((name.clone(), f.clone()));
            }
        }
    }
    v
}

pub fn uid_of(pod: &Value) -> String {
    pod["metadata"]["uid"].as_str().unwrap().to_string()
}

/// A one-container pod (`main`) of the task image running `sh -c
/// command`, `restartPolicy: Never`, opted in by annotation or not.
pub fn shell_pod(ns: &str, name: &str, command: &str, opt_in: bool) -> Value {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main",
                "image": OSMO_IMAGE,
                "imagePullPolicy": "IfNotPresent",
                "command": ["/bin/sh", "-c", command],
            }],
        },
    });
    if opt_in {
        pod["metadata"]["annotations"] = json!({"roar-node/trace": "true"});
    }
    pod
}

/// Adds `volume` (a pod volume, with its `name`) to `pod`, mounted at
/// `path` in its first container.
pub fn with_volume(mut pod: Value, volume: Value, path: &str, read_only: bool) -> Value {
    let mount = json!({"name": volume["name"], "mountPath": path, "readOnly": read_only});
    push(&mut pod["spec"]["volumes"], volume);
    push(&mut pod["spec"]["containers"][0]["volumeMounts"], mount);
    pod
}

fn push(list: &mut Value, item: Value) {
    match list.as_array_mut() {
        Some(a) => a.push(item),
        None => *list = json!([item]),
    }
}

/// Everything the roar-node daemon pods logged, one line per log line.
/// The DaemonSet logs JSON objects: each is shown as its level, message
/// and fields (`key=value`, strings unescaped), so tests can look for the
/// words the daemon said rather than for their JSON escaping.
pub fn daemon_logs(kubeconfig: &Path) -> String {
    let raw = kubectl_ok(
        kubeconfig,
        &[
            "-n",
            "roar-node",
            "logs",
            "-l",
            "app.kubernetes.io/name=roar-node",
            "--tail=-1",
        ],
        None,
    );
    raw.lines()
        .map(plain_log_line)
        .collect::<Vec<_>>()
        .join("\n")
}

fn plain_log_line(line: &str) -> String {
    let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(line) else {
        return line.to_string();
    };
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut out = format!(
        "{} {}",
        fields.get("level").map(text).unwrap_or_default(),
        fields.get("message").map(text).unwrap_or_default()
    );
    for (k, v) in &fields {
        if !matches!(k.as_str(), "level" | "message" | "timestamp" | "target") {
            out.push_str(&format!(" {k}={}", text(v)));
        }
    }
    out
}

/// The roar-node daemon's host PID (the local cluster has one node).
pub fn daemon_pid() -> Option<u32> {
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = fs::read(e.path().join("cmdline")).ok()?;
        (cmd == b"/roar-node\0daemon\0").then_some(pid)
    })
}

/// Wall-clock time, Unix seconds (records' times are on this clock).
pub fn wall_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A new daemon process, and it has written its stats since `after`.
pub fn wait_new_daemon(old: u32, after: f64) {
    wait_until(
        "the kubelet restarts roar-node",
        Duration::from_secs(90),
        || {
            daemon_pid().is_some_and(|p| p != old)
                && std::panic::catch_unwind(stats)
                    .ok()
                    .and_then(|s| s["time"].as_f64())
                    .is_some_and(|t| t > after)
        },
    );
}

/// GET on the daemon's metrics port (host network in the local cluster):
/// status code and body.
pub fn daemon_http_get(path: &str) -> (u16, String) {
    crate::http_get("127.0.0.1:9477", path)
}

/// One sample of the daemon's /metrics, by its exact series name (with
/// labels).
pub fn daemon_metric(series: &str) -> Option<f64> {
    crate::metric_value(&daemon_http_get("/metrics").1, series)
}
