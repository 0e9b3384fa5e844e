"""Deploy Funnel to Kubernetes.

  python -m deploy render   --overlay dev                         the overlay's YAML, to stdout
  python -m deploy validate [--overlay dev|prod|all]              the offline checks (make k8s-validate)
  python -m deploy apply    --overlay dev [--dry-run]             server-side apply, as "funnel-deploy"
  python -m deploy scale    retrieval --replicas 4 [--shard 1] --overlay prod
  python -m deploy status   --overlay prod [--wait 300]           readiness per stage
  python -m deploy images   [--tag 0.1.0]                         docker build of every image (make images)
  python -m deploy configuration [--check]                        docs/configuration.md from the settings (make docs)
  python -m deploy credentials new NAME --scopes S[,S] --file F   a client's token (printed once) and its line in F
  python -m deploy secrets  --overlay dev --clients F [--apply]   the Secrets the overlays mount (YAML, or applied)

The cluster comes from the in-cluster service account or the kubeconfig (KUBECONFIG,
~/.kube/config; --context picks one). Exit status: 0 done / ready, 1 a check failed, an object
was refused or a stage is not ready, 2 no cluster or bad usage.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from deploy import cluster
from deploy.images import DOCKERFILES
from deploy.imports import REPO_ROOT
from deploy.render import OVERLAYS, RenderError, render, render_text
from deploy.validate import image_problems, print_report, validate


def project_version() -> str:
    """The version in pyproject.toml, which the overlays' image tags follow."""
    import tomllib

    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]


def _namespace(args: argparse.Namespace) -> str:
    if args.namespace:
        return args.namespace
    namespaces = [o["metadata"]["name"] for o in render(args.overlay) if o["kind"] == "Namespace"]
    if len(namespaces) != 1:
        raise cluster.ClusterError(f"overlay {args.overlay} declares {len(namespaces)} namespaces; pass --namespace")
    return namespaces[0]


def _validate(args: argparse.Namespace) -> int:
    overlays = OVERLAYS if args.overlay == "all" else (args.overlay,)
    reports = [validate(overlay) for overlay in overlays]
    for report in reports:
        print_report(report)
    images = image_problems()
    print(f"images: {'ok' if not images else 'FAIL'} (Dockerfiles against the code they package)")
    for problem in images:
        print(f"         - {problem}")
    return 0 if all(r.ok for r in reports) and not images else 1


def _apply(args: argparse.Namespace) -> int:
    objects = render(args.overlay)
    api_client = cluster.connect(args.context)
    mode = "dry run (nothing persisted)" if args.dry_run else "apply"
    print(f"{mode}: {len(objects)} objects of overlay {args.overlay} to {api_client.configuration.host}")
    results = cluster.apply(api_client, objects, dry_run=args.dry_run)
    for result in results:
        print(f"  {result.object:50} {result.namespace:12} {result.outcome}")
    return 1 if any(r.outcome.startswith("failed") for r in results) else 0


def _scale(args: argparse.Namespace) -> int:
    api_client = cluster.connect(args.context)
    for line in cluster.scale(api_client, _namespace(args), args.stage, args.replicas, args.shard):
        print(line)
    return 0


def _status(args: argparse.Namespace) -> int:
    api_client = cluster.connect(args.context)
    namespace = _namespace(args)
    deadline = time.monotonic() + args.wait
    while True:
        stages = cluster.status(api_client, namespace)
        if all(s.ready_ok for s in stages) or time.monotonic() >= deadline:
            break
        time.sleep(2)
    print(f"{'stage':10} {'ready':>7} {'updated':>8}  deployments")
    for stage in stages:
        mark = "ok" if stage.ready_ok else "NOT READY"
        deployments = ", ".join(stage.deployments) or "-"
        print(f"{stage.stage:10} {stage.ready:>3}/{stage.desired:<3} {stage.updated:>8}  {deployments}  {mark}")
    return 0 if all(s.ready_ok for s in stages) else 1


def _images(args: argparse.Namespace) -> int:
    commands = [
        ["docker", "build", "-f", path, "-t", f"{args.repository}/{name}:{args.tag}", "."]
        for name, path in DOCKERFILES.items()
    ]
    engine = shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0
    if not engine:
        print(
            "no Docker engine reachable (`docker info` failed): no image was built. "
            "The Dockerfiles are still checked against the code by `make k8s-validate`. "
            "Where an engine exists, this runs:",
            file=sys.stderr,
        )
        for command in commands:
            print("  " + " ".join(command), file=sys.stderr)
        return 2
    for command in commands:
        print("$ " + " ".join(command), flush=True)
        if subprocess.run(command, cwd=REPO_ROOT).returncode != 0:
            return 1
    return 0


