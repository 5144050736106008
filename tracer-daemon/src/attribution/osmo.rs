//! OSMO task pods as OSMO's own source builds them (NVIDIA/OSMO 6.4:
//! `src/utils/job/task.py` and `kb_objects.py` write the pod,
//! `src/runtime/pkg/args/*.go` parse the containers' arguments,
//! `src/runtime/pkg/data/input_output.go` the data specs):
//!
//! - the user container is the one whose command is `/osmo/bin/osmo_exec`
//!   (a pod template may add other containers: they are sidecars);
//! - `osmo_exec` runs `commands[0]` with `commands[1:] + args` as a child
//!   (Go's `exec.Command`: argv\[0\] is the name as given); it may start
//!   other children too (`/osmo/usr/bin/rsync`, `osmo workflow exec`
//!   shells, re-runs of the command);
//! - `osmo-ctrl`'s `-inputs task:<i>,<url>,<regex>` / `url:<i>,<url>,<regex>`
//!   fill `/osmo/data/input/<i>`; its `-outputs task:<url>` /
//!   `url:<url>,<regex>` / `kpi:<url>,<path>` upload `/osmo/data/output`;
//!   the user container's `-checkpoint path;url;seconds;regex` uploads a
//!   path periodically.
//!
//! Arguments are parsed as Go's `flag` package does: `-name value`,
//! `--name value`, `-name=value`; boolean flags take no value; parsing
//! stops at `--` or at the first argument that is not a flag. Nothing
//! here runs anything: it reads the pod spec.

use serde_json::{Value, json};

use super::pods::{ContainerInfo, PodInfo};

/// The user container's command in every OSMO task pod.
pub const OSMO_EXEC: &str = "/osmo/bin/osmo_exec";
/// The rsync daemon `osmo_exec` starts when the workflow enables rsync.
pub(crate) const OSMO_RSYNC: &str = "/osmo/usr/bin/rsync";
const INPUT_DIR: &str = "/osmo/data/input";
const OUTPUT_DIR: &str = "/osmo/data/output";
/// OSMO adds this to osmo-ctrl's exit code when it reports a task's
/// exit code (`src/operator/backend_listener.py`).
pub(crate) const CTRL_EXIT_CODE_OFFSET: i32 = 2000;
/// `osmo_exec`'s boolean flags (`exec_args.go`).
const EXEC_BOOL_FLAGS: [&str; 1] = ["enableRsync"];

/// Whether `c` is an OSMO user container: its command is `osmo_exec`.
pub(crate) fn is_user_container(c: &ContainerInfo) -> bool {
    c.command.first().map(String::as_str) == Some(OSMO_EXEC)
}

/// `(name, value)` flags of a Go program's command line.
fn go_flags(argv: &[String], bools: &[&str]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        if a == "--" || a == "-" || !a.starts_with('-') {
            break;
        }
        let name = a.trim_start_matches('-');
        if let Some((n, v)) = name.split_once('=') {
            out.push((n.to_string(), v.to_string()));
        } else if bools.contains(&name) {
            out.push((name.to_string(), "true".into()));
        } else {
            match it.next() {
                Some(v) => out.push((name.to_string(), v.clone())),
                None => break,
            }
        }
    }
    out
}

/// What a container's process sees as its arguments: the rest of the
/// spec's command, then its args.
fn program_args(c: &ContainerInfo) -> Vec<String> {
    c.command.iter().skip(1).chain(&c.args).cloned().collect()
}

/// The user's command, as `osmo_exec` will run it: `commands[0]` and
/// `commands[1:] + args`. `None` without `-commands` (osmo_exec would fail).
pub(crate) fn user_command(c: &ContainerInfo) -> Option<Vec<String>> {
    let flags = go_flags(&program_args(c), &EXEC_BOOL_FLAGS);
    let mut commands: Vec<String> = flags
        .iter()
        .filter(|(n, _)| n == "commands")
        .map(|(_, v)| v.clone())
        .collect();
    if commands.is_empty() {
        return None;
    }
    commands.extend(
        flags
            .iter()
            .filter(|(n, _)| n == "args")
            .map(|(_, v)| v.clone()),
    );
    Some(commands)
}

