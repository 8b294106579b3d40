"""``cifarlab serve``: browse runs in a local web app (the ``serve`` extra: Starlette, uvicorn, python-multipart)."""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys

from cifarlab.base.errors import UsageError, escape


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_socket(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free one), refused in one line when it cannot be had: the URL
    printed works as soon as it is printed."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)  # connections wait in the queue from now on, before uvicorn has started
    except OSError as exc:
        raise UsageError(f"cannot listen on {escape(host)}:{port}: {exc.strerror or exc}") from None
    return sock


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from cifarlab.serve.app import make_app
    except ImportError as exc:
        raise UsageError(
            f"cifarlab serve needs the serve extra: pip install 'cifarlab[serve]' ({exc.name} is missing)"
        ) from None
    app = make_app(args.folders or ["runs"], args.data_dir)
    sock = open_socket(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    runs = len(app.state.lab.served.entries)
    print(f"cifarlab serve: {runs} run{'s' if runs != 1 else ''} at http://{shown}:{port}/ (Ctrl-C stops)", flush=True)
    if not is_loopback(args.host):
        print(
            f"cifarlab: warning: listening on {escape(args.host)}: the app has no authentication; anyone who can "
            "reach this port can see every served run",
            file=sys.stderr,
            flush=True,
        )
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def register_serve(sub: argparse._SubParsersAction) -> None:
    """Add ``cifarlab serve`` to the command line."""
    p = sub.add_parser("serve", help="browse runs in a local web app: confusion cells, images, compare, try a photo")
    p.add_argument("folders", nargs="*", metavar="DIR", help="folders of runs and sweeps to serve (default: runs/)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument(
        "--data-dir",
        help="folder holding the CIFAR files, to show test images (default: $CIFARLAB_DATA_DIR, else ./data); "
        "an image-folder run reads the folder its run.json names",
    )
    p.set_defaults(func=cmd_serve)
