"""python -m launcher up|down|status: the local stack behind `make up` and `make down`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from launcher.health import health_status
from launcher.redis import answers_ping
from launcher.stack import REPO_ROOT, Stack, StackConfig

DEFAULT_RUN_DIR = REPO_ROOT / ".run"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher")
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR, help="where state and logs are kept")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start Triton, every stage and the gateway, wait until SERVING")
    up.add_argument("--artifacts", type=Path, default=REPO_ROOT / "artifacts")
    up.add_argument("--policy", type=Path, default=REPO_ROOT / "config" / "policy.yaml")
    up.add_argument("--gateway-port", type=int, default=50051)
    up.add_argument("--retrieval-shards", type=int, default=1)
    up.add_argument("--retrieval-replicas", type=int, default=1)
    up.add_argument("--ranking-replicas", type=int, default=1)
    up.add_argument("--reranking-replicas", type=int, default=1)
    up.add_argument(
        "--no-credentials",
        action="store_true",
        help="the gateway and events service accept any caller (default: only the `demo` client, whose token "
        "is <run-dir>/credentials/demo.token)",
    )
    up.add_argument(
        "--auto-ports", action="store_true", help="reserved ports (launcher/ports.py) for everything but the gateway"
    )
    commands.add_parser("down", help="stop every process `up` started")
    commands.add_parser("status", help="health of every process `up` started")
    args = parser.parse_args(argv)
    run_dir: Path = args.run_dir

    if args.command == "down":
        stopped = Stack.stop_from_state(run_dir)
        print(f"stopped {len(stopped)} processes: {', '.join(stopped)}" if stopped else "nothing running")
        return 0
    if args.command == "status":
        return _status(run_dir)
    if (run_dir / "stack.json").exists():
        print("a stack is already running (make down first)", file=sys.stderr)
        return 1
    for name in ("retrieval_shards", "retrieval_replicas", "ranking_replicas", "reranking_replicas"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    run_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(
        StackConfig(
            artifacts=args.artifacts,
            run_dir=run_dir,
            auto_ports=args.auto_ports,
            policy=args.policy,
            gateway_port=args.gateway_port,
            retrieval_shards=args.retrieval_shards,
            retrieval_replicas=args.retrieval_replicas,
            ranking_replicas=args.ranking_replicas,
            reranking_replicas=args.reranking_replicas,
            credentials=not args.no_credentials,
        )
    )
    try:
        stack.start()
    except Exception as exc:
        print(f"stack failed to start: {exc}", file=sys.stderr)
        return 1
    stack.save_state()
    print(f"stack is up: gateway on 127.0.0.1:{args.gateway_port}, logs in {run_dir / 'logs'}; `make down` stops it")
    if not args.no_credentials:
        print(f"callers present the demo client's token: {run_dir / 'credentials' / 'demo.token'}")
    return 0


def _status(run_dir: Path) -> int:
    import json

    path = run_dir / "stack.json"
    if not path.exists():
        print("nothing running")
        return 1
    for entry in json.loads(path.read_text()):
        if entry["name"] == "triton":
            status = "(http health)"
        elif entry["name"] == "redis":
            status = "PONG" if answers_ping("127.0.0.1", entry["port"]) else "UNREACHABLE"
        else:
            status = health_status(f"127.0.0.1:{entry['port']}")
        print(f"{entry['name']:<16} pid {entry['pid']:<8} port {entry['port']:<6} {status}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