/// Where a task's data comes from and goes, from the pod spec: the JSON
/// a record carries as `osmo_data`. Values that do not parse are kept,
/// raw, under `unparsed`.
pub(crate) fn data_map(pod: &PodInfo) -> Option<Value> {
    let ctrl = pod.container(super::policy::OSMO_CTRL);
    let user = pod.containers.iter().find(|c| is_user_container(c));
    if ctrl.is_none() && user.is_none() {
        return None;
    }
    let mut inputs = Vec::new();
    let mut outputs = Vec::new();
    let mut checkpoints = Vec::new();
    let mut unparsed = Vec::new();
    for (flag, value) in ctrl
        .map(|c| go_flags(&program_args(c), &[]))
        .unwrap_or_default()
    {
        let parsed = match flag.as_str() {
            "inputs" => input(&value).map(|v| inputs.push(v)),
            "outputs" => output(&value).map(|v| outputs.push(v)),
            _ => Some(()),
        };
        if parsed.is_none() {
            unparsed.push(json!({"flag": flag, "value": value}));
        }
    }
    let exec_flags = user.map(|c| go_flags(&program_args(c), &EXEC_BOOL_FLAGS));
    for (flag, value) in exec_flags.unwrap_or_default() {
        if flag == "checkpoint" {
            match checkpoint(&value) {
                Some(v) => checkpoints.push(v),
                None => unparsed.push(json!({"flag": flag, "value": value})),
            }
        }
    }
    let mut m = json!({"inputs": inputs, "outputs": outputs, "checkpoints": checkpoints});
    if !unparsed.is_empty() {
        m["unparsed"] = Value::Array(unparsed);
    }
    Some(m)
}

/// `task:<i>,<url>,<regex>` or `url:<i>,<url>,<regex>`.
fn input(v: &str) -> Option<Value> {
    let (kind, rest) = v.split_once(':')?;
    let mut parts = rest.splitn(3, ',');
    let (index, url, regex) = (parts.next()?, parts.next()?, parts.next()?);
    if !matches!(kind, "task" | "url") || index.is_empty() || index.contains('/') {
        return None;
    }
    Some(json!({"path": format!("{INPUT_DIR}/{index}"), "from": kind, "url": url, "regex": regex}))
}

/// `task:<url>`, `url:<url>,<regex>` or `kpi:<url>,<path>`.
fn output(v: &str) -> Option<Value> {
    let (kind, rest) = v.split_once(':')?;
    match kind {
        "task" if !rest.contains(',') => {
            Some(json!({"path": OUTPUT_DIR, "to": "task", "url": rest}))
        }
        "url" => {
            let (url, regex) = rest.split_once(',')?;
            Some(json!({"path": OUTPUT_DIR, "to": "url", "url": url, "regex": regex}))
        }
        "kpi" => {
            let (url, path) = rest.split_once(',')?;
            let path = path.trim_start_matches('/');
            Some(json!({"path": format!("{OUTPUT_DIR}/{path}"), "to": "kpi", "url": url}))
        }
        _ => None,
    }
}

