"""The agent's runs: ``exec`` under a detached supervisor that records how the run ended and
stops it once no client has been attached for its orphan_s, ``attach``, ``kill``, ``runs``."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import sys
import time

from agent_base import CHUNK, ERRNO_TYPES, AgentError, cache_dir, load_libc, random_hex

RUN_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,80}$")
ORPHAN_S = 120.0
STOP_GRACE_S = 5.0
SUPERVISE_POLL_S = 0.2
SIGNALS = {"TERM": signal.SIGTERM, "KILL": signal.SIGKILL, "INT": signal.SIGINT}
if hasattr(signal, "SIGHUP"):
    SIGNALS["HUP"] = signal.SIGHUP


def runs_dir():
    return os.path.join(cache_dir(), "runs")


def run_dir(run_id):
    if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id) or run_id in (".", ".."):
        raise AgentError("invalid", "bad run id %r" % (run_id,))
    return os.path.join(runs_dir(), run_id)


def read_json(path):
    try:
        with open(path, "rb") as fh:
            return json.loads(fh.read().decode("utf-8"))
    except (OSError, ValueError):
        return None


def write_json(path, data):
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(json.dumps(data).encode("utf-8"))
    os.replace(tmp, path)


def op_exec(req):
    cmd, argv = req.get("cmd"), req.get("argv")
    if isinstance(cmd, str) and cmd:
        argv = ["/bin/sh", "-c", cmd]
    elif not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
        raise AgentError("invalid", "exec needs cmd (a string) or argv (a list of strings)")
    run_id = req.get("run_id") or "%d-%s" % (time.time_ns(), random_hex(3))
    folder = run_dir(run_id)
    env = dict(os.environ)
    for key, value in (req.get("env") or {}).items():
        if value is None:
            env.pop(str(key), None)
        else:
            env[str(key)] = str(value)
    venv = req.get("venv")
    if venv:
        venv = os.path.expanduser(venv)
        if not os.path.isdir(os.path.join(venv, "bin")):  # else the run silently used no venv
            raise AgentError("no_venv", "the venv %s does not exist on the host" % venv, venv)
        env["VIRTUAL_ENV"] = venv
        env["PATH"] = os.path.join(venv, "bin") + os.pathsep + env.get("PATH", os.defpath)
        env.pop("PYTHONHOME", None)
    pythonpath = req.get("pythonpath") or os.environ.get("TETHER_PYTHONPATH")
    if pythonpath:
        pythonpath = os.path.expanduser(pythonpath)
        old = env.get("PYTHONPATH")
        env["PYTHONPATH"] = pythonpath + (os.pathsep + old if old else "")
    cwd = os.path.expanduser(req.get("cwd") or "~")
    os.makedirs(runs_dir(), 0o700, exist_ok=True)
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        raise AgentError("exists", "run %s already exists" % run_id) from None
    orphan_s = float(req.get("orphan_s") or ORPHAN_S)
    spec = {"argv": argv, "cwd": cwd, "env": env, "orphan_s": orphan_s}
    write_json(os.path.join(folder, "spec.json"), spec)
    line = start_supervisor(folder)
    info = None
    with contextlib.suppress(ValueError):
        info = json.loads(line.decode("utf-8"))
    if not isinstance(info, dict):
        raise AgentError("os", "the run supervisor failed to start (see %s)" % folder)
    if info.get("error"):
        raise AgentError(info.get("type", "os"), info["error"])
    return {"run_id": run_id, "pid": info["pid"], "pgid": info["pgid"]}


def start_supervisor(folder):
    """Fork the run's supervisor off this agent and return its first line (pid or error).

    A fresh interpreter would cost ~100 ms before the run could start; a fork costs ~1 ms. The
    intermediate child first leaves everything of the agent's behind (its session, the SSH
    channel on fds 0-1, every other descriptor), then :func:`supervise` forks the supervisor
    proper, which is re-parented away from us. Whatever happens in the children, they end in
    ``os._exit``: no copy of the agent ever returns into its request loop.

    What the children need is imported here, before the fork: a forked child must import
    nothing, since a module lock another thread held at that instant (a watch's thread importing
    ctypes, say) stays held in the child for ever, and the run would never start.
    """
    import ctypes.util  # noqa: F401 - for set_subreaper (load_libc) in the child
    import subprocess  # noqa: F401 - for supervise in the child

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            log = os.open(
                os.path.join(folder, "supervisor.log"),
                os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                0o600,
            )
            os.dup2(null, 0)
            os.dup2(write_end, 1)
            os.dup2(log, 2)
            os.closerange(3, max_fd())
            supervise(folder)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as fh:
        line = fh.readline()
    os.waitpid(pid, 0)
    return line


def max_fd():
    try:
        return min(os.sysconf("SC_OPEN_MAX"), 1 << 16)
    except (ValueError, OSError):
        return 1024


def set_subreaper():
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = load_libc()
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans of the run come to us
    except (OSError, AttributeError):
        pass


def supervise(folder):
    """In a child forked by :func:`start_supervisor`: run the spec, record how it ended."""
    import subprocess  # imported by start_supervisor before the fork: only looked up here

    if os.fork() > 0:
        os._exit(0)
    set_subreaper()
    spec = read_json(os.path.join(folder, "spec.json"))
    out = os.fdopen(1, "wb")
    log_fd = os.open(os.path.join(folder, "output.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    started = time.time_ns()
    try:
        child = subprocess.Popen(
            spec["argv"],
            cwd=spec["cwd"],
            env=spec["env"],
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        kind = ERRNO_TYPES.get(exc.errno, "os")
        message = "cannot start %s: %s" % (spec["argv"][0], exc.strerror or exc)
        if exc.filename == spec["cwd"]:
            message = "cannot enter %s: %s" % (spec["cwd"], exc.strerror or exc)
        status = {"exit_code": 127, "signal": None, "duration_s": 0.0, "error": message}
        write_json(os.path.join(folder, "status.json"), status)
        out.write((json.dumps({"error": message, "type": kind}) + "\n").encode("utf-8"))
        out.close()
        os._exit(0)
    os.close(log_fd)
    info = {"pid": child.pid, "pgid": child.pid, "supervisor": os.getpid(), "started_ns": started}
    write_json(os.path.join(folder, "proc.json"), info)
    out.write((json.dumps(info) + "\n").encode("utf-8"))
    out.close()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    watch = Attendance(folder, float(spec.get("orphan_s") or ORPHAN_S), child.pid)
    main_done = False
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid == 0:
            watch.check()
            time.sleep(SUPERVISE_POLL_S)
            continue
        if pid == child.pid and not main_done:
            main_done = True
            code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
            sig = None
            if os.WIFSIGNALED(status):
                num = os.WTERMSIG(status)
                try:
                    sig = signal.Signals(num).name
                except ValueError:
                    sig = str(num)
            ended = time.time_ns()
            result = {"exit_code": code, "signal": sig, "duration_s": (ended - started) / 1e9}
            result.update({"started_ns": started, "ended_ns": ended, "reason": watch.reason()})
            write_json(os.path.join(folder, "status.json"), result)
    os._exit(0)


class Attendance:
    """The supervisor's side of the orphan rule (see exec): is any agent attached to the run?

    Asked of the kernel, not guessed: every attach holds a shared flock on the run's
    ``attached`` file, and a lock dies with the process that held it, so a client killed with
    SIGKILL or a link lost for good frees it at once. Nobody attached for ``orphan_s``: the
    process group gets SIGTERM, then SIGKILL after STOP_GRACE_S.
    """

    def __init__(self, folder, orphan_s, pgid):
        self.folder, self.orphan_s, self.pgid = folder, orphan_s, pgid
        self.fd = os.open(attached_path(folder), os.O_RDONLY | os.O_CREAT, 0o600)
        self.last_seen = time.monotonic()
        self.kill_at = None
        self.orphaned = False

    def attended(self):
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # EWOULDBLOCK: an attach holds it
            return True
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        return False

    def check(self):
        now = time.monotonic()
        if not self.orphaned and self.attended():
            self.last_seen = now
        elif not self.orphaned and now - self.last_seen >= self.orphan_s:
            self.orphaned = True
            self.kill_at = now + STOP_GRACE_S
            self.signal(signal.SIGTERM)
        elif self.kill_at is not None and now >= self.kill_at:
            self.kill_at = None
            self.signal(signal.SIGKILL)

    def signal(self, num):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, num)

    def reason(self):
        if os.path.exists(os.path.join(self.folder, "stop.json")):
            return "stopped"
        return "orphaned" if self.orphaned else "exited"


def attached_path(folder):
    return os.path.join(folder, "attached")


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_alive(pgid):
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def op_kill(req):
    folder = run_dir(req.get("run_id"))
    info = read_json(os.path.join(folder, "proc.json"))
    if not isinstance(info, dict):
        raise AgentError("not_found", "no such run: %s" % req.get("run_id"))
    name = str(req.get("signal", "TERM")).upper().replace("SIG", "")
    if name not in SIGNALS:
        raise AgentError("invalid", "unknown signal %r" % name)
    grace_s = float(req.get("grace_s", 5.0))
    pgid = int(info["pgid"])
    write_json(os.path.join(folder, "stop.json"), {"signal": name})  # the run's end says why
    sent = []
    try:
        os.killpg(pgid, SIGNALS[name])
        sent.append(name)
    except ProcessLookupError:
        return {"signalled": [], "escalated": False, "gone": True}
    deadline = time.monotonic() + (grace_s if name != "KILL" else 2.0)
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.02)
    escalated = False
    if name != "KILL" and group_alive(pgid):
        escalated = True
        try:
            os.killpg(pgid, signal.SIGKILL)
            sent.append("KILL")
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 2.0
        while group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.02)
    return {"signalled": sent, "escalated": escalated, "gone": not group_alive(pgid)}


def run_summary(run_id):
    folder = os.path.join(runs_dir(), run_id)
    info = read_json(os.path.join(folder, "proc.json")) or {}
    status = read_json(os.path.join(folder, "status.json"))
    summary = {"run_id": run_id, "pid": info.get("pid"), "pgid": info.get("pgid")}
    summary["started_ns"] = info.get("started_ns")
    supervisor = info.get("supervisor")
    supervised = bool(supervisor) and alive(int(supervisor))
    grouped = bool(info.get("pgid")) and group_alive(int(info["pgid"]))
    summary["running"] = status is None and (supervised or grouped)
    if status:
        summary.update(status)
    return summary


def op_runs(req):
    try:
        names = sorted(n for n in os.listdir(runs_dir()) if RUN_ID_RE.match(n))
    except FileNotFoundError:
        names = []
    return {"runs": [run_summary(n) for n in names]}


def op_attach(req, emit, stop):
    folder = run_dir(req.get("run_id"))
    if not os.path.isdir(folder):
        raise AgentError("not_found", "no such run: %s" % req.get("run_id"))
    offset = int(req.get("offset", 0))
    flags = os.O_RDONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
    lock = os.open(attached_path(folder), flags, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_SH)  # held while attached: the run is not an orphan
        return follow_run(folder, offset, emit, stop)
    finally:
        os.close(lock)


def follow_run(folder, offset, emit, stop):
    logfile = os.path.join(folder, "output.log")
    while True:
        status = read_json(os.path.join(folder, "status.json"))
        lost = False
        if status is None:
            info = read_json(os.path.join(folder, "proc.json"))
            sup = info.get("supervisor") if isinstance(info, dict) else None
            if sup and not alive(int(sup)):
                status = read_json(os.path.join(folder, "status.json"))
                lost = status is None
        try:
            with open(logfile, "rb") as fh:
                fh.seek(offset)
                while True:
                    data = fh.read(CHUNK)
                    if not data:
                        break
                    offset += len(data)
                    emit({"event": "output", "offset": offset}, data)
        except FileNotFoundError:
            pass
        if status is not None or lost:
            status = status or {}
            return {
                "exit_code": status.get("exit_code"),
                "signal": status.get("signal"),
                "duration_s": status.get("duration_s"),
                "reason": status.get("reason"),
                "error": status.get("error"),
                "offset": offset,
                "lost": lost,
            }
        if stop.wait(0.05):
            return {"cancelled": True, "offset": offset}
