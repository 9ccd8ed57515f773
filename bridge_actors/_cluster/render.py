"""Fill deploy/nginx-cluster.conf's placeholders for a list of instances.

``python -m bridge_actors._cluster.render [--listen HOST:PORT] [--runtime-dir DIR]
[ID=HOST:PORT ...]`` prints the config; the default is docker-compose's three
instances (bridge1..3 on port 8000) with nginx on 0.0.0.0:8080.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

__all__ = ["render_nginx_config"]

TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "nginx-cluster.conf"
COMPOSE_INSTANCES = ("bridge1=bridge1:8000", "bridge2=bridge2:8000", "bridge3=bridge3:8000")


def render_nginx_config(
    template: str, instances: Sequence[tuple[str, str]], *, listen: str, runtime_dir: str
) -> str:
    """``template`` with one map line and one upstream server per (id, host:port)."""
    lines = {
        "@INSTANCE_MAP@": "\n".join(f"        {name} {address};" for name, address in instances),
        "@SERVERS@": "\n".join(
            f"        server {address} max_fails=1 fail_timeout=5s;" for _, address in instances
        ),
    }
    for placeholder, value in lines.items():  # whole lines: the header names them too
        template = template.replace(f"\n{placeholder}\n", f"\n{value}\n")
    return template.replace("@LISTEN@", listen).replace("@RUNTIME_DIR@", runtime_dir)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bridge_actors._cluster.render")
    parser.add_argument("--listen", default="0.0.0.0:8080")
    parser.add_argument("--runtime-dir", default="/tmp")
    parser.add_argument("--template", type=Path, default=TEMPLATE)
    parser.add_argument("instances", nargs="*", default=list(COMPOSE_INSTANCES))
    args = parser.parse_args(argv)
    pairs = []
    for item in args.instances:
        name, equals, address = item.partition("=")
        if not equals or not name or not address:
            parser.error(f"expected ID=HOST:PORT, got {item!r}")
        pairs.append((name, address))
    text = args.template.read_text()
    print(render_nginx_config(text, pairs, listen=args.listen, runtime_dir=args.runtime_dir))


if __name__ == "__main__":
    main()
