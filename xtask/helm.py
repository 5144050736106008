#!/usr/bin/env python3
"""A small `helm` for machines without one: Helm v4 itself, as a library
(PyPI helm-python-sdk, which embeds Helm's Go SDK as libhelm_c), behind the
few commands the project uses. xtask and the tests run it from the venv
`cargo xtask setup` makes (target/helm-venv).

  helm.py template CHART [-f VALUES]... [--set K=V]... [--set-json K=JSON]...
                        [--name N] [--namespace NS] [--cluster] [--json]
  helm.py lint CHART [-f VALUES]... [--set K=V]...        (strict: warnings fail)
  helm.py upgrade RELEASE CHART --namespace NS [-f VALUES]... [--set K=V]...
                        [--install] [--create-namespace] [--wait] [--timeout S]
  helm.py uninstall RELEASE --namespace NS
  helm.py yaml2json < MANIFESTS.yaml                      (a JSON list of objects)

Cluster commands use $KUBECONFIG. Errors are one line on stderr, exit 1.
"""
import argparse
import json
import os
import re
import sys

import helm_python as helm
from helm_python import _native
from helm_python import config as helm_config


def merge(base, over):
    """Values files layered as helm does: maps merge key by key, anything
    else (lists included) is replaced by the later file."""
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            merge(base[k], v)
        else:
            base[k] = v
    return base


def values(args):
    out = {}
    for path in args.values or []:
        with open(path, encoding="utf-8") as f:
            merge(out, helm.values_from_yaml(f.read()))
    if args.set:
        # One parse, as helm parses its --set flags into one map: list
        # items given index by index (a[0].x=1 then a[0].y=2) build one item.
        merge(out, helm.parse_set_string(",".join(args.set)))
    for expr in args.set_json or []:
        merge(out, helm.parse_set_json(expr))
    return out


def documents(text):
    """The objects of a multi-document YAML stream (comment-only or empty
    documents skipped), each parsed by Helm's own YAML reader."""
    objs = []
    for doc in re.split(r"(?m)^---[ \t]*$", text):
        if not doc.strip():
            continue
        obj = helm.values_from_yaml(doc)
        if obj:
            objs.append(obj)
    return objs


def render(args):
    chart = helm.Chart.load(args.chart)
    vals = values(args)
    # Bad values fail here with the schema's message, as `helm install` would.
    chart.validate_schema(chart.merge_values(vals))
    if args.cluster:
        # What an install would apply to the cluster of $KUBECONFIG (its
        # Kubernetes version and APIs: offline, Helm assumes a recent
        # Kubernetes): a server-side dry run, which creates nothing.
        rel = config(args).install(chart, args.name, vals, namespace=args.namespace,
                                   dry_run="server")
        return rel["manifest"]
    manifests = chart.render(vals, name=args.name, namespace=args.namespace, is_install=True)
    # Templates in file order, as `helm template` prints them; NOTES.txt
    # is not a manifest.
    parts = []
    for path in sorted(manifests):
        if path.endswith("NOTES.txt") or not manifests[path].strip():
            continue
        parts.append(f"# Source: {path}\n{manifests[path].strip()}\n")
    return "---\n".join(parts)


def cmd_template(args):
    text = render(args)
    if args.json:
        print(json.dumps(documents(text), indent=1))
    else:
        sys.stdout.write(text)


def cmd_lint(args):
    report = helm.lint(args.chart, values(args), strict=True)
    bad = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    for m in report.get("messages", []):
        print(f"[{['UNKNOWN', 'INFO', 'WARNING', 'ERROR'][m.get('severity', 0)]}] "
              f"{m.get('path', '')}: {m.get('error', '')}")
    errors = report.get("errors") or []
    for e in errors:
        print(f"[ERROR] {e}")
    if bad or errors:
        raise SystemExit(f"helm lint: {len(bad) + len(errors)} problem(s) in {args.chart}")
    print(f"helm lint: {args.chart}: {report.get('total_charts_linted', 0)} chart(s) linted, no problems")


def config(args):
    return helm.Config(kubeconfig_path=os.environ.get("KUBECONFIG"), namespace=args.namespace)