def _credentials(args: argparse.Namespace) -> int:
    from funnel.runtime.clients import new_credential
    from funnel.runtime.errors import ConfigError

    options = ["bind_user"] if args.bind_user else []
    options += [f"rate={args.rate:g}"] if args.rate else []
    options += [f"burst={args.burst}"] if args.burst else []
    try:
        token, line = new_credential(args.name, [s for s in args.scopes.split(",") if s], options)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with args.file.open("a") as clients:
        clients.write(line + "\n")
    print(f"# {args.name}'s token, shown this once (the file keeps its digest); the client sends "
          "'authorization: Bearer <token>'", file=sys.stderr)  # fmt: skip
    print(token)
    return 0


def _secrets(args: argparse.Namespace) -> int:
    import yaml

    from deploy.secrets import funnel_secrets
    from funnel.runtime.errors import ConfigError

    try:
        objects = funnel_secrets(_namespace(args), args.clients)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.apply:
        sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False))
        return 0
    results = cluster.apply(cluster.connect(args.context), objects)
    for result in results:
        print(f"  {result.object:50} {result.namespace:12} {result.outcome}")  # names only, never the data
    return 1 if any(r.outcome.startswith("failed") for r in results) else 0


def _configuration(args: argparse.Namespace) -> int:
    from deploy import configuration

    if args.check:
        current = configuration.is_current()
        print(f"{configuration.REFERENCE.relative_to(REPO_ROOT)} is {'up to date' if current else 'out of date'}")
        return 0 if current else 1
    print(f"wrote {configuration.write().relative_to(REPO_ROOT)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    render_cmd = commands.add_parser("render", help="print an overlay's YAML")
    validate_cmd = commands.add_parser("validate", help="offline checks of overlays and Dockerfiles")
    apply_cmd = commands.add_parser("apply", help="server-side apply an overlay")
    scale_cmd = commands.add_parser("scale", help="scale one stage (or one retrieval shard)")
    status_cmd = commands.add_parser("status", help="readiness per stage")
    images_cmd = commands.add_parser("images", help="build every service image with Docker")
    configuration_cmd = commands.add_parser(
        "configuration", help="write docs/configuration.md from every process's settings classes"
    )
    configuration_cmd.add_argument("--check", action="store_true", help="only say whether it is up to date")
    credentials_cmd = commands.add_parser(
        "credentials", help="a new client: its token, and its line in a credentials file"
    )
    credentials_cmd.add_argument("action", choices=["new"])
    credentials_cmd.add_argument("name")
    credentials_cmd.add_argument("--scopes", required=True, help="recommend, record_events and/or admin, by ','")
    credentials_cmd.add_argument("--file", type=Path, required=True, help="the credentials file to append to")
    credentials_cmd.add_argument("--rate", type=float, default=0.0, help="calls a second (default: the process's)")
    credentials_cmd.add_argument("--burst", type=int, default=0, help="calls at once (default: the process's)")
    credentials_cmd.add_argument("--bind-user", action="store_true", help="acts only for its users' signed tokens")
    secrets_cmd = commands.add_parser("secrets", help="the Secrets the overlays mount: clients and store users")
    secrets_cmd.add_argument("--overlay", default="dev", help=f"{', '.join(OVERLAYS)} or a kustomization folder")
    secrets_cmd.add_argument("--namespace", help="default: the overlay's namespace")
    secrets_cmd.add_argument("--clients", type=Path, required=True, help="the credentials file")
    secrets_cmd.add_argument("--apply", action="store_true", help="apply them (else print the YAML)")
    secrets_cmd.add_argument("--context", help="kubeconfig context (default: the current one)")
    images_cmd.add_argument("--tag", default=project_version())
    images_cmd.add_argument(
        "--repository", default="funnel", help="image name prefix, e.g. registry.example.com/funnel"
    )
    for command in (render_cmd, apply_cmd, scale_cmd, status_cmd):
        command.add_argument("--overlay", default="dev", help=f"{', '.join(OVERLAYS)} or a kustomization folder")
    validate_cmd.add_argument("--overlay", default="all", help=f"{', '.join(OVERLAYS)}, a folder, or all")
    for command in (apply_cmd, scale_cmd, status_cmd):
        command.add_argument("--context", help="kubeconfig context (default: the current one)")
    for command in (scale_cmd, status_cmd):
        command.add_argument("--namespace", help="default: the overlay's namespace")
    apply_cmd.add_argument("--dry-run", action="store_true", help="server-side dry run: validated, not persisted")
    scale_cmd.add_argument("stage", choices=cluster.STAGES)
    scale_cmd.add_argument("--replicas", type=int, required=True)
    scale_cmd.add_argument("--shard", type=int, help="only this retrieval shard")
    status_cmd.add_argument("--wait", type=float, default=0.0, help="wait up to this many seconds for every stage")
    args = parser.parse_args(argv)

    try:
        if args.command == "render":
            sys.stdout.write(render_text(args.overlay))
            return 0
        handlers = {
            "validate": _validate, "apply": _apply, "scale": _scale, "status": _status, "images": _images,
            "configuration": _configuration, "credentials": _credentials, "secrets": _secrets,
        }  # fmt: skip
        handler = handlers[args.command]
        return handler(args)
    except (cluster.ClusterError, RenderError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
