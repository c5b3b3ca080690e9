"""Time and peak memory of every command against the number of classes (10, 50, 200 by default).

For each class count C, an archive in the official Tiny ImageNet layout is built from the embedded
archive's real images (class k is base class k % 10 under a transform of its own: one of the 6
channel orders times one of 4 rotations, so up to 240 distinct classes), then each command runs as
a real subprocess, one at a time:

    prepare      alexnet-tiny prepare --source tiny-imagenet-C.zip --classes C
    train        alexnet-tiny train --preset quick --epochs E
    grid-local   alexnet-tiny grid --config scale.toml (quick, E epochs, --grid-trials learning rates)
    grid-ray     the same grid on a local Ray instance, one CPU per trial, trials side by side
    evaluate     alexnet-tiny evaluate train/best.pt --split test
    report       alexnet-tiny report train
    predict      alexnet-tiny predict train/best.pt on 8 official-val images, with Grad-CAM

Each row: wall seconds, the peak RSS of the command's process (from wait4, exact) and, for a command
with child processes (the Ray grid: its local Ray instance and workers), the peak sum of PSS over its
process tree, sampled once a second (PSS splits a page shared by n processes n ways, so the
memory-mapped cache of several Ray workers is counted once). `--src DIR` runs another
checkout's package (its src/ folder), for before-and-after figures in one run. The last line is
`scale: N commands, ... peak ... MB`. Without Ray installed, grid-ray is skipped with a line that says
so (and counted in that line).

    python bench/scale.py                                     # 10, 50, 200 classes, 500 images each
    python bench/scale.py --classes 200 --commands prepare,report --src /tmp/before/src
    python bench/scale.py --classes 200 --train-images 2 --held-out 1 --val-images 1   # small (the test's)
    python bench/scale.py --classes 200 --commands grid-ray --grid-trials 4 --ray-cpus-per-trial 0.5 \
        --ray-time-budget 240          # 4 Ray trials side by side: their memory (run after a prepare)
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ROOT / "src" / "alexnet_tiny" / "assets" / "tiny-imagenet-200-first10.zip"
COMMANDS = ("prepare", "train", "grid-local", "grid-ray", "evaluate", "report", "predict")
VARIANTS = list(itertools.product(itertools.permutations(range(3)), range(4)))  # channel order x quarter turns
BASE_CLASSES = 10


# ----------------------------------------------------------------------------- the archive

def embedded_images(train_images: int, held_out: int, val_images: int) -> tuple[list[str], dict, dict, dict]:
    """(base wnids, their words, {wnid: {file number: JPEG bytes}} of the train/ images kept, official-val
    JPEG bytes by wnid). Kept: numbers 0 to held_out - 1 (the study's val split) and 50 on (its test
    split), held_out of each, and train_images from 100 on (its train split)."""
    numbers = {*range(held_out), *range(50, 50 + held_out), *range(100, 100 + train_images)}
    with zipfile.ZipFile(EMBEDDED) as z:
        names = z.namelist()
        root = min((n for n in names if n.endswith("wnids.txt")), key=len)[:-len("wnids.txt")]
        wnids = sorted(z.read(root + "wnids.txt").decode().split())[:BASE_CLASSES]
        words = {}
        for line in z.read(root + "words.txt").decode().splitlines():
            w, _, text = line.partition("\t")
            if w in wnids:
                words[w] = text
        train: dict[str, dict[int, bytes]] = {w: {} for w in wnids}
        for n in names:
            parts = n[len(root):].split("/")
            if len(parts) == 4 and parts[0] == "train" and parts[1] in train and parts[3].endswith(".JPEG"):
                number = int(parts[3].rsplit("_", 1)[1].split(".")[0])
                if number in numbers:
                    train[parts[1]][number] = z.read(n)
        val = {w: [] for w in wnids}
        for line in z.read(root + "val/val_annotations.txt").decode().splitlines():
            file, w = line.split("\t")[:2]
            if w in val and len(val[w]) < val_images:
                val[w].append(z.read(f"{root}val/images/{file}"))
    return wnids, words, train, val


def transformed(jpeg: bytes, variant: int) -> bytes:
    order, turns = VARIANTS[variant]
    pixels = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))[:, :, list(order)]
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(np.rot90(pixels, turns))).save(out, "JPEG", quality=90)
    return out.getvalue()


def build_archive(path: Path, classes: int, train_images: int, held_out: int, val_images: int) -> Path:
    """tiny-imagenet-<classes>.zip in the official layout (train/<wnid>/images/<wnid>_<n>.JPEG,
    val/images + val_annotations.txt, wnids.txt, words.txt), written under a temporary name."""
    if classes > BASE_CLASSES * len(VARIANTS):
        raise SystemExit(f"--classes {classes}: at most {BASE_CLASSES * len(VARIANTS)} distinct classes")
    base, words, train, val = embedded_images(train_images, held_out, val_images)
    wnids = [f"n{90000000 + k:08d}" for k in range(classes)]
    tmp = path.with_suffix(".part")
    annotations = []
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
        z.writestr("tiny-imagenet-200/wnids.txt", "\n".join(wnids) + "\n")
        z.writestr("tiny-imagenet-200/words.txt", "".join(
            f"{w}\t{words[base[k % BASE_CLASSES]].split(',')[0]} {k // BASE_CLASSES}\n" for k, w in enumerate(wnids)))
        for k, w in enumerate(wnids):
            b, variant = base[k % BASE_CLASSES], k // BASE_CLASSES
            for n, jpeg in sorted(train[b].items()):
                z.writestr(f"tiny-imagenet-200/train/{w}/images/{w}_{n}.JPEG", transformed(jpeg, variant))
            for n, jpeg in enumerate(val[b]):
                name = f"val_{k * val_images + n}.JPEG"
                z.writestr(f"tiny-imagenet-200/val/images/{name}", transformed(jpeg, variant))
                annotations.append(f"{name}\t{w}\t0\t0\t63\t63")
        z.writestr("tiny-imagenet-200/val/val_annotations.txt", "\n".join(annotations) + "\n")
    tmp.replace(path)
    return path


# ----------------------------------------------------------------------------- measuring a command

def tree(pid: int) -> list[int]:
    """pid and its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children.get(p, [])
    return found