def exists(cfg, name):
    try:
        cfg.history(name, max_revisions=1)
        return True
    except helm.HelmNotFoundError:
        return False


def upgrade_forcing_conflicts(cfg, chart, release, vals, *, namespace, timeout, wait):
    """`helm upgrade --force-conflicts`: the chart's values win over edits
    made since with another field manager (`kubectl patch` of the policy
    ConfigMap, say), which Helm 4's server-side apply otherwise refuses as
    a conflict. helm-python-sdk 0.2.2's Config.upgrade has no keyword for
    it; its libhelm_c takes the option, so the call is made as
    Config.upgrade makes it, with that option added."""
    payload = _native.call_string(
        "helm_upgrade", cfg._raw(), _native.HANDLE(helm_config._NONE), chart._raw(), None,
        release, json.dumps(vals),
        json.dumps({k: v for k, v in dict(namespace=namespace, timeout_seconds=timeout,
                                           wait=wait, force_conflicts=True).items()
                    if v is not None}))
    return json.loads(payload)


def cmd_upgrade(args):
    cfg = config(args)
    chart = helm.Chart.load(args.chart)
    vals = values(args)
    opts = dict(namespace=args.namespace, timeout=args.timeout,
                wait="watcher" if args.wait else None)
    if args.install and not exists(cfg, args.release):
        rel = cfg.install(chart, args.release, vals, create_namespace=args.create_namespace, **opts)
    else:
        rel = upgrade_forcing_conflicts(cfg, chart, args.release, vals, **opts)
    print(f"release {args.release} in {args.namespace}: revision {rel.get('revision', '?')}, "
          f"{rel.get('status', '?')}")


def cmd_uninstall(args):
    cfg = config(args)
    cfg.uninstall(args.release, ignore_not_found=True, wait="watcher", timeout=args.timeout)
    print(f"release {args.release} in {args.namespace}: uninstalled")


def cmd_yaml2json(_args):
    print(json.dumps(documents(sys.stdin.read()), indent=1))


def main():
    p = argparse.ArgumentParser(prog="helm.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def with_values(sp):
        sp.add_argument("-f", "--values", action="append", metavar="FILE")
        sp.add_argument("--set", action="append", metavar="K=V")
        sp.add_argument("--set-json", action="append", metavar="K=JSON")

    t = sub.add_parser("template")
    t.add_argument("chart")
    with_values(t)
    t.add_argument("--name", default="roar-node")
    t.add_argument("--namespace", default="roar-node")
    t.add_argument("--cluster", action="store_true",
                   help="render for the cluster of $KUBECONFIG (its version and APIs)")
    t.add_argument("--json", action="store_true", help="a JSON list of the objects")
    t.set_defaults(func=cmd_template)

    lint = sub.add_parser("lint")
    lint.add_argument("chart")
    with_values(lint)
    lint.set_defaults(func=cmd_lint)

    u = sub.add_parser("upgrade")
    u.add_argument("release")
    u.add_argument("chart")
    u.add_argument("--namespace", required=True)
    with_values(u)
    u.add_argument("--install", action="store_true")
    u.add_argument("--create-namespace", action="store_true")
    u.add_argument("--wait", action="store_true")
    u.add_argument("--timeout", type=int, default=300, metavar="SECONDS")
    u.set_defaults(func=cmd_upgrade)

    d = sub.add_parser("uninstall")
    d.add_argument("release")
    d.add_argument("--namespace", required=True)
    d.add_argument("--timeout", type=int, default=120, metavar="SECONDS")
    d.set_defaults(func=cmd_uninstall)

    y = sub.add_parser("yaml2json")
    y.set_defaults(func=cmd_yaml2json)

    args = p.parse_args()
    try:
        args.func(args)
    except helm.HelmError as e:
        # Helm's messages can span lines (a schema lists each violation):
        # one line, as every error of the project.
        raise SystemExit(f"helm.py {args.cmd}: " + " ".join(str(e).split()))
    except OSError as e:
        raise SystemExit(f"helm.py {args.cmd}: {e}")


if __name__ == "__main__":
    main()
