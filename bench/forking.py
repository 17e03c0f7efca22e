"""Start N benchmark processes from one launcher, released together (POSIX).

The launcher imports the libraries once and forks: every child is a real, separate
process (its own pid, descriptors, locks and connections), and the benchmark does not
spend minutes starting 128 interpreters before each cell. Each child sets itself up
(``prepare``), says it is ready, waits for the common start, runs, and sends one JSON
line back. The wall time runs from the common start to the last child's answer.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Callable

Prepared = Callable[[], dict[str, Any]]


def run_children(
    count: int, prepare: Callable[[int], Prepared], *, wait_for_go: bool = True
) -> tuple[list[dict[str, Any]], float]:
    """Fork ``count`` children; returns their results and the wall time of the run."""
    go_r, go_w = os.pipe()
    out_r, out_w = os.pipe()
    ready_r, ready_w = os.pipe()
    pids = []
    for index in range(count):
        pid = os.fork()
        if pid == 0:
            os.close(go_w)
            os.close(out_r)
            os.close(ready_r)
            code = 0
            try:
                run = prepare(index)
                os.write(ready_w, b"r")
                os.read(go_r, 1)  # returns when the launcher closes the other end
                result = run()
            except BaseException as exc:
                result = {"crash": f"{type(exc).__name__}: {exc}"[:200]}
                code = 1
            data = (json.dumps(result) + "\n").encode()
            view = memoryview(data)
            while view:  # a large answer may take several writes; results are parsed whole
                view = view[os.write(out_w, view) :]
            os._exit(code)
        pids.append(pid)
    os.close(go_r)
    os.close(out_w)
    os.close(ready_w)
    seen = 0
    while seen < count:
        chunk = os.read(ready_r, count - seen)
        if not chunk:
            break
        seen += len(chunk)
    os.close(ready_r)
    if wait_for_go:
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        sys.stdin.readline()
    start = time.perf_counter()
    os.close(go_w)
    buffers: list[bytes] = []
    while True:
        chunk = os.read(out_r, 1 << 16)
        if not chunk:
            break
        buffers.append(chunk)
    wall = time.perf_counter() - start
    os.close(out_r)
    for pid in pids:
        os.waitpid(pid, 0)
    results = []
    for line in b"".join(buffers).decode().splitlines():
        if line.strip():
            try:
                results.append(json.loads(line))
            except ValueError:
                results.append({"crash": "unreadable answer"})
    results += [{"crash": "no answer"}] * (count - len(results))
    return results, wall


def percentile(values: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) by nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[rank]
