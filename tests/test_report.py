"""report: figures, tables and index.html from a real (tiny) grid, checked against what training wrote;
missing pieces; the CLI; the page in headless Chromium."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import statistics
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet_tiny import runlog
from alexnet_tiny.config import HYPERPARAMETERS, PRESETS, describe
from alexnet_tiny.errors import UserError
from alexnet_tiny.figures import RIGHT, WRONG
from alexnet_tiny.data import load_dataset
from alexnet_tiny.grid import run_grid
from alexnet_tiny.model import AlexNet
from alexnet_tiny.report import FIGURES, Trial, find_all_trials, load_trial, trial_row, write_report

from conftest import FAST, run_cli

pytestmark = pytest.mark.usefixtures("narrow_alexnet")  # many trial-epochs; the real width is not needed

CHROMIUM = "/usr/bin/chromium"


SECOND = FAST.replace(epochs=1, lr=0.02, momentum=0.5)


@pytest.fixture(scope="module")
def grid_dir(small_data, tmp_path_factory) -> Path:
    """Two real one-epoch trials on the small 3-class set, as `alexnet-tiny grid` writes them; two
    hyperparameters differ (a grid map of 2 x 2 cells, two of them without a trial)."""
    out = tmp_path_factory.mktemp("grid") / "g"
    trials = [FAST.replace(epochs=1, lr=0.01), SECOND]
    run_grid(trials, out, data=small_data, device="cpu", progress=False, log=lambda m: None, estimate=False)
    yield out
    shutil.rmtree(out)  # checkpoints, needed no more


@pytest.fixture(scope="module")
def report(grid_dir):
    logs = []
    out = write_report(grid_dir, progress=False, log=logs.append, device="cpu")
    return out, logs


def test_the_report_lines_of_the_readmes_sample_are_todays(report):
    """The report's lines in README.md's main-job output have the format of what the report logs today."""
    from test_docs import README_JOB, ROOT, output_block, output_shape
    sample = [line for line in output_block(ROOT / "README.md", README_JOB) if line.startswith("report: ")]
    assert len(sample) == 2
    assert {output_shape(line) for line in sample} <= {output_shape(line) for line in report[1]}


def metrics_from_jsonl(run: Path) -> dict:
    """The row the table should hold, computed here from metrics.jsonl (not from TensorBoard)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    best = max(rows, key=lambda r: r["val_accuracy"])  # first epoch reaching the maximum
    return {"best_val_accuracy": best["val_accuracy"], "best_epoch": best["epoch"],
            "test_accuracy_at_best": best["test_accuracy"], "final_train_loss": rows[-1]["train_loss"],
            "epochs_done": len(rows)}


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def clone(src: Path, dst: Path, skip=lambda p: False) -> Path:
    """Copy a runs folder with hard links (checkpoints are hundreds of MB), leaving out `skip` files."""
    for path in src.rglob("*"):
        if path.is_file() and not skip(path) and "report" not in path.relative_to(src).parts:
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)
    return dst


def pixels_of(im: Image.Image, colour: str) -> int:
    rgb = np.asarray(im.convert("RGB")).reshape(-1, 3)
    return int((rgb == [int(colour[i:i + 2], 16) for i in (1, 3, 5)]).all(1).sum())


def test_every_figure_is_a_real_png_on_the_page(report):
    out, _ = report
    page = (out / "index.html").read_text()
    for key, name in FIGURES.items():
        with Image.open(out / name) as im:
            assert im.format == "PNG", name
            assert 400 <= im.width <= 4000 and 150 <= im.height <= 4000, (name, im.size)
            assert len(im.convert("RGB").getcolors(1 << 24)) > 16, name  # drawn, not blank
        shown = f'<a href="{name}">' if key == "table" else f'<img src="{name}" alt="'  # the table is HTML there
        assert shown in page, name
    for name in ("results.csv", "results.md", "report.json"):
        assert (out / name).stat().st_size > 0


def test_sample_captions_are_green_when_right_and_red_when_wrong(report):
    out, _ = report
    samples = json.loads((out / "report.json").read_text())["evaluation"]["samples"]
    right = sum(s["true"] == s["predicted"] for s in samples)
    with Image.open(out / FIGURES["samples"]) as im:
        assert (pixels_of(im, RIGHT) > 0, pixels_of(im, WRONG) > 0) == (right > 0, right < len(samples))