/// `path;url;seconds;regex`.
fn checkpoint(v: &str) -> Option<Value> {
    let mut parts = v.splitn(4, ';');
    let (path, url, every, regex) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let every: u64 = every.parse().ok()?;
    Some(json!({"path": path, "url": url, "every_seconds": every, "regex": regex}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn container(command: &[&str], args: &[&str]) -> ContainerInfo {
        ContainerInfo {
            name: "c".into(),
            command: s(command),
            args: s(args),
            ..ContainerInfo::default()
        }
    }

    /// The argument forms of OSMO's `to_pod_container`: user args first,
    /// then one `-commands` per command word and one `-args` per argument.
    #[test]
    fn the_user_command_is_commands_then_args() {
        let c = container(
            &[OSMO_EXEC],
            &[
                "-socketPath",
                "/osmo/data/socket/data.sock",
                "-userBinPath",
                "/osmo/usr/bin",
                "-checkpoint",
                "/ckpt;s3://b/ck;300;.*",
                "-enableRsync",
                "-rsyncReadLimit",
                "0",
                "-commands",
                "python3",
                "-commands",
                "train.py",
                "-args",
                "--epochs",
                "-args",
                "3",
            ],
        );
        assert!(is_user_container(&c));
        assert_eq!(
            user_command(&c).unwrap(),
            s(&["python3", "train.py", "--epochs", "3"])
        );
        // `=` and `--` spellings; a bool flag takes no value.
        let c = container(
            &[OSMO_EXEC, "--enableRsync", "-commands=/bin/sh"],
            &["--args", "-c", "-args=echo a=b"],
        );
        assert_eq!(user_command(&c).unwrap(), s(&["/bin/sh", "-c", "echo a=b"]));
        // Parsing stops at the first non-flag, as Go's does.
        let c = container(&[OSMO_EXEC], &["-commands", "a", "stray", "-args", "x"]);
        assert_eq!(user_command(&c).unwrap(), s(&["a"]));
        assert_eq!(user_command(&container(&[OSMO_EXEC], &[])), None);
        assert!(!is_user_container(&container(&["/bin/sh"], &[])));
        assert!(!is_user_container(&container(&["osmo_exec"], &[])));
    }

    #[test]
    fn inputs_outputs_and_checkpoints_map_to_their_paths() {
        let mut pod = PodInfo {
            uid: "u".into(),
            name: "p".into(),
            namespace: "n".into(),
            node: String::new(),
            labels: Default::default(),
            annotations: Default::default(),
            containers: Vec::new(),
            phase: String::new(),
            job_name: None,
        };
        let mut ctrl = container(
            &["/osmo/bin/osmo_ctrl"],
            &[
                "-socketPath",
                "/osmo/data/socket/data.sock",
                "-inputs",
                "task:0,s3://b/wf-1/produce,.*",
                "-inputs",
                "url:1,gs://data/set,a,b",
                "-inputs",
                "bogus",
                "-outputs",
                "task:s3://b/wf-1/consume",
                "-outputs",
                "url:s3://out/x,.*\\.bin",
                "-outputs",
                "kpi:s3://b/wf-1/consume/m,metrics/kpi.json",
                "-userConfig",
                "/x",
            ],
        );
        ctrl.name = super::super::policy::OSMO_CTRL.into();
        let mut user = container(
            &[OSMO_EXEC],
            &[
                "-checkpoint",
                "/ckpt;s3://b/ck;300;.*",
                "-checkpoint",
                "/x;u;often;r",
            ],
        );
        user.name = "consume".into();
        pod.containers = vec![user, ctrl];
        let m = data_map(&pod).unwrap();
        assert_eq!(
            m,
            json!({
                "inputs": [
                    {"path": "/osmo/data/input/0", "from": "task", "url": "s3://b/wf-1/produce", "regex": ".*"},
                    {"path": "/osmo/data/input/1", "from": "url", "url": "gs://data/set", "regex": "a,b"},
                ],
                "outputs": [
                    {"path": "/osmo/data/output", "to": "task", "url": "s3://b/wf-1/consume"},
                    {"path": "/osmo/data/output", "to": "url", "url": "s3://out/x", "regex": ".*\\.bin"},
                    {"path": "/osmo/data/output/metrics/kpi.json", "to": "kpi", "url": "s3://b/wf-1/consume/m"},
                ],
                "checkpoints": [
                    {"path": "/ckpt", "url": "s3://b/ck", "every_seconds": 300, "regex": ".*"},
                ],
                "unparsed": [
                    {"flag": "inputs", "value": "bogus"},
                    {"flag": "checkpoint", "value": "/x;u;often;r"},
                ],
            })
        );
    }
}
