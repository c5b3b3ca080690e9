"""The main job as a newcomer runs it, timed over seeds: `alexnet-tiny grid --preset quick` from a fresh
folder (prepare, the grid and the report included), once per seed (`--seed S`, added to every trial's
seed), each in its own empty folder, as a real process.

Per seed it prints the wall time, the best trial (chosen on validation), its validation accuracy, its
test accuracy plain and flip-averaged, and its official-val accuracy plain and flip-averaged, all read
from the report's report.json; then the mean +- sd of each over the seeds, and a last line with the
mean wall time and test accuracy.

    python bench/speedrun.py                    # 3 seeds on this CPU as it is
    python bench/speedrun.py --avx2 --seeds 3   # restricted to AVX2: the 2-core laptop case
    python bench/speedrun.py --seeds 1 -- --preset quick --engine single   # arguments after -- go to grid
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
COLUMNS = ("seconds", "val", "test", "test_flip", "official_val", "official_val_flip")


def run_seed(seed: int, folder: Path, grid_args: list[str], env: dict) -> dict:
    """One main job in `folder` (fresh): its wall time and the report's figures of its best trial."""
    folder.mkdir(parents=True)
    command = [sys.executable, "-m", "alexnet_tiny", "grid", *grid_args, "-q", "--seed", str(seed)]
    t0 = time.perf_counter()
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    (folder / "output.txt").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        sys.exit(f"speedrun: seed {seed}: {' '.join(command)} failed ({done.returncode}): "
                 f"{(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    reports = list(folder.glob("runs/*/report/report.json"))
    if len(reports) != 1:
        sys.exit(f"speedrun: seed {seed}: expected one report.json under {folder / 'runs'}, found {len(reports)}")
    report = json.loads(reports[0].read_text())
    best, evaluation = report["best"], report["evaluation"]
    official = evaluation.get("official_val") or {}
    return {"seed": seed, "seconds": seconds, "trial": best["trial"], "epoch": best.get("best_epoch"),
            "val": best["best_val_accuracy"], "test": evaluation["test"]["accuracy"],
            "test_flip": evaluation["test"]["flip_accuracy"], "official_val": official.get("accuracy"),
            "official_val_flip": official.get("flip_accuracy"),
            "last_line": done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""}


def mean_sd(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4g} +- {sd:.2g}"


def main() -> None:
    argv = sys.argv[1:]
    grid_args = ["--preset", "quick"]
    if "--" in argv:
        cut = argv.index("--")
        argv, grid_args = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3, help="how many seeds: 0, 1, ... (default 3)")
    p.add_argument("--first-seed", type=int, default=0, help="the first seed (default 0)")
    p.add_argument("--avx2", action="store_true", help="restrict PyTorch, oneDNN and MKL to AVX2 (a laptop's ISA)")
    p.add_argument("--work", help="folder for the runs (default: a temporary one, removed at the end)")
    p.add_argument("--json", help="also write every seed's figures and their means to this file")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error(f"--seeds {args.seeds}: expected an integer >= 1")
    env = {**os.environ, **(AVX2 if args.avx2 else {})}
    src = Path(__file__).resolve().parents[1] / "src"  # this checkout's package, installed or not
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="alexnet-tiny-speedrun-"))
    import torch  # noqa: E402 - only to say what this machine is
    capability = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                                env=env, capture_output=True, text=True).stdout.strip()
    print(f"speedrun: grid {' '.join(grid_args)}, seeds {args.first_seed}-{args.first_seed + args.seeds - 1}, "
          f"torch {torch.__version__}, CPU capability {capability}, {os.cpu_count()} CPUs, work folder {work}",
          flush=True)
    rows = []
    try:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            row = run_seed(seed, work / f"seed{seed}", grid_args, env)
            rows.append(row)
            print(f"seed {seed}: {row['seconds']:.0f}s  best {row['trial']} (epoch {row['epoch']})  "
                  f"val {row['val']:.3f}  test {row['test']:.3f} (flip {row['test_flip']:.3f})  "
                  f"official-val {row['official_val'] or 0:.3f} (flip {row['official_val_flip'] or 0:.3f})",
                  flush=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    means = {c: mean_sd([r[c] for r in rows]) for c in COLUMNS}
    print("mean +- sd: " + "  ".join(f"{c} {means[c]}" for c in COLUMNS))
    if args.json:
        Path(args.json).write_text(json.dumps({"grid": grid_args, "avx2": args.avx2, "capability": capability,
                                               "runs": rows, "mean_sd": means}, indent=2))
    print(f"speedrun: {len(rows)} seed(s): {means['seconds']} s wall, test {means['test']} "
          f"(flip-averaged {means['test_flip']}), val {means['val']}, official-val {means['official_val']}")


if __name__ == "__main__":
    main()