def test_table_equals_the_runs_metrics(report, grid_dir):
    out, _ = report
    rows = read_csv(out / "results.csv")
    grid_trials = [t["name"] for t in json.loads((grid_dir / "grid.json").read_text())["trials"]]
    assert [r["trial"] for r in rows] == grid_trials
    for row in rows:
        run = grid_dir / row["trial"]
        expected = metrics_from_jsonl(run)
        for key, value in expected.items():
            # TensorBoard stores float32: equal to about 7 digits
            assert float(row[key]) == pytest.approx(value, rel=1e-6, abs=1e-7), (row["trial"], key)
        config = json.loads((run / "config.json").read_text())["config"]
        for h in HYPERPARAMETERS:
            assert row[h] == str(config[h]), (row["trial"], h)
        assert row["status"] == "done"
    best_val = {r["trial"]: metrics_from_jsonl(grid_dir / r["trial"])["best_val_accuracy"] for r in rows}
    expected_best = max(grid_trials, key=best_val.get)  # validation only; ties go to the earlier trial
    assert [r["trial"] for r in rows if r["best"]] == [expected_best]
    md = (out / "results.md").read_text().splitlines()
    assert len(md) == 2 + len(rows)
    assert [i for i, line in enumerate(md[2:]) if "**best**" in line] == [grid_trials.index(expected_best)]


def test_the_best_epoch_is_the_one_best_pt_holds(grid_dir):
    """A run whose latest epoch is logged but not yet checkpointed (the stacked engine writes
    checkpoints every few minutes) has no best on disk: the report says so, as results.csv does,
    instead of naming an epoch from the TensorBoard scalars whose weights best.pt does not hold."""
    name = json.loads((grid_dir / "grid.json").read_text())["trials"][0]["name"]
    trial = load_trial(Trial(name, grid_dir / name), [])
    assert trial.scalars["val_accuracy"]  # the epoch is logged
    row = trial_row(trial)
    assert (row["best_epoch"], row["best_val_accuracy"]) == (1, trial.record["best_val_accuracy"])
    trial.record = {**trial.record, "status": runlog.STATUS_RUNNING, "epochs_done": 0, "best_epoch": None,
                    "best_val_accuracy": None, "test_accuracy_at_best": None}
    row = trial_row(trial)
    assert (row["best_epoch"], row["best_val_accuracy"], row["status"]) == (None, None, "running")


def test_best_checkpoint_evaluation(report, grid_dir, small_data):
    out, _ = report
    rep = json.loads((out / "report.json").read_text())
    best = rep["best"]["trial"]
    ev = rep["evaluation"]
    # best.pt through a plain AlexNet, here: 64 px images need no resize, only ImageNet's normalisation
    ckpt = torch.load(grid_dir / best / "best.pt", map_location="cpu", weights_only=True)
    model = AlexNet(3, hidden=ckpt["model"]["classifier.1.weight"].shape[0])
    model.load_state_dict(ckpt["model"])
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    dataset = load_dataset(small_data, progress=False)
    for split, key in (("test", "test"), ("official-val", "official_val")):
        images, labels = dataset.splits[split].images, dataset.splits[split].labels
        with torch.no_grad():
            predicted = model.eval()((images.float() / 255 - mean) / std).argmax(1)
        confusion = torch.zeros(3, 3, dtype=torch.long).index_put_((labels, predicted), torch.tensor(1), accumulate=True)
        assert ev[key]["images"] == len(labels)
        assert ev[key]["accuracy"] == pytest.approx((predicted == labels).float().mean().item())
        if split == "test":
            assert ev["test"]["confusion"] == confusion.tolist()
            assert [c["accuracy"] for c in ev["test"]["per_class"]] == pytest.approx(
                (confusion.diag() / confusion.sum(1)).tolist())
    # and as the training loop measured it at the best epoch
    assert ev["test"]["accuracy"] == pytest.approx(rep["best"]["test_accuracy_at_best"], abs=1e-6)
    names = [c["name"] for c in ev["test"]["per_class"]]
    assert names == ["colour0", "colour1", "colour2"]  # class names from words.txt, not wnids
    assert len(ev["samples"]) == 24
    assert all(s["file"].startswith("test/") for s in ev["samples"])


