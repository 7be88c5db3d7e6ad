"""The agent's ``reports`` op: the report folders under each root, with their size, newest
file and display name."""

from __future__ import annotations

import json
import os
import stat

import tempnames
from agent_base import ERRNO_TYPES, O_NOFOLLOW, fs_name, root_of

REPORT_DEPTH = 8
REPORTS_MAX = 20000
CONFIG_JSON_MAX = 1 << 20


def report_summary(path):
    """(newest file mtime_ns, bytes, files) of the tree at ``path``; symlinks not followed."""
    newest = size = files = 0
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=False) and not tempnames.is_temp(entry.name):
                        st = entry.stat(follow_symlinks=False)
                        newest = max(newest, st.st_mtime_ns)
                        size += st.st_size
                        files += 1
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue  # gone or closed while listed: the next listing sees it as it is then
    return newest, size, files


def report_name(path):
    """TT-NN's display name: ``report_name`` in the report's config.json, else ""."""
    try:
        fd = os.open(os.path.join(path, "config.json"), os.O_RDONLY | O_NOFOLLOW)
    except OSError:
        return ""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        data = json.loads(os.read(fd, CONFIG_JSON_MAX).decode("utf-8"))
    except (OSError, ValueError):
        return ""
    finally:
        os.close(fd)
    name = data.get("report_name") if isinstance(data, dict) else None
    return name if isinstance(name, str) else ""


def report_folders(root, markers):
    """Relative paths of the report folders under ``root`` (see the ``reports`` op)."""
    found = []
    stack = [("", 0)]
    while stack and len(found) < REPORTS_MAX:
        rel, depth = stack.pop()
        here = os.path.join(root, rel) if rel else root
        try:
            with os.scandir(here) as it:
                entries = list(it)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            if not rel:
                raise
            continue
        names = {e.name for e in entries if e.is_file(follow_symlinks=False)}
        if rel and (not markers or names.intersection(markers)):
            found.append(rel)
            continue
        if (markers and depth >= REPORT_DEPTH) or (not markers and rel):
            continue
        for e in entries:
            if e.is_dir(follow_symlinks=False) and fs_name(e.name) and "\\" not in e.name:
                stack.append((rel + "/" + e.name if rel else e.name, depth + 1))
    return found


def op_reports(req):
    out = []
    for spec in req["roots"]:
        kind, raw = spec["kind"], spec["path"]
        markers = [m for m in spec.get("markers") or [] if isinstance(m, str)]
        root = root_of({"root": raw})
        item = {"kind": kind, "path": raw, "exists": os.path.isdir(root), "error": None}
        try:
            folders = report_folders(root, markers)
        except OSError as exc:
            kind_of_error = ERRNO_TYPES.get(exc.errno, "os")
            message = "not a folder" if isinstance(exc, NotADirectoryError) else exc.strerror
            item["error"] = {"type": kind_of_error, "message": message or str(exc)}
            out.append(item)
            continue
        reports = []
        for rel in folders:
            full = os.path.join(root, rel)
            newest, size, files = report_summary(full)
            reports.append(
                {
                    "folder": rel,
                    "name": report_name(full),
                    "mtime_ns": newest,
                    "size": size,
                    "files": files,
                }
            )
        item["reports"] = reports
        out.append(item)
    return {"roots": out}
