"""The run directory (OUTPUT_DIR) and everything a run writes there.

    directory.py  the names of OUTPUT_DIR's entries (RunDir) and run_config.json (RunRecord)
    lock.py       one run at a time per directory (an flock held for the run's life)
    metrics.py    metrics.jsonl, TensorBoard, the progress line, the loss plot
    contents.py   whose files a directory holds: the run's own, or a user's (never touched)

Nothing is imported here, so importing one module (e.g. the names) does not pull in the others.
"""