def test_what_the_network_learned_as_numbers(report, grid_dir, small_data):
    """report.json's top-5, nearest neighbours, Grad-CAM and kernels entries, checked against the
    checkpoint and the prepared data."""
    from alexnet_tiny.evaluate import SavedModel
    out, _ = report
    rep = json.loads((out / "report.json").read_text())
    ev, best = rep["evaluation"], rep["best"]["trial"]
    dataset = load_dataset(small_data, progress=False)
    test, names = dataset.splits["test"], dataset.names
    saved = SavedModel(grid_dir / best / "best.pt")
    index = {f: i for i, f in enumerate(test.files)}
    assert len(ev["top5"]) == 8 and len({t["file"] for t in ev["top5"]}) == 8
    probabilities = saved.logits(test.images[[index[t["file"]] for t in ev["top5"]]]).softmax(1)
    for t, p in zip(ev["top5"], probabilities):
        assert t["true"] == names[test.labels[index[t["file"]]]]
        assert t["classes"] == [names[k] for k in p.argsort(descending=True)[:3].tolist()]  # 3 classes: top 3
        assert t["probabilities"] == pytest.approx(sorted(p.tolist(), reverse=True), abs=1e-5)
    right = [t["classes"][0] == t["true"] for t in ev["top5"]]
    assert right == sorted(right, reverse=True)  # right ones first, then wrong
    assert len(ev["neighbours"]) == 6 and all(len(q["neighbours"]) == 6 for q in ev["neighbours"])
    for q in ev["neighbours"]:
        distances = [n["distance"] for n in q["neighbours"]]
        assert distances == sorted(distances) and distances[0] > 0  # test images are not in the training set
        assert all(n["file"].startswith("train/") for n in q["neighbours"])
    assert len(ev["cam"]) == 8 and all(0 <= c["peak"][0] < 64 and 0 <= c["peak"][1] < 64 for c in ev["cam"])
    assert rep["kernels"] == {"best": best, "compared_with": next(t for t in (r["trial"] for r in rep["trials"])
                                                                  if t != best), "change": True}
    gm = rep["grid_map"]
    assert (gm["x"], gm["y"], gm["panel"]) == ("lr", "momentum", None)
    cells = {(x, y): v for p in gm["panels"] for y, row in zip(p["y"], p["values"]) for x, v in zip(p["x"], row)}
    for row in rep["trials"]:
        assert cells.pop((row["lr"], row["momentum"])) == row["best_val_accuracy"]
    assert set(cells.values()) == {None}  # the two pairs no trial had


def test_grid_map_of_the_seed_grid_is_lr_by_momentum_per_gamma():
    """The seed grid's 12 trials (3 lr x 2 momentum x 2 gamma, each over two seeds here): lr across,
    momentum down, a panel per gamma, each cell the best of its seeds; unfinished trials left out."""
    from alexnet_tiny.grid import grid_trials
    from alexnet_tiny.results import grid_map
    rows = []
    for c in grid_trials("seed")[1]:
        for seed in (0, 1):
            value = c.lr * 10 + c.momentum + c.gamma + seed / 100  # any value telling the cells apart
            rows.append({**c.replace(seed=seed).to_dict(), "status": "running" if c.lr == 0.001 and seed else "done",
                         "best_val_accuracy": value})
    gm = grid_map(rows)
    assert (gm["x"], gm["y"], gm["panel"]) == ("lr", "momentum", "gamma")
    assert [p["title"] for p in gm["panels"]] == ["gamma = 0.01", "gamma = 0.1"]
    for p in gm["panels"]:
        gamma = float(p["title"].split(" = ")[1])
        assert p["x"] == [0.0001, 0.001, 0.005] and p["y"] == [0.5, 0.9]
        for m, row in zip(p["y"], p["values"]):
            # the best seed (1) counts, except where it has not finished (lr 0.001): seed 0 there
            assert row == [pytest.approx(lr * 10 + m + gamma + (0 if lr == 0.001 else 0.01)) for lr in p["x"]]
    assert grid_map([r for r in rows if r["lr"] == 0.005 and r["gamma"] == 0.1]) is None  # one varies: no map


def test_page_shows_everything(report, grid_dir):
    out, logs = report
    page = (out / "index.html").read_text()
    for key, name in FIGURES.items():
        assert (f'href="{name}"' if key == "table" else f'src="{name}"') in page
    assert "Missing" not in page and not any("missing" in m for m in logs)
    rows = read_csv(out / "results.csv")
    for row in rows:
        assert f"{float(row['best_val_accuracy']):.4f}" in page
    assert "official-val" in page and "Hyperparameters" in page
    # every link on the page is relative and exists beside it
    for target in re.findall(r'(?:src|href)="([^"]+)"', page):
        assert not target.startswith(("/", "http", "file:")) and (out / target).exists(), target


