"""Run a command and sample the resident memory of every process of its tree (the deepspeed launcher's
ranks included) until it ends; write each process's peaks and the peak of their sum.

    python -m benchmarks.rss_sampler --out peaks.json [--interval 0.5] -- deepspeed --num_gpus 2 launch/train.py ...

Per process: peak RSS, and its two parts from /proc/PID/status at that moment's peaks: RssAnon
(memory the process allocated: tensors, Python, libraries' heaps) and RssFile (file pages mapped and
touched: a safetensors file read through mmap counts there, and the kernel can drop those pages
under pressure without writing them anywhere). The exit status is the command's.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import psutil

FIELDS = ("VmRSS", "RssAnon", "RssFile")


def _status_kib(pid: int) -> dict[str, int] | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            values = {}
            for line in handle:
                key, _, rest = line.partition(":")
                if key in FIELDS:
                    values[key] = int(rest.split()[0])
            return values
    except (OSError, ValueError):
        return None


def sample(root: subprocess.Popen, interval: float, limit_gib: float | None = None) -> dict:
    peaks: dict[int, dict] = {}
    peak_total, peak_anon, started, stopped = 0, 0, time.monotonic(), None
    parent = psutil.Process(root.pid)
    while root.poll() is None:
        try:
            tree = [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        total = anon = 0
        for process in tree:
            values = _status_kib(process.pid)
            if not values:
                continue
            total += values.get("VmRSS", 0)
            anon += values.get("RssAnon", 0)
            entry = peaks.setdefault(process.pid, {"cmd": " ".join(_cmdline(process))[:160], **{f: 0 for f in FIELDS}})
            for field in FIELDS:
                if values.get(field, 0) > entry[field]:
                    entry[field] = values[field]
                    entry[f"{field}_at_s"] = round(time.monotonic() - started, 1)
        peak_total, peak_anon = max(peak_total, total), max(peak_anon, anon)
        if limit_gib is not None and anon > limit_gib * 2 ** 20:
            # A shared machine: stop the whole tree before it pushes others' processes out of memory.
            stopped = f"stopped at {anon / 2 ** 20:.2f} GiB of anonymous memory (limit {limit_gib} GiB)"
            for process in reversed(tree):
                try:
                    process.kill()
                except psutil.Error:
                    pass
            break
        time.sleep(interval)
    return {"seconds": round(time.monotonic() - started, 1), "peak_sum_rss_gib": round(peak_total / 2 ** 20, 2),
            "peak_sum_anon_gib": round(peak_anon / 2 ** 20, 2), "stopped": stopped,
            "processes": [{"pid": pid, **{k: (round(v / 2 ** 20, 2) if k in FIELDS else v) for k, v in e.items()}}
                          for pid, e in peaks.items()]}


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--limit_gib", type=float, default=None,
                        help="kill the whole tree when its anonymous memory passes this many GiB")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    root = subprocess.Popen(command)
    result = sample(root, args.interval, args.limit_gib)
    result.update(command=command, returncode=root.wait())
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=1)
    print(f"peak RSS (GiB; sum {result['peak_sum_rss_gib']}, anonymous {result['peak_sum_anon_gib']}"
          f"{'; ' + result['stopped'] if result['stopped'] else ''}): " + ", ".join(
        f"{p['pid']} {p['VmRSS']} (anon {p['RssAnon']}, file {p['RssFile']})" for p in result["processes"]
        if p["VmRSS"] > 0.3), file=sys.stderr)
    return result["returncode"]


if __name__ == "__main__":
    sys.exit(main())
