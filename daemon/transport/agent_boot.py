"""The agent's bundle and the bootstrap that runs it on the host: which modules ship, in what
order, and the few lines of the host's ``python3`` that check them by digest before running them.

Kept apart from the client so that what runs on the host (and the rule that it runs exactly the
bytes it checked) reads in one place, and the tests can name the bundle without the client.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
BUNDLE = (
    "sync/tempnames.py",
    "sync/wire.py",
    "sync/sparse.py",
    "sync/blocks.py",
    "agent/agent_base.py",
    "agent/agent_digests.py",
    "agent/agent_own.py",
    "agent/agent_scan.py",
    "agent/agent_read.py",
    "agent/agent_write.py",
    "agent/agent_reports.py",
    "agent/agent_checks.py",
    "agent/agent_runs.py",
    "agent/agent_watch.py",
    "agent/agent.py",
)
"""The agent's modules, relative to the package root (``daemon/``), in load order (each after
those it imports; the last has ``main``), laid out the same way in the host's cache folder: they
import each other by their bare names (``import wire``, ``from agent_base import ...``), each
registered by the bootstrap from verified source, so every basename is unique in the bundle."""
AGENT_PATH = PACKAGE_ROOT / BUNDLE[-1]

_BOOTSTRAP = r"""
import sys
if sys.version_info < (3, 8):
    sys.stdout.write("TETHER-OLD %d.%d.%d\n" % tuple(sys.version_info[:3]))
    sys.stdout.flush()
    sys.exit(3)
import hashlib, os
folder, want, names = os.path.expanduser(sys.argv[1]), sys.argv[2], sys.argv[3:]
def digest(files):
    h = hashlib.sha256()
    for name, data in files:
        h.update(b"%s\n%d\n" % (name.encode("utf-8"), len(data)))
        h.update(data)
    return h.hexdigest()
def installed():
    files = []
    for name in names:
        try:
            with open(os.path.join(folder, name), "rb") as fh:
                files.append((name, fh.read()))
        except OSError:
            return []
    return files
out, inp = sys.stdout.buffer, sys.stdin.buffer
files = installed()
if digest(files) != want:
    out.write(b"TETHER-SEND\n")
    out.flush()
    files = []
    for name in names:
        size = int(inp.readline())
        files.append((name, inp.read(size)))
    if digest(files) != want:
        sys.exit(4)
    for name, data in files:
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)
        tmp = "%s.%d.tmp" % (path, os.getpid())
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
out.write(b"TETHER-RUN " + os.path.join(folder, names[-1]).encode("utf-8") + b"\n")
out.flush()
for name, data in files:
    module = type(sys)(os.path.basename(name)[:-3])
    module.__file__ = os.path.join(folder, name)
    sys.modules[module.__name__] = module
    exec(compile(data, module.__file__, "exec", dont_inherit=True), module.__dict__)
sys.exit(module.main(sys.argv))
"""
"""Run by the host's python: read the installed agent's modules once, check their digest, take
new copies on stdin only when it differs, then run exactly the bytes it checked: compiled here
from that source, never imported, so no bytecode cache beside them (tampered or stale) and no
module found on a path is ever run in their place, and nothing is read twice. ``-I``: isolated,
so neither the login folder (``-c`` puts it first on sys.path) nor ``PYTHON*`` variables nor the
user's site-packages can plant a ``hashlib`` or ``os`` for the check itself; ``-S``: no site
either (a site-packages full of ``.pth`` hooks can cost a start more than the rest of it);
``-B``: the standard modules it imports write no bytecode; ``-u``: its log lines on stderr go
out at once (Python 3.8 buffers a piped stderr)."""
PYTHON_FLAGS = ("-I", "-S", "-B", "-u")


def bundle_files() -> list[tuple[str, bytes]]:
    """The agent's modules as shipped: (path relative to its folder, source)."""
    return [(name, (PACKAGE_ROOT / name).read_bytes()) for name in BUNDLE]


def cache_folder_of(agent_path: str) -> str:
    """The cache folder the bootstrap installed into, from the agent's path it reports."""
    return str(Path(agent_path).parents[len(Path(BUNDLE[-1]).parts) - 1])


def bundle_digest(files: Sequence[tuple[str, bytes]]) -> str:
    """The bootstrap's ``digest()``: SHA-256 over each module's name, size and bytes."""
    h = hashlib.sha256()
    for name, data in files:
        h.update(b"%s\n%d\n" % (name.encode("utf-8"), len(data)))
        h.update(data)
    return h.hexdigest()


def bootstrap_argv(folder: str, files: Sequence[tuple[str, bytes]]) -> list[str]:
    """The bootstrap's arguments after the interpreter: flags, script, folder, digest, modules."""
    names = [name for name, _ in files]
    return [*PYTHON_FLAGS, "-c", _BOOTSTRAP, folder, bundle_digest(files), *names]