@pytest.mark.slow
def test_samples_follow_the_seed(grid_dir, report, tmp_path):
    """Also: what a report killed inside a figure's write left in its folder goes at the next report."""
    first = json.loads((report[0] / "report.json").read_text())["evaluation"]["samples"]
    (tmp_path / "r").mkdir()
    leftover = tmp_path / "r" / f".{FIGURES['top5']}.tmp-999999"
    leftover.write_bytes(b"half a PNG")
    out = write_report(grid_dir, out=tmp_path / "r", samples=5, seed=1, progress=False, log=lambda m: None,
                       device="cpu")
    assert not leftover.exists() and not list(out.glob(".*.tmp-*")) and not list(tmp_path.glob(".*.lock"))
    again = json.loads((out / "report.json").read_text())["evaluation"]["samples"]
    assert len(again) == 5 and [s["file"] for s in again] != [s["file"] for s in first[:5]]
    with Image.open(out / FIGURES["samples"]) as im:
        assert im.width >= 5 * 150  # 64 px images drawn well above their size


def test_single_run_folder(grid_dir, tmp_path):
    run = clone(grid_dir / json.loads((grid_dir / "grid.json").read_text())["trials"][0]["name"], tmp_path / "run")
    out = write_report(run, samples=0, progress=False, log=lambda m: None, device="cpu")
    assert out == run / "report"
    rows = read_csv(out / "results.csv")
    assert [r["trial"] for r in rows] == ["run"] and rows[0]["best"]
    assert not (out / FIGURES["samples"]).exists()  # --samples 0


@pytest.fixture(scope="module")
def second_seed(small_data, tmp_path_factory) -> Path:
    """Another grid folder: the first trial of grid_dir again, with seed 1."""
    out = tmp_path_factory.mktemp("grid") / "seed1"
    run_grid([FAST.replace(epochs=1, lr=0.01, seed=1)], out, data=small_data, device="cpu", progress=False,
             log=lambda m: None, estimate=False)
    yield out
    shutil.rmtree(out)


def test_several_folders_summarise_configurations_over_seeds(grid_dir, second_seed, tmp_path):
    out = write_report([grid_dir, second_seed], out=tmp_path / "r", samples=0, progress=False, log=lambda m: None,
                       device="cpu")
    rep = json.loads((out / "report.json").read_text())
    assert len(rep["trials"]) == 3
    first = FAST.replace(epochs=1, lr=0.01)
    runs = {0.01: [grid_dir / first.name(), second_seed / first.replace(seed=1).name()],
            0.02: [grid_dir / SECOND.name()]}
    groups = {g["config"]["lr"]: g for g in rep["configurations"]}
    assert set(groups) == set(runs)
    for lr, folders in runs.items():
        g = groups[lr]
        assert g["label"] == describe((first if lr == 0.01 else SECOND).to_dict())
        assert [r["seed"] for r in g["runs"]] == [0, 1][:len(folders)]
        tests = [metrics_from_jsonl(f)["test_accuracy_at_best"] for f in folders]
        minutes = [sum(r["epoch_seconds"] for r in runlog.read_metrics(f)) / 60 for f in folders]
        assert g["test_accuracy_at_best"]["mean"] == pytest.approx(statistics.fmean(tests), abs=1e-6)
        assert g["minutes"]["mean"] == pytest.approx(statistics.fmean(minutes), abs=0.1 / 60)
        if len(folders) > 1:
            assert g["test_accuracy_at_best"]["sd"] == pytest.approx(statistics.stdev(tests), abs=1e-6)
        else:
            assert g["test_accuracy_at_best"]["sd"] is None
    page = (out / "index.html").read_text()
    assert "Configurations over seeds" in page and f'src="{FIGURES["accuracy_vs_minutes"]}"' in page
    for g in rep["configurations"]:
        assert f">{g['label']}</td>" in page
    with Image.open(out / FIGURES["accuracy_vs_minutes"]) as im:
        assert im.format == "PNG" and im.width >= 800

    with pytest.raises(UserError, match="pass --out"):
        write_report([grid_dir, second_seed], progress=False, log=lambda m: None)
    names = [t.name for t in find_all_trials([grid_dir, clone(grid_dir, tmp_path / "again")])]
    assert len(set(names)) == 4 and sum(n.startswith("again/") for n in names) == 2


