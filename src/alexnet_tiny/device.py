"""Device and precision policy, in one place: which device a run uses and what autocast it runs under."""
from __future__ import annotations

import torch

from .errors import UserError

PRECISIONS = ("fp32", "bf16")
MIN_TORCH = (2, 4)  # fused SGD on the CPU (torch.optim.SGD(fused=True), the stacked engine's step) arrived in 2.4


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UserError(f"--device {name}: expected auto, cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision}: expected one of {', '.join(PRECISIONS)}")
    return precision


def autocast(device, precision: str):
    """precision bf16: forward and backward under bf16 autocast (GPU tensor cores; AVX512-BF16/AMX
    CPUs); weights, gradients, momenta and the SGD step stay fp32. fp32: no autocast."""
    check_precision(precision)
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")


def synchronize(device) -> None:
    """Wait for the device's queue (timing on a GPU); nothing to wait for on the CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def require_torch() -> None:
    """Refuse a torch older than MIN_TORCH before any work, in one line (not a traceback mid-training)."""
    version = str(torch.__version__)  # e.g. 2.13.0+cpu; compared as numbers, not as text ("2.13" > "2.4")
    numbers = tuple(int(part) if part.isdigit() else 0 for part in version.split("+")[0].split(".")[:2])
    if numbers < MIN_TORCH:
        floor = ".".join(map(str, MIN_TORCH))
        raise UserError(f"torch {version} is too old: alexnet-tiny needs torch >= {floor} (fused SGD on the CPU); "
                        f"upgrade with: pip install 'torch>={floor}'")
