"""Run many short `loretta-ds` command lines without paying the interpreter's start-up for each.

Most bad-input cases end within a second of `main()` starting; what they cost as subprocesses is
Python importing torch, transformers and the commands again for every one (5-10 s each on two
cores). `CliForkServer` starts one interpreter that imports the CLI and the libraries its commands
use, then forks a child per command line. The child is a separate process as a subprocess is: it
takes the case's working directory and environment, its stdout and stderr go to files, it runs the
CLI's entry point (`run_and_exit`) and its exit status is the command's. What it does not redo is
the import of modules that read no per-case state at import time: only the environment that the
server started with reaches import-time code, so a case whose point is an environment variable read
at import belongs in a real subprocess.

    with CliForkServer(env) as server:
        status, stdout, stderr, seconds = server.run(["train", "--model", ...], cwd, env)

Protocol (one JSON object per line): the test writes {"argv", "cwd", "env", "stdout", "stderr"} on
the server's stdin; the server answers {"status", "seconds"} on its own copy of the original stdout
(its fd 1 is /dev/null, so that a library printing at import time cannot corrupt the answers).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# What the commands import once they run: importing it here is what each forked case is spared.
PRELOAD = ("torch", "transformers", "transformers.models.llama.modeling_llama", "safetensors.torch", "yaml",
           "datasets", "loretta_ds.cli", "loretta_ds.commands.train", "loretta_ds.commands.export",
           "loretta_ds.commands.generate", "loretta_ds.commands.estimate", "loretta_ds.commands.count",
           "loretta_ds.commands.plan", "loretta_ds.trainer", "loretta_ds.train_plan", "loretta_ds.models")


def _exit_status(code) -> int:
    """What the interpreter makes of SystemExit(code) (None: 0; an int: itself; else: printed, 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _run_child(request: dict) -> None:
    """In the forked child: become the command line of ``request``; never returns."""
    status = 1
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        sys.argv = ["loretta-ds", *request["argv"]]
        from loretta_ds.cli import run_and_exit

        try:
            run_and_exit()
        except SystemExit as done:
            status = _exit_status(done.code)
    except BaseException:  # as an uncaught exception ends `python -m loretta_ds.cli`: traceback, exit 1
        import traceback

        traceback.print_exc()
        status = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def serve() -> None:
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    answers.write(json.dumps({"ready": True}) + "\n")
    answers.flush()
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _run_child(request)
        _, wait_status = os.waitpid(pid, 0)
        answers.write(json.dumps({"status": os.waitstatus_to_exitcode(wait_status),
                                  "seconds": time.monotonic() - started}) + "\n")
        answers.flush()


class CliForkServer:
    """One preloaded interpreter that runs `loretta-ds` command lines, one forked child each."""

    def __init__(self, env: dict, cwd: Path | None = None):
        self._process = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         env=env, cwd=cwd, text=True)
        ready = self._process.stdout.readline()
        if not ready:
            raise RuntimeError(f"the CLI fork server ended at start-up (exit {self._process.wait()})")
        self._scratch = tempfile.TemporaryDirectory(prefix="cli-forkserver-")
        self._count = 0

    def run(self, argv: list[str], cwd: Path, env: dict) -> tuple[int, str, str, float]:
        """Run ``loretta-ds *argv`` in ``cwd`` with ``env``: (exit status, stdout, stderr, seconds)."""
        self._count += 1
        out = Path(self._scratch.name) / f"{self._count}.out"
        err = Path(self._scratch.name) / f"{self._count}.err"
        request = {"argv": [str(a) for a in argv], "cwd": str(cwd), "env": env, "stdout": str(out),
                   "stderr": str(err)}
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        answer = self._process.stdout.readline()
        if not answer:
            raise RuntimeError(f"the CLI fork server ended during {argv} (exit {self._process.wait()})")
        answer = json.loads(answer)
        return answer["status"], out.read_text(), err.read_text(), answer["seconds"]

    def close(self) -> None:
        if self._process.stdin:
            self._process.stdin.close()
        self._process.wait(timeout=60)
        self._scratch.cleanup()

    def __enter__(self) -> "CliForkServer":
        return self

    def __exit__(self, *_) -> None:
        self.close()


if __name__ == "__main__":
    serve()