def test_runs_recorded_before_a_hyperparameter_existed_take_its_default(grid_dir, tmp_path):
    """A config.json without dropout and init (written before they existed) is the same configuration
    as one with their defaults: one group, no column for them."""
    first = json.loads((grid_dir / "grid.json").read_text())["trials"][0]["name"]
    new, old = clone(grid_dir / first, tmp_path / "new"), clone(grid_dir / first, tmp_path / "old")
    record = json.loads((old / "config.json").read_text())
    for key in ("dropout", "init"):
        del record["config"][key]
    (old / "config.json").unlink()  # a hard link: replace it, do not write through to the fixture's file
    (old / "config.json").write_text(json.dumps(record))
    out = write_report([new, old], out=tmp_path / "r", samples=0, progress=False, log=lambda m: None, device="cpu")
    rep = json.loads((out / "report.json").read_text())
    assert len(rep["configurations"]) == 1 and len(rep["configurations"][0]["runs"]) == 2
    assert rep["trials"][1]["dropout"] == 0.5 and rep["trials"][1]["init"] == "torch"
    assert rep["grid_map"] is None


def test_one_configuration_over_one_seed_draws_no_comparison(grid_dir, tmp_path):
    run = clone(grid_dir / json.loads((grid_dir / "grid.json").read_text())["trials"][0]["name"], tmp_path / "run")
    out = write_report(run, samples=0, progress=False, log=lambda m: None, device="cpu")
    assert not (out / FIGURES["accuracy_vs_minutes"]).exists()
    assert "Configurations over seeds" not in (out / "index.html").read_text()


def test_configurations_are_named_by_their_nearest_preset():
    recipe = PRESETS["recipe-cpu"]
    assert describe(recipe.replace(seed=4).to_dict()) == "recipe-cpu"
    assert describe(recipe.replace(image_size=64, init="torch").to_dict()) == "recipe-cpu, image_size=64, init=torch"
    assert describe(PRESETS["seed"].replace(lr=0.005, nesterov=True).to_dict()) == "seed, lr=0.005, nesterov=true"


def test_missing_runs_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        write_report(tmp_path / "nowhere", progress=False, log=lambda m: None)


def test_empty_runs_folder_still_renders(tmp_path):
    (tmp_path / "runs").mkdir()
    logs = []
    out = write_report(tmp_path / "runs", progress=False, log=logs.append)
    page = (out / "index.html").read_text()
    assert "no trials found" in page and any("no trials found" in m for m in logs)
    assert (out / FIGURES["table"]).exists() and read_csv(out / "results.csv") == []


def test_trial_without_event_file(grid_dir, tmp_path):
    rows = read_csv(next(grid_dir.glob("results.csv")))
    gone = rows[0]["trial"]
    runs = clone(grid_dir, tmp_path / "runs",
                 skip=lambda p: p.parent.name == gone and p.name.startswith("events.out.tfevents"))
    logs = []
    out = write_report(runs, samples=4, progress=False, log=logs.append, device="cpu")
    message = f"trial {gone}: no TensorBoard event file"
    assert message in (out / "index.html").read_text() and any(message in m for m in logs)
    table = {r["trial"]: r for r in read_csv(out / "results.csv")}
    # its results are config.json's, as in the grid's results.csv; only its curves are gone
    assert {k: v for k, v in table[gone].items() if k != "best"} == rows[0]
    for name in FIGURES.values():
        assert (out / name).exists(), name


def test_missing_checkpoint_and_dataset(grid_dir, tmp_path):
    runs = clone(grid_dir, tmp_path / "runs", skip=lambda p: p.name == runlog.BEST_CKPT)
    logs = []
    out = write_report(runs, progress=False, log=logs.append, device="cpu")
    page = (out / "index.html").read_text()
    assert "no best.pt" in page and any("no best.pt" in m for m in logs)
    assert (out / FIGURES["table"]).exists() and (out / FIGURES["curves"]).exists()
    for key in ("per_class", "confusion", "samples", "kernels", "top5", "neighbours", "cam"):
        assert not (out / FIGURES[key]).exists() and f'src="{FIGURES[key]}"' not in page
    assert (out / FIGURES["grid_map"]).exists()  # from the event files alone
    assert "not available" in page

    # with the checkpoints back but the recorded dataset gone
    runs = clone(grid_dir, tmp_path / "runs2")
    for config in runs.glob("*/config.json"):
        record = json.loads(config.read_text())
        record["dataset"]["root"] = str(tmp_path / "moved")
        config.unlink()  # a hard link: replace it, do not write through to the fixture's file
        config.write_text(json.dumps(record))
    out = write_report(runs, progress=False, log=lambda m: None, device="cpu")
    assert "pass --data" in (out / "index.html").read_text()