def pss_kb(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    match = re.search(r"^Pss:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) if match else 0


def measure(argv: list[str], env: dict, cwd: Path, log: Path, every: float = 1.0) -> dict:
    """Run argv; its wall time, exit status, peak RSS (wait4) and, while it has child processes, the
    peak PSS of its process tree (sampled every `every` seconds; reading PSS walks the page tables,
    so a single process, whose peak RSS wait4 gives exactly, is not sampled)."""
    peak = [0]
    with open(log, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample():
            while not done.wait(every):
                pids = tree(proc.pid)
                if len(pids) > 1:
                    peak[0] = max(peak[0], sum(pss_kb(p) for p in pids))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        done.set()
        sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"seconds": round(seconds, 1), "rc": proc.returncode, "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "peak_tree_pss_mb": round(peak[0] / 1024) if peak[0] else None}


# ----------------------------------------------------------------------------- the commands

def command_lines(classes: int, per_class: int, work: Path, epochs: int, grid_trials: int, ray_cpus: float = 1.0,
                  ray_budget: float | None = None) -> dict[str, list[str]]:
    archive, data, runs = work / f"tiny-imagenet-{classes}-{per_class}.zip", work / f"data-{classes}", work / f"runs-{classes}"
    toml = work / f"scale-{classes}.toml"
    lrs = ", ".join(f"{0.004 * 2 ** i:g}" for i in range(grid_trials))
    toml.write_text(f'preset = "quick"\nepochs = {epochs}\nlr = [{lrs}]\n')
    val_images = sorted((data / "official-val").rglob("*.JPEG"))[:8] if (data / "official-val").exists() else []
    grid = ["grid", "--config", str(toml), "--data", str(data), "--no-report", "-q"]
    return {
        "prepare": ["prepare", "--source", str(archive), "--classes", str(classes), "--out", str(data), "-q"],
        "train": ["train", "--preset", "quick", "--epochs", str(epochs), "--data", str(data), "--out",
                  str(runs / "train"), "-q"],
        "grid-local": [*grid, "--out", str(runs / "grid-local")],
        "grid-ray": [*grid, "--out", str(runs / "grid-ray"), "--backend", "ray", "--cpus-per-trial",
                     f"{ray_cpus:g}", *(["--time-budget", f"{ray_budget:g}"] if ray_budget else [])],
        "evaluate": ["evaluate", str(runs / "train" / "best.pt"), "--data", str(data), "-q"],
        "report": ["report", str(runs / "train"), "--out", str(runs / "report"), "--data", str(data), "-q"],
        "predict": ["predict", str(runs / "train" / "best.pt"), *map(str, val_images), "--cam", str(runs / "cam.png")],
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--classes", type=int, nargs="+", default=[10, 50, 200])
    ap.add_argument("--train-images", type=int, default=400,
                    help="images per class numbered 100 and up, the study's train split (default 400)")
    ap.add_argument("--held-out", type=int, default=50,
                    help="images per class numbered from 0 and from 50, its val and test splits (default 50)")
    ap.add_argument("--val-images", type=int, default=50, help="official-val images per class (default 50)")
    ap.add_argument("--commands", default=",".join(COMMANDS), help=f"comma-separated, from {','.join(COMMANDS)}")
    ap.add_argument("--epochs", type=int, default=1, help="epochs of train and of each grid trial (default 1)")
    ap.add_argument("--grid-trials", type=int, default=2, help="trials in each grid (default 2)")
    ap.add_argument("--ray-cpus-per-trial", type=float, default=1.0,
                    help="grid-ray: CPUs per trial (0.5 puts 4 trials side by side on 2 CPUs; default 1)")
    ap.add_argument("--ray-time-budget", type=float, default=None, metavar="SECONDS",
                    help="grid-ray: stop the grid after this long (Tune stops its trials mid-epoch): its memory "
                         "without its full training time")
    ap.add_argument("--work", default=None, help="folder for archives, data and runs (default $TMPDIR/alexnet-tiny-scale)")
    ap.add_argument("--src", default=str(ROOT / "src"), help="the package's src folder to run (default this checkout's)")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    commands = args.commands.split(",")
    for c in commands:
        if c not in COMMANDS:
            ap.error(f"--commands: {c!r} is not one of {', '.join(COMMANDS)}")
    skipped = []
    if "grid-ray" in commands and importlib.util.find_spec("ray") is None:
        commands.remove("grid-ray")
        skipped.append("grid-ray")
        print("scale: grid-ray skipped: Ray is not installed (pip install 'alexnet-tiny[ray]')", flush=True)
    if not (1 <= args.train_images <= 400 and 1 <= args.held_out <= 50 and 1 <= args.val_images <= 50):
        ap.error("--train-images 1-400, --held-out 1-50 and --val-images 1-50: the embedded archive's 500 "
                 "images and 50 official-val images per class")
    if min(args.classes) < 1 or args.epochs < 1 or args.grid_trials < 1:
        ap.error("--classes, --epochs and --grid-trials: expected integers >= 1")
    work = Path(args.work or Path(os.environ.get("TMPDIR", "/tmp")) / "alexnet-tiny-scale").resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [args.src, os.environ.get("PYTHONPATH")]))}
    per_class = args.train_images + 2 * args.held_out
    print(f"scale: {cpu_name()}, {os.cpu_count()} CPUs; package from {args.src}; {per_class} images per class, "
          f"{args.epochs} epoch(s); work in {work}", flush=True)
    print(f"{'classes':>7} {'command':<11} {'seconds':>8} {'peak RSS MB':>12} {'peak tree PSS MB':>17}", flush=True)
    rows = []
    for classes in args.classes:
        archive = work / f"tiny-imagenet-{classes}-{per_class}.zip"
        if not archive.exists():
            t0 = time.perf_counter()
            build_archive(archive, classes, args.train_images, args.held_out, args.val_images)
            print(f"{classes:>7} {'(archive)':<11} {time.perf_counter() - t0:>8.1f} "
                  f"{archive.stat().st_size / 2**20:>9.0f} MB on disk", flush=True)
        # what this run's commands make is removed first (a --commands run keeps the rest)
        runs = work / f"runs-{classes}"
        made = {"prepare": work / f"data-{classes}", "train": runs / "train", "grid-local": runs / "grid-local",
                "grid-ray": runs / "grid-ray", "report": runs / "report"}
        for command in commands:
            if command in made:
                shutil.rmtree(made[command], ignore_errors=True)
        for command in commands:
            argv = [sys.executable, "-m", "alexnet_tiny", *command_lines(
                classes, per_class, work, args.epochs, args.grid_trials, args.ray_cpus_per_trial,
                args.ray_time_budget)[command]]
            row = {"classes": classes, "command": command,
                   **measure(argv, env, work, work / f"{command}-{classes}.log")}
            rows.append(row)
            print(f"{classes:>7} {command:<11} {row['seconds']:>8.1f} {row['peak_rss_mb']:>12} "
                  f"{row['peak_tree_pss_mb'] or '-':>17}" + (f"  FAILED (exit {row['rc']}; see {command}-{classes}.log)"
                                                      if row["rc"] else ""), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    failed = [r for r in rows if r["rc"]]
    peak = max((max(r["peak_rss_mb"], r["peak_tree_pss_mb"] or 0) for r in rows), default=0)
    print(f"scale: {len(rows)} commands, {len(failed)} failed{f', {len(skipped)} skipped' if skipped else ''}, "
          f"highest peak {peak} MB", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
