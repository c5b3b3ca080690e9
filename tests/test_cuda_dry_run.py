"""The CUDA path, run without a GPU: both training drivers, evaluation, resume, the grid's planner and
estimate, and bench/device_checks.py's checks (the GPU machine's first stage) on fake tensors labelled cuda:0 (tests/fake_cuda/harness.py, in a subprocess), in fp32 and
bf16. Values are fake, so this checks devices, dtypes, shapes, layouts and the operations, not numbers;
and it counts host synchronisations and blocking host-to-device copies per training step: a step
after an epoch's first may have none. Planted faults show that the count and the device checks bite."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent / "fake_cuda"
TORCH_LIB = str(Path(torch.__file__).parent / "lib")


@pytest.fixture(scope="module")
def fake_cuda(tmp_path_factory) -> Path:
    """fake_cuda.so, built with torch's own extension builder in a subprocess (loading it here would
    give this process a CUDA device)."""
    missing = [tool for tool in ("g++", "ninja") if shutil.which(tool) is None and
               not (tool == "ninja" and (Path(sys.executable).parent / "ninja").exists())]
    if missing:
        pytest.skip(f"cannot build the fake CUDA device: {', '.join(missing)} not installed (.ci/run installs them)")
    build = tmp_path_factory.mktemp("fake_cuda")
    code = ("from torch.utils.cpp_extension import load; "
            f"load(name='fake_cuda', sources=[{str(HERE / 'fake_cuda.cpp')!r}], build_directory={str(build)!r}, "
            "is_python_module=False, verbose=False)")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return build / "fake_cuda.so"


def dry_run(library: Path, scenario: str, data: Path, out: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [TORCH_LIB, os.environ.get("LD_LIBRARY_PATH")]))}
    args = [sys.executable, str(HERE / "harness.py"), str(library), scenario, str(data), str(out)]
    return subprocess.run(args + (["--plant", fault] if fault else []), capture_output=True, text=True, timeout=600,
                          env=env)


def report(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("scenario, statuses", [("single", ["done"]), ("single-bf16", ["done"]),
                                                ("stacked", ["done"] * 3), ("stacked-bf16", ["done"] * 3),
                                                ("resume", ["done", "done"]), ("planner", [1, 3, True, True]),
                                                ("device-checks", [0, True])])
def test_cuda_path_runs_with_no_host_sync_in_a_step(fake_cuda, small_data, tmp_path, scenario, statuses):
    result = report(dry_run(fake_cuda, scenario, small_data, tmp_path))
    assert result["result"] == statuses
    assert result["steps"] >= 3  # small_data: 192 images, batches of 64
    assert result["inside_steps"] == []  # no .item(), no blocking copy to the device, in any step after the first
    syncs = [e for e in result["outside_steps"] if e["kind"] == "sync"]
    # a bounded few per trial-epoch: its losses, evaluation and checkpoints
    assert len(syncs) <= 12 * result["epochs"] * len(statuses)
    if scenario != "planner":
        assert [e for e in result["outside_steps"] if e["what"].startswith("torch.save")]  # real run folders


@pytest.mark.slow
def test_a_planted_item_in_the_step_loop_is_caught(fake_cuda, small_data, tmp_path):
    result = report(dry_run(fake_cuda, "single", small_data, tmp_path, fault="item"))
    assert result["inside_steps"] and {e["kind"] for e in result["inside_steps"]} == {"sync"}


@pytest.mark.slow
def test_planted_copies_to_the_device_in_a_step_are_caught(fake_cuda, small_data, tmp_path):
    result = report(dry_run(fake_cuda, "stacked", small_data, tmp_path, fault="constants-per-call"))
    copies = [e for e in result["inside_steps"] if e["kind"] == "h2d"]
    assert copies and all(e["what"] == "(3,) torch.float32" for e in copies)  # mean and std, at every step


@pytest.mark.slow
def test_a_planted_cpu_tensor_in_a_cuda_step_is_caught(fake_cuda, small_data, tmp_path):
    proc = dry_run(fake_cuda, "single", small_data, tmp_path, fault="cpu-tensor")
    assert proc.returncode != 0 and "cuda:0 and cpu" in proc.stderr
