"""Run one command as a child process and measure it: wall time and the peak RSS of its process tree.

The tree matters: DuckDB runs in-process, but PyHealth's dask/litdata workers are
separate processes, so the peak is the largest *sum* of resident sizes over the
child and all its descendants, sampled every 50 ms from /proc (psutil). A sample
can miss a spike shorter than the interval; the child's own VmHWM (high-water
mark, exact for one process) is taken too, and the larger of the two is reported.
"""

from __future__ import annotations

import os
import resource
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

INTERVAL_S = 0.05


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages: other helpers share these 2 CPUs."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@dataclass
class Measured:
    command: list[str]
    returncode: int | None
    wall_s: float
    peak_rss_bytes: int
    capped: bool
    cap_s: float | None
    load_before: str
    load_after: str
    stdout: str = ""
    stderr_tail: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def peak_gb(self) -> float:
        return self.peak_rss_bytes / 1e9

    def as_json(self) -> dict:
        return {
            "command": self.command, "returncode": self.returncode, "wall_s": round(self.wall_s, 3),
            "peak_rss_gb": round(self.peak_gb, 3), "capped": self.capped, "cap_s": self.cap_s,
            "loadavg_before": self.load_before, "loadavg_after": self.load_after, **self.extra,
        }


def _tree_rss(root: psutil.Process) -> int:
    total = 0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def _vm_hwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_measured(command: list[str], cwd: Path, env: dict | None = None, cap_s: float | None = None,
                 log_path: Path | None = None, mem_cap_gb: float | None = None) -> Measured:
    """Run `command` in `cwd`; stderr goes to `log_path` (the stage's own logs), stdout is kept.

    With `cap_s`, the whole process group is killed at the cap and the run is
    marked capped: its time is "more than cap_s", never a figure. With
    `mem_cap_gb`, the same when the tree's RSS passes it (the machine is shared:
    a peer must not take the others' memory); `extra["mem_capped"]` says which."""
    load_before = loadavg()
    # CPU seconds (user + sys) of the child and every descendant it waited for: on
    # this shared machine (load 10+ on 2 cores) wall time is inflated by waiting
    # for a CPU, CPU time much less so. One measured run at a time in this process.
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=log,
                            start_new_session=True)
    root = psutil.Process(proc.pid)
    peak = {"tree": 0, "hwm": 0}
    done = threading.Event()
    mem_capped = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak["tree"] = max(peak["tree"], _tree_rss(root))
            peak["hwm"] = max(peak["hwm"], _vm_hwm(proc.pid))
            if mem_cap_gb is not None and peak["tree"] > mem_cap_gb * 1e9 and not mem_capped.is_set():
                mem_capped.set()
                os.killpg(proc.pid, 9)
            done.wait(INTERVAL_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    capped = False
    try:
        stdout, _ = proc.communicate(timeout=cap_s)
    except subprocess.TimeoutExpired:
        capped = True
        os.killpg(proc.pid, 9)  # the child's own session: its workers go with it
        stdout, _ = proc.communicate()
    wall = time.perf_counter() - start
    usage_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (usage_after.ru_utime - usage_before.ru_utime) + (usage_after.ru_stime - usage_before.ru_stime)
    done.set()
    sampler.join()
    if log_path:
        log.close()
    tail = ""
    if log_path and proc.returncode:
        tail = log_path.read_text(errors="replace")[-3000:]
    return Measured(command=[str(c) for c in command], returncode=proc.returncode, wall_s=wall,
                    peak_rss_bytes=max(peak["tree"], peak["hwm"]), capped=capped, cap_s=cap_s,
                    load_before=load_before, load_after=loadavg(), stdout=stdout.decode(errors="replace"),
                    stderr_tail=tail, extra={"mem_capped": mem_capped.is_set(), "mem_cap_gb": mem_cap_gb,
                                                     "cpu_s": round(cpu_s, 3)})
