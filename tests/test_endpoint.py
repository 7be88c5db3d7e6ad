"""The engine's one endpoint interface: both implementations answer it, the engine imports no SSH
library, and the numbers both ends of the agent's stream share are defined once."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
from tether.sync import wire
from tether.sync.endpoint import Connector, Endpoint
from tether.transport.agent_boot import BUNDLE
from tether.transport.agent_client import AgentClient
from tether.transport.endpoints import SshConnector
from tether.transport.sftp_endpoint import SftpEndpoint

from tests.agent_module import load_agent

ROOT = Path(__file__).resolve().parents[1]


def _members(protocol: type) -> list[str]:
    return [n for n in vars(protocol) if not n.startswith("_")]


def _accepts(impl: object, spec: object) -> list[str]:
    """What of ``spec``'s parameters ``impl`` would refuse (a name or kind it lacks)."""
    got = inspect.signature(impl)  # type: ignore[arg-type]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in got.parameters.values())
    missing = []
    for name, want in inspect.signature(spec).parameters.items():  # type: ignore[arg-type]
        have = got.parameters.get(name)
        if have is None:
            if not (takes_any and want.kind is want.KEYWORD_ONLY):
                missing.append(name)
        elif want.default is not want.empty and have.default is have.empty:
            missing.append(f"{name} (optional in the interface)")
    return missing


@pytest.mark.parametrize(
    ("impl", "protocol"),
    [(AgentClient, Endpoint), (SftpEndpoint, Endpoint), (SshConnector, Connector)],
)
def test_each_implementation_answers_its_whole_interface(impl: type, protocol: type) -> None:
    """mypy checks this statically where the endpoints are built; this checks the names and
    parameters at run time too, so an implementation that drifts fails here by name."""
    for name in _members(protocol):
        spec = getattr(protocol, name)
        if isinstance(spec, property):  # an attribute will do
            assert hasattr(impl, name) or name in impl.__annotations__, f"{impl.__name__}.{name}"
            continue
        assert hasattr(impl, name), f"{impl.__name__} lacks {name}"
        assert _accepts(getattr(impl, name), spec) == [], f"{impl.__name__}.{name}"


def test_the_sync_layer_imports_no_ssh_library() -> None:
    """The engine, apply, the sides and conflict resolution are handed their endpoints: importing
    them loads neither asyncssh nor the agent's client (the layer that opens connections)."""
    code = (
        "import sys\n"
        "import tether.sync.engine, tether.sync.resolve, tether.sync.apply, tether.sync.sides\n"
        "print(sorted(m for m in sys.modules if m.startswith(('asyncssh', 'tether.transport'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_both_ends_of_the_stream_read_one_definition_of_its_numbers() -> None:
    """The agent ships :mod:`tether.sync.wire` in its verified bundle and takes its numbers
    from it; this process takes them from the same module, and nobody keeps a copy."""
    assert "sync/wire.py" in BUNDLE and BUNDLE.index("sync/wire.py") < len(BUNDLE) - 1
    agent_base, agent_checks = load_agent("agent_base"), load_agent("agent_checks")
    assert (agent_checks.VERSION, agent_base.CHUNK, agent_base.MAX_FRAME) == (
        wire.PROTOCOL_VERSION,
        wire.CHUNK,
        wire.MAX_FRAME,
    )
    copies = []
    for path in sorted((ROOT / "daemon").rglob("*.py")):
        if path == ROOT / "daemon/sync/wire.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and not isinstance(
                node.value,
                (ast.Name, ast.Attribute),  # an alias of wire's own is no copy
            ):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                named = {t.id for t in targets if isinstance(t, ast.Name)}
                copies += [f"{path.name}: {n}" for n in named & WIRE_NUMBERS]
    assert copies == []


WIRE_NUMBERS = {"CHUNK", "WINDOW", "MAX_FRAME", "VERSION", "PROTOCOL_VERSION"}
"""The stream's numbers: :mod:`tether.sync.wire` defines them, every other module takes them."""


def test_host_side_scanners_match_ignore_rules_with_one_matcher() -> None:
    """The agent's scanner and the SFTP fallback's take the same matcher from the bundled
    :mod:`tether.sync.wire`: a folder is tested as ``path/``, the last matching rule wins, and
    a malformed rule is refused (the agent answers it as an ``invalid`` request)."""
    rules = wire.WireRules([["^build/$", True], ["^.*\\.log$", True], ["^keep\\.log$", False]])
    assert rules("build", True) and not rules("build", False)
    assert rules("x.log", False) and not rules("keep.log", False)
    agent_base = load_agent("agent_base")
    assert isinstance(agent_base.Ignore([["^a$", True]]), wire.WireRules)
    with pytest.raises(agent_base.AgentError):
        agent_base.Ignore([["(", True]])
    sftp_source = (ROOT / "daemon/transport/sftp_endpoint.py").read_text()
    assert "WireRules(" in sftp_source and "re.compile" not in sftp_source
    assert load_agent("agent_scan").FOREIGN == wire.FOREIGN_REASON
