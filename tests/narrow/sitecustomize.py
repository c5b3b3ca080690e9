"""Imported at start-up by Python processes whose PYTHONPATH begins with this folder (conftest.NARROW_ENV):
the test suite's CLI subprocesses that train many trial-epochs. When `alexnet_tiny.model` is imported,
its HIDDEN is set to $NARROW_HIDDEN (conftest's, as the narrow_alexnet fixture sets it in the test
process), so that a subprocess and the test process train the same network. Nothing is imported
until alexnet_tiny.model is."""
import importlib.abc
import importlib.machinery
import os
import sys


class NarrowAlexNet(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "alexnet_tiny.model":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        exec_module = spec.loader.exec_module

        def exec_then_narrow(module):
            exec_module(module)
            module.HIDDEN = int(os.environ["NARROW_HIDDEN"])

        spec.loader.exec_module = exec_then_narrow
        return spec


sys.meta_path.insert(0, NarrowAlexNet())