@pytest.mark.slow
def test_cli(grid_dir, tmp_path):
    proc = run_cli("report", grid_dir, "--out", tmp_path / "rep", "--samples", "6", "--seed", "3", "-q",
                   "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith(f"report {tmp_path / 'rep' / 'index.html'}: 2 trial(s); best ") and "official-val" in last
    assert len(json.loads((tmp_path / "rep" / "report.json").read_text())["evaluation"]["samples"]) == 6

    proc = run_cli("report", tmp_path / "nowhere")
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"alexnet-tiny report: error: {tmp_path / 'nowhere'}: runs folder does not exist " \
                                  f"(expected a grid folder or a run folder)"


# ----------------------------------------------------------------------------- the page in a browser

CHECK_SCRIPT = """<script>
window.addEventListener("load", () => {
  const imgs = [...document.images].map(i => ({src: i.getAttribute("src"), ok: i.complete && i.naturalWidth > 0}));
  const pre = document.createElement("pre"); pre.id = "img-check"; pre.textContent = JSON.stringify(imgs);
  document.body.appendChild(pre);
});
</script>"""


def chromium(*args, user_data: Path) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={user_data}"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_page_in_headless_chromium(report, tmp_path):
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing (CI installs Debian's chromium package)")
        pytest.skip(f"{CHROMIUM} not installed")
    out, _ = report
    # a copy of the page beside it with a script that records, after load, whether each image decoded
    page = (out / "index.html").read_text()
    check = out / "_browser_check.html"
    check.write_text(page.replace("</body>", CHECK_SCRIPT + "</body>"))
    try:
        proc = chromium("--virtual-time-budget=10000", "--dump-dom", check.as_uri(), user_data=tmp_path / "profile")
    finally:
        check.unlink()
    found = re.search(r'<pre id="img-check">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"no check output from chromium:\n{proc.stderr[-2000:]}"
    images = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert {i["src"] for i in images} == set(FIGURES.values()) - {FIGURES["table"]}
    assert all(i["ok"] for i in images), images
    dom = proc.stdout
    for heading in ("What the grid taught", "What the network learned", "First-layer kernels", "Top-5 predictions",
                    "Nearest neighbours in feature space", "Class-activation maps", "The grid as a picture"):
        assert f">{heading}</h" in dom, heading
    assert not re.search(r"<img(?![^>]*\balt=\"[^\"]{12,})", dom)  # every figure has alt text
    conclusions = re.search(r'<ul id="conclusions">(.*?)</ul>', dom, re.S).group(1)
    findings = json.loads((out / "report.json").read_text())["findings"]
    assert conclusions.count("<li>") == len(findings["conclusions"]) >= 3
    intervals = re.search(r'<table id="intervals">(.*?)</table>', dom, re.S).group(1)
    assert intervals.count("<tr") == 1 + len(findings["intervals"])
    per_class = re.search(r'<table id="per-class">(.*?)</table>', dom, re.S).group(1)
    assert per_class.count("<tr>") == 4 and all(f">colour{k}<" in per_class for k in range(3))
    confusion = re.search(r'<table id="confusion">(.*?)</table>', dom, re.S).group(1)
    ev = json.loads((out / "report.json").read_text())["evaluation"]
    cells = [int(c) for c in re.findall(r"<td(?: class=\"?diag\"?)?>(\d+)</td>", confusion)]
    assert cells == [c for row in ev["test"]["confusion"] for c in row]

    # the README's picture of the page is made by the same script
    import sys
    sys.path.insert(0, str(Path(__file__).parents[1] / "docs"))
    from screenshot import screenshot
    shot = screenshot(out / "index.html", tmp_path / "page.png", tmp_path / "profile")
    with Image.open(shot) as im:
        assert im.width == 1280 and im.height > 3000  # the whole page, not one window
        colours = im.convert("RGB").resize((64, 320)).getcolors(64 * 320)
        assert len(colours) > 50  # not a blank page


def test_a_bf16_trial_is_evaluated_in_bf16(grid_dir, small_data, tmp_path):
    """The best checkpoint is evaluated in the precision it was trained and selected in (recorded in
    it), and the page says which: here a real run's best.pt marked as a bf16 trial's."""
    import torch
    from alexnet_tiny.checkpoint import load_checkpoint, model_from_checkpoint
    from alexnet_tiny.evaluate import evaluate
    runs = clone(grid_dir, tmp_path / "g", skip=lambda p: p.name == runlog.BEST_CKPT)
    for trial in grid_dir.iterdir():
        if (trial / runlog.BEST_CKPT).exists():
            ckpt = load_checkpoint(trial / runlog.BEST_CKPT)
            torch.save({**ckpt, "precision": "bf16"}, runs / trial.name / runlog.BEST_CKPT)
    out = write_report(runs, progress=False, log=lambda m: None, device="cpu")
    report = json.loads((out / "report.json").read_text())
    ev = report["evaluation"]
    assert ev["precision"] == "bf16"
    ckpt = load_checkpoint(ev["checkpoint"])
    test = load_dataset(small_data, progress=False).splits["test"]
    bf16, fp32 = (evaluate(model_from_checkpoint(ckpt), test, ckpt["preprocessing"]["image_size"], "cpu", 3, p)
                  for p in ("bf16", "fp32"))
    assert ev["test"]["loss"] == pytest.approx(bf16.loss, rel=1e-9)
    assert bf16.loss != fp32.loss  # bf16 really rounds differently, so the check above can tell them apart
    assert "evaluated in <b>bf16</b>" in (out / "index.html").read_text()


def test_right_and_wrong_are_decided_by_class_not_by_name(grid_dir, small_data, tmp_path):
    """Two classes with one name (words.txt's first names can repeat): whether a prediction or a
    neighbour is right comes from the class index, never from comparing names."""
    data = Path(shutil.copytree(small_data, tmp_path / "data"))
    meta = json.loads((data / "dataset.json").read_text())
    (data / "dataset.json").write_text(json.dumps({**meta, "names": ["twin", "twin", meta["names"][2]]}))
    out = write_report(grid_dir, out=tmp_path / "r", data=data, samples=12, progress=False, log=lambda m: None,
                       device="cpu")
    ev = json.loads((out / "report.json").read_text())["evaluation"]
    wnid = lambda f: f.split("/")[1]  # noqa: E731 - <split>/<wnid>/<file>
    for q in ev["neighbours"]:
        assert [n["same_class"] for n in q["neighbours"]] == [wnid(n["file"]) == wnid(q["file"]) for n in q["neighbours"]]
    for t in ev["top5"]:
        assert meta["wnids"][t["true_index"]] == wnid(t["file"]) and len(t["indices"]) == 3
    for c in ev["cam"]:
        assert isinstance(c["right"], bool)


def test_the_same_configuration_in_two_folders_draws_two_curves(grid_dir, tmp_path):
    from alexnet_tiny.report import load_trial, trial_labels
    copy = clone(grid_dir, tmp_path / "again")
    trials = [load_trial(t, []) for t in find_all_trials([grid_dir, copy])]
    labels = trial_labels(trials)
    assert len(set(labels.values())) == len(trials) == 4  # no two curves share a key
    out = write_report([grid_dir, copy], out=tmp_path / "r", samples=0, progress=False, log=lambda m: None)
    assert (out / FIGURES["curves"]).exists()


def test_report_out_that_is_a_runs_folder_is_refused(grid_dir):
    before = (grid_dir / "results.csv").read_text()
    with pytest.raises(UserError, match="is a runs folder of the report"):
        write_report(grid_dir, out=grid_dir, progress=False, log=lambda m: None)
    assert (grid_dir / "results.csv").read_text() == before


# ----------------------------------------------------------------------------- many classes

def test_many_classes_make_figures_and_tables_a_person_can_read(tmp_path):
    """At 200 classes (the full Tiny ImageNet): no figure past 4,000 px, the extremes and the most
    confused pairs named, tables of pairs and sorted classes instead of a 200 x 200 grid."""
    from alexnet_tiny import figures
    from alexnet_tiny.page import _confusion_html, _per_class_html
    k = 200
    confusion = np.diag(np.random.default_rng(0).integers(5, 50, k))
    confusion[3, 7], confusion[10, 2], confusion[150, 151] = 40, 30, 20  # the planted confusions
    names = [f"class{i}" for i in range(k)]
    accuracies = (confusion.diagonal() / confusion.sum(1)).tolist()
    counts = confusion.sum(1).tolist()
    drawn = [figures.per_class_accuracy(names, accuracies, counts, 0.5, "per class", tmp_path / "pc.png"),
             figures.confusion_matrix(confusion, names, "confusion", tmp_path / "cm.png")]
    for path in drawn:
        with Image.open(path) as im:
            assert max(im.size) <= 4000, (path.name, im.size)
    assert figures.most_confused(confusion)[:3] == [(3, 7, 40), (10, 2, 30), (150, 151, 20)]
    shown = figures.shown_classes(accuracies)
    ranked = sorted(range(k), key=lambda i: accuracies[i])
    assert shown == ranked[:15] + ranked[-15:]
    ev = {"names": names, "test": {"confusion": confusion.tolist(), "per_class": [
        {"name": n, "wnid": f"n{i:08d}", "accuracy": a, "images": c} for i, (n, a, c) in enumerate(zip(names, accuracies, counts))]}}
    pairs = _confusion_html(ev)
    assert 'id="confusion"' not in pairs and pairs.count("<tr>") == 1 + 3  # the header and the three pairs
    assert re.search(r"<td class=\"l\">class3</td><td class=\"l\">class7</td><td>40</td>", pairs)
    table = _per_class_html(ev)
    listed = re.findall(r"<tr><td>(\d+)</td><td class=\"l\">(class\d+)</td>", table)
    assert [name for _, name in listed] == [names[i] for i in ranked] and listed[0][0] == "1"


def test_each_image_and_its_mirror_go_through_the_network_once(grid_dir, small_data, monkeypatch):
    """The report's evaluation of the best checkpoint, counted: the model it builds sees each test and
    official-val image twice (plain and mirrored, one pass each), plus the Grad-CAM images, nothing more."""
    import importlib
    evaluate_module = importlib.import_module("alexnet_tiny.evaluate")  # the module (the package exports a function)
    from alexnet_tiny.report import evaluate_best
    from alexnet_tiny.results import best_row
    trials = [load_trial(t, []) for t in find_all_trials([grid_dir])]
    seen = []
    build = evaluate_module.model_from_checkpoint

    def counted(*args, **kwargs):
        model = build(*args, **kwargs)
        model.register_forward_hook(lambda module, inputs, output: seen.append(len(inputs[0])))
        return model
    monkeypatch.setattr(evaluate_module, "model_from_checkpoint", counted)
    best = best_row([trial_row(t) for t in trials])
    trial = next(t for t in trials if t.name == best["trial"])
    missing = []
    ev = evaluate_best(trial, small_data, 24, 0, "cpu", False, missing)  # what write_report runs on best.pt
    assert not missing and ev["official_val"]["images"] > 0 and ev["cam"]
    assert sum(seen) == 2 * ev["test"]["images"] + 2 * ev["official_val"]["images"] + len(ev["cam"])


def test_the_page_says_why_a_trial_ended_early(tmp_path):
    """A trial ASHA stopped (or that diverged) is listed with its recorded reason under the table."""
    from alexnet_tiny import runlog as log
    from alexnet_tiny.report import write_report
    reason = "stopped by ASHA at epoch 1: val 0.176 below the cutoff 0.280 of 1 trial(s) there before it"
    for config, status, why in ((PRESETS["quick"], "done", None), (PRESETS["quick"].replace(lr=0.02), "stopped", reason)):
        record = {"config": config.to_dict(), "status": status, "epochs_done": 1, "best_epoch": 1,
                  "best_val_accuracy": 0.3, "test_accuracy_at_best": 0.3, "seconds": 1.0}
        log.write_config(tmp_path / "g" / config.name(), {**record, **({"reason": why} if why else {})})
    out = write_report(tmp_path / "g", out=tmp_path / "r", progress=False, log=lambda _: None, samples=0, device="cpu")
    page = (out / "index.html").read_text()
    assert "id=ended-early" in page and reason in page and page.count("<li><code>quick") == 1


def test_a_seed_given_twice_is_not_shown_as_two_seeds_that_agree():
    from alexnet_tiny.page import seeds_text
    assert seeds_text([0, 1, 2]) == "0, 1, 2"
    assert seeds_text([0, 0]) == "0, 0 (seed 0 more than once: the same training again, not a replicate)"
