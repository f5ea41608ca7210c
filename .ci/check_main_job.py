"""CI stage 1's verdict on the README's main job beyond its exit status: what a newcomer is promised.

    python .ci/check_main_job.py RUN_DIR LOG

The run in RUN_DIR (runs/demo) must have learned the bundled task from chance (eval accuracy of the
untrained model near 0.5, at least 0.9 at the end, eval loss down tenfold), said so once in its log
(one summary, one report of the partitioned parameters: rank 1 prints nothing of its own), recorded
itself in run_config.json, and left the loss plot and the merged export. Uses the standard library
only: it runs in the runtime-only venv.
"""
import json
import sys
from pathlib import Path


def main(run_dir: str, log: str) -> int:
    run, output = Path(run_dir), Path(log).read_text(errors="replace")
    evals = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r.get("kind") == "eval"]
    config = json.loads((run / "run_config.json").read_text())
    steps = config["train"]["max_steps"]
    problems = []

    def expect(ok: bool, what: str) -> None:
        if not ok:
            problems.append(what)

    expect([r["step"] for r in evals] == list(range(0, steps + 1, config["train"]["eval_every"])),
           f"evaluations at steps {[r['step'] for r in evals]}")
    expect(0.3 <= evals[0]["accuracy"] <= 0.7, f"the untrained model's accuracy {evals[0]['accuracy']} is not chance")
    expect(evals[-1]["accuracy"] >= 0.9, f"final eval accuracy {evals[-1]['accuracy']} < 0.9")
    expect(evals[-1]["loss"] < 0.1 * evals[0]["loss"], f"eval loss {evals[0]['loss']} -> {evals[-1]['loss']}")
    summary = (f"eval accuracy {evals[0]['accuracy']:.3f} (step 0) -> {evals[-1]['accuracy']:.3f} "
               f"(step {steps})")
    expect(output.count(summary) == 1, f"the log does not say once: {summary}")
    expect(output.count(f"finished {steps} steps") == 1 and output.count("parameters: partitioned") == 1,
           "the log repeats rank 0's lines (rank 1 must print nothing of its own)")
    expect(config["model_name"] == "tiny-llama" and config["train"]["dataset"] == [],
           "run_config.json does not record the built-in model and the bundled data")
    expect(config["world_size"] == 2 and config["global_batch"] == 16, "not 2 processes with a global batch of 16")
    expect((run / "loss.png").stat().st_size > 10_000, "loss.png is missing or empty")
    expect((run / "merged" / "model.safetensors").is_file(), "no merged export")
    for problem in problems:
        print(f"main job check FAILED: {problem}", file=sys.stderr)
    if not problems:
        print(f"main job check passed: {summary}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
