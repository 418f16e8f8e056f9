"""The `pycri` command: serve the CRI (default), or `config default|check`.

grpc is imported only on the serve path, after start-up work that must fork (the monitor spawner) is done:
a process that has started gRPC threads must not fork.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from pycri import CRI_API_VERSION, __version__
from pycri import config as configmod


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pycri", description="A Kubernetes CRI container runtime.")
    p.add_argument("--config", metavar="FILE", help=f"config file (default: ${configmod.CONFIG_ENV}, "
                                                   f"else {configmod.DEFAULT_CONFIG_PATH} if present)")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command")
    cfg = sub.add_parser("config", help="show or check configuration")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    cfg_sub.add_parser("default", help="print the full default configuration (TOML)")
    check = cfg_sub.add_parser("check", help="validate a configuration file")
    check.add_argument("file")
    images = sub.add_parser("images", help="manage images in pycri's store")
    images_sub = images.add_subparsers(dest="images_command", required=True)
    imp = images_sub.add_parser("import", help="import an OCI layout tarball or a `docker save` tarball")
    imp.add_argument("file")
    imp.add_argument("--name", help="also tag the (first) imported image with this reference")
    pulls = images_sub.add_parser("pulls", help="list pulls in flight with per-layer progress (live on a terminal)")
    pulls.add_argument("--interval", type=float, default=1.0, metavar="SECONDS", help="refresh period (default 1)")
    pulls.add_argument("--json", action="store_true", help="print the daemon's answer as JSON, once")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.version:
        print(f"pycri {__version__}\nCRI API: {CRI_API_VERSION}")
        return 0
    if args.command == "config":
        if args.config_command == "default":
            sys.stdout.write(configmod.to_toml(configmod.Config()))
            return 0
        try:
            configmod.load(args.file)
        except configmod.ConfigError as exc:
            print(f"pycri: config error: {exc}", file=sys.stderr)
            return 2
        print(f"{args.file}: ok")
        return 0
    if args.command == "images" and args.images_command == "pulls":
        return _images_pulls(args.config, args.interval, args.json)
    if args.command == "images":
        return _images_import(args.config, args.file, args.name)
    return _serve(args.config)


def _images_import(config_path: str | None, path: str, name: str | None) -> int:
    """Import into the store the daemon uses (SQLite WAL: safe while the daemon runs), for air-gapped nodes."""
    try:
        cfg = configmod.load(config_path)
    except configmod.ConfigError as exc:
        print(f"pycri: config error: {exc}", file=sys.stderr)
        return 2
    from pycri import log
    from pycri.images import ImageError, ImageManager
    from pycri.state.store import Store

    log.setup("warning")

    async def run() -> list[str]:
        cfg.root_path.mkdir(parents=True, exist_ok=True, mode=0o711)
        manager = ImageManager(cfg, Store(cfg.db_path, sync_full=cfg.store_sync_full))
        try:
            ids = await manager.import_archive(path, _progress_bar(path) if sys.stderr.isatty() else None)
            if sys.stderr.isatty():
                sys.stderr.write(" done\n")
            if name and ids:
                manager.tag(ids[0], name)
            return ids
        finally:
            await manager.close()

    try:
        ids = asyncio.run(run())
    except (ImageError, ValueError) as exc:
        print(f"pycri: import failed: {exc}", file=sys.stderr)
        return 1
    for image_id in ids:
        print(image_id)
    return 0


def _images_pulls(config_path: str | None, interval: float, as_json: bool) -> int:
    """Pulls in flight, from the daemon's status socket (see pycri/observe/pages.py)."""
    try:
        cfg = configmod.load(config_path)
    except configmod.ConfigError as exc:
        print(f"pycri: config error: {exc}", file=sys.stderr)
        return 2
    from pycri.observe import pullsview

    if as_json:
        import json

        try:
            print(json.dumps(pullsview.fetch(cfg.status_socket), indent=2))
        except pullsview.StatusUnavailable as exc:
            print(f"pycri: {exc}", file=sys.stderr)
            return 1
        return 0
    return pullsview.run(cfg.status_socket, max(0.1, interval))


def _progress_bar(label: str):
    """A one-line progress bar on stderr: `importing FILE [#####.....] 52% 12.3/23.6 MiB`."""
    last = [-1]
    furthest = [0]

    def show(done: int, total: int) -> None:
        furthest[0] = done = max(done, furthest[0])  # tar reads jump back and forth; show how far it got
        pct = int(done * 100 / total) if total else 100
        if pct == last[0]:
            return
        last[0] = pct
        bar = "#" * (pct // 4) + "." * (25 - pct // 4)
        sys.stderr.write(f"\rimporting {label} [{bar}] {pct:3d}% {done / 2**20:.1f}/{total / 2**20:.1f} MiB")
        sys.stderr.flush()

    return show


def _limit_malloc_arenas() -> None:
    """glibc gives each thread that mallocs its own arena (up to 8 per core); the daemon's worker threads
    (monitor calls, CNI, unpacking) would each keep one resident. Two arenas keep idle RSS down at no
    measurable cost for a daemon whose hot path is one event loop."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def _serve(config_path: str | None) -> int:
    try:
        cfg = configmod.load(config_path)
    except configmod.ConfigError as exc:
        print(f"pycri: config error: {exc}", file=sys.stderr)
        return 2
    from pycri import log

    _limit_malloc_arenas()
    log.setup(cfg.log_level)
    from pycri.node import spawner as spawner_mod

    spawner = spawner_mod.start()  # before grpc exists in this process (see the module docstring)
    if spawner.warning:
        log.get("daemon").warning("spawner", warning=spawner.warning)
    from pycri.daemon import DaemonError, serve  # imports grpc

    try:
        asyncio.run(serve(cfg, spawner, config_path))
    except DaemonError as exc:
        log.get("daemon").error("cannot start", error=str(exc))
        print(f"pycri: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
