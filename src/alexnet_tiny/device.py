"""Device and precision policy, in one place: which device a run uses and what autocast it runs under."""
from __future__ import annotations

import torch

from .errors import UserError

PRECISIONS = ("fp32", "bf16")  # what a run trains in, and its record says
PRECISION_CHOICES = (*PRECISIONS, "auto")  # what a user may ask for (resolve_precision)
LEGACY_PRECISION = "fp32"  # of runs and checkpoints recorded before the precision entry existed
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


def native_bf16(device) -> bool:
    """Whether `device` runs bf16 arithmetic in hardware: a CUDA GPU that supports it, or a CPU with
    AVX512-BF16 or AMX whose PyTorch kernels are not restricted below AVX-512 (ATEN_CPU_CAPABILITY=avx2
    makes such a CPU emulate bf16, slower than fp32)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_bf16_supported()
    hardware = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return hardware and torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def resolve_precision(precision: str, device) -> str:
    """fp32 or bf16 as asked; auto: bf16 where the device runs it natively (native_bf16), else fp32."""
    if precision not in PRECISION_CHOICES:
        raise UserError(f"--precision {precision}: expected one of {', '.join(PRECISION_CHOICES)}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast(device, precision: str):
    """precision bf16: forward and backward under bf16 autocast (GPU tensor cores; AVX512-BF16/AMX
    CPUs); weights, gradients, momenta and the SGD step stay fp32. fp32: no autocast.
    The region spans a whole epoch, so its cache of bf16 weight copies is off: with it, every forward
    after the epoch's first SGD step would use the weights as they were at that step."""
    check_precision(precision)
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16",
                          cache_enabled=False)


def prepare_device(device) -> None:
    """The one policy for how a device runs training, applied by every loop, the grid's estimate and
    the benchmarks alike: on CUDA, cuDNN benchmarks its convolution algorithms once per shape (an epoch
    has two batch shapes, the same every epoch)."""
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True


def free_memory(device) -> int:
    """Bytes a new stack may use: on CUDA, what the driver has free plus what PyTorch's caching
    allocator holds but does not use (mem_get_info counts that cache as taken); on the CPU, the
    available memory."""
    if torch.device(device).type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30  # unknown: assume a modest machine


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
