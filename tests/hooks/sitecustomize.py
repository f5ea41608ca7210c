"""Test hook: with LORETTA_DS_TEST_SAVE_DELAY=SECONDS every checkpoint save waits that long between
its data files and its COMPLETE marker, so that a test can kill a run in the middle of a save
(tests/test_reliability_faults.py). Python imports this file at start-up only when this directory
is on PYTHONPATH, which tests/reliability_support.py arranges for the runs that set the delay; the
package itself knows nothing of it. The checkpoint module is patched when it is first imported.
"""
import importlib.abc
import os
import sys
import time

DELAY = os.environ.get("LORETTA_DS_TEST_SAVE_DELAY")
MODULE = "loretta_ds.distributed.checkpoint"


def _slow_down(module) -> None:
    write_marker = module.write_marker

    def write_marker_late(directory, step):
        time.sleep(float(DELAY))
        write_marker(directory, step)

    module.write_marker = write_marker_late


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != MODULE:
            return None
        for finder in sys.meta_path:
            spec = None if finder is self else getattr(finder, "find_spec", lambda *a: None)(name, path, target)
            if spec is not None:
                break
        else:
            return None
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _slow_down(module)

        spec.loader.exec_module = exec_and_patch
        return spec


if DELAY:
    sys.meta_path.insert(0, _PatchOnImport())
