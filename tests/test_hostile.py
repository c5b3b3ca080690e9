"""Hostile and careless input: bounded memory, no hang, one line, no silently wrong dataset. Each test
reproduces a defect found by trying the tool as a careless or malicious user would; hangs run under a
timeout that fails the test, memory under a cap in a subprocess."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from alexnet_tiny import figures
from alexnet_tiny.config import MAX_IMAGE_SIZE, MAX_SEED, PRESETS, TrainConfig
from alexnet_tiny.data import EMBEDDED_ARCHIVE, MAX_MEMBER_BYTES, prepare
from alexnet_tiny.errors import UserError
from alexnet_tiny.grid import with_seeds
from alexnet_tiny.trial import epoch_seed
from conftest import run_cli

MEMORY_CAP = 4_000_000 * 1024  # bytes of address space (ulimit -v 4000000) for a subprocess that must not read a bomb whole


def last_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    return lines[-1]


def capped(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`alexnet-tiny ARGS` with its address space capped (a MemoryError would be a traceback)."""
    code = (f"import resource, sys; resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_CAP}, {MEMORY_CAP})); "
            "from alexnet_tiny.cli import main; sys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout)


# ----------------------------------------------------------------------------- sources

@pytest.mark.slow
def test_a_zip_bomb_member_is_refused_before_it_is_read(tmp_path):
    """One image replaced by 4 GiB of zeros, deflated to a few MB: refused by its declared size."""
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(EMBEDDED_ARCHIVE) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as out:
        victim = next(n for n in src.namelist() if n.endswith("_150.JPEG"))
        for info in src.infolist():
            if info.filename == victim:
                with out.open(victim, "w", force_zip64=True) as f:
                    block = bytes(64 << 20)
                    for _ in range(64):  # 4 GiB
                        f.write(block)
            else:
                out.writestr(info, src.read(info))
    proc = capped("prepare", "--source", str(bomb), "--out", str(tmp_path / "d"), "-q", timeout=600)
    line = last_line(proc)
    assert victim in line and "over the limit" in line and f"{MAX_MEMBER_BYTES:,}" in line
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())


@pytest.fixture
def source_folder(tmp_path) -> tuple[Path, Path]:
    """The embedded archive unzipped, and one of its images' path."""
    with zipfile.ZipFile(EMBEDDED_ARCHIVE) as z:
        z.extractall(tmp_path / "src")
    image = next((tmp_path / "src").rglob("*_150.JPEG"))
    return tmp_path / "src", image


@pytest.mark.parametrize("special", ["dev-zero", "fifo"])
def test_a_special_file_in_a_source_folder_is_refused(special, source_folder, tmp_path):
    src, image = source_folder
    image.unlink()
    if special == "fifo":
        os.mkfifo(image)
    else:
        image.symlink_to("/dev/zero")
    proc = capped("prepare", "--source", str(src), "--out", str(tmp_path / "d"), "-q", timeout=300)
    line = last_line(proc)
    assert image.name in line and "not a regular file" in line


def test_a_wnid_listed_twice_is_refused(source_folder, tmp_path):
    src, _ = source_folder
    wnids = next(src.rglob("wnids.txt"))
    lines = wnids.read_text().split()
    wnids.write_text("\n".join([lines[0], *lines]) + "\n")
    with pytest.raises(UserError, match=f"{lines[0]} is listed twice"):
        prepare(tmp_path / "d", source=src, progress=False)
    wnids.write_text("\ufeff" + "\n".join(lines) + "\n")  # a byte-order mark is not part of the first wnid
    assert prepare(tmp_path / "e", source=src, progress=False, classes=2).exists()


WNIDS = ["n01443537", "n01629819", "n01641577", "n01644900"]


@pytest.fixture(scope="module")
def minimal_source(tmp_path_factory) -> Path:
    """A folder with a wnids.txt, words.txt and two images of one class: a tree Source can read."""
    root = tmp_path_factory.mktemp("minimal")
    (root / "wnids.txt").write_text(WNIDS[0] + "\n")
    (root / "words.txt").write_text(f"{WNIDS[0]}\tgoldfish\n")
    with zipfile.ZipFile(EMBEDDED_ARCHIVE) as z:
        jpeg = z.read(next(n for n in z.namelist() if n.endswith(".JPEG")))
    for k in range(2):
        image = root / "train" / WNIDS[0] / "images" / f"{WNIDS[0]}_{k}.JPEG"
        image.parent.mkdir(parents=True, exist_ok=True)
        image.write_bytes(jpeg)
    return root


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(st.lists(st.sampled_from(WNIDS + ["", " ", "\t"]), max_size=8), st.booleans())
def test_any_wnids_file_lists_each_class_once_or_names_the_one_listed_twice(minimal_source, lines, mark):
    """Blank lines, blanks around a wnid, a byte-order mark: no part of a wnid; a wnid listed twice or
    none at all: refused, naming the file (and the wnid)."""
    from alexnet_tiny.data import Source, read_wnids
    (minimal_source / "wnids.txt").write_text(("\ufeff" if mark else "") + "\n".join(lines))
    listed = [line.strip() for line in lines if line.strip()]
    twice = next((w for k, w in enumerate(listed) if w in listed[:k]), None)
    try:
        got = read_wnids(Source(minimal_source))
    except UserError as e:
        assert "wnids.txt" in str(e) and "\n" not in str(e)
        assert f"{twice} is listed twice" in str(e) if twice else "lists no class" in str(e)
        return
    assert twice is None and listed and got == sorted(listed)


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]),
       st.one_of(st.integers(0, 2 ** 32 - 1), st.sampled_from([0, 1, 2999, 3000, 3001, MAX_MEMBER_BYTES + 1])))
def test_a_zip_member_of_any_declared_size_reads_whole_or_says_why(tmp_path_factory, method, declared):
    """The member's uncompressed size rewritten in the archive's headers (what a zip bomb lies about):
    the read returns the member's true bytes, or refuses in one line naming it; it never reads past the
    limit, and never returns a cut member."""
    from alexnet_tiny.data import Source
    content = np.random.default_rng(declared).integers(0, 8, 3000, dtype=np.uint8).tobytes()
    path = tmp_path_factory.mktemp("declared") / "source.zip"
    with zipfile.ZipFile(path, "w", method) as z:
        z.writestr("wnids.txt", WNIDS[0] + "\n")
        z.writestr("member.JPEG", content)
    with zipfile.ZipFile(path) as z:
        local = z.getinfo("member.JPEG").header_offset
    blob = bytearray(path.read_bytes())
    central = blob.rindex(b"PK\x01\x02")  # the last member's entry in the central directory
    assert blob[central + 46:central + 46 + len("member.JPEG")] == b"member.JPEG"
    blob[local + 22:local + 26] = blob[central + 24:central + 28] = declared.to_bytes(4, "little")
    path.write_bytes(bytes(blob))
    try:
        got = Source(path).read("member.JPEG")
    except UserError as e:
        assert "member.JPEG" in str(e) and "\n" not in str(e) and declared != len(content)
        assert ("over the limit" in str(e)) == (declared > MAX_MEMBER_BYTES)  # refused before reading
        return
    assert got == content and declared <= MAX_MEMBER_BYTES


SPECIAL = {"fifo": os.mkfifo, "/dev/zero": lambda p: p.symlink_to("/dev/zero"),
           "/dev/null": lambda p: p.symlink_to("/dev/null"), "/dev/urandom": lambda p: p.symlink_to("/dev/urandom"),
           "broken link": lambda p: p.symlink_to(p.parent / "nowhere"), "link loop": lambda p: p.symlink_to(p),
           "link to a folder": lambda p: p.symlink_to(p.parent)}


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(st.sampled_from(sorted(SPECIAL)), st.sampled_from(["wnids.txt", "words.txt", f"train/{WNIDS[0]}/images/"
                                                          f"{WNIDS[0]}_1.JPEG"]))
def test_any_special_file_in_a_source_folder_is_refused_at_once(minimal_source, tmp_path_factory, special, member):
    """In place of any file of the tree, something that is not a regular file: refused in one line
    naming it, within seconds (an alarm fails the test instead of a hang), or not part of the tree."""
    import shutil
    import signal
    from alexnet_tiny.data import Source
    root = tmp_path_factory.mktemp("special") / "src"
    shutil.copytree(minimal_source, root)
    (root / member).unlink()
    SPECIAL[special](root / member)

    def hang(*_):
        raise TimeoutError(f"{special} as {member}: still reading after 20 s")
    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(20)
    try:
        source = Source(root)
        if source.has(member):
            source.read(member)
            pytest.fail(f"{special} as {member} was read")
        assert special == "link to a folder"  # a folder: not a file of the tree
    except UserError as e:
        assert Path(member).name in str(e) and "\n" not in str(e)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ----------------------------------------------------------------------------- predict

def test_predict_refuses_a_fifo_or_a_device_as_an_image_at_once(tmp_path):
    """Opening a FIFO waits for a writer that never comes: predict's image reader refuses it first (in
    a subprocess with a timeout, so that a hang fails the test); each bad image is one line of predict's
    output, the others are classified (tests/test_predict.py)."""
    fifo, link = tmp_path / "fifo.jpg", tmp_path / "zero.jpg"
    os.mkfifo(fifo)
    link.symlink_to("/dev/zero")
    for path in (fifo, link):
        code = ("import sys; from alexnet_tiny.errors import UserError; from alexnet_tiny.predict import load_image\n"
                "try:\n    load_image(sys.argv[1])\nexcept UserError as e:\n    print(e)")
        proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
        assert proc.stdout.strip() == f"{path}: not a regular file (a FIFO, device or socket), not an image"


# ----------------------------------------------------------------------------- grids and values

def test_a_reduction_factor_just_above_one_is_refused_at_once(tmp_path):
    proc = run_cli("grid", "--preset", "quick", "--scheduler", "asha", "--reduction-factor", "1.000000000001",
                   "--out", tmp_path / "g", "--data", tmp_path / "none", timeout=60)
    assert "rungs below epoch 18" in last_line(proc)


def test_a_grid_of_a_million_trials_is_refused_before_any_work(tmp_path):
    grid = tmp_path / "huge.toml"
    grid.write_text("preset = \"quick\"\n"
                    f"lr = [{', '.join(str(0.001 * (k + 1)) for k in range(100))}]\n"
                    f"seed = [{', '.join(map(str, range(100)))}]\n"
                    "dropout = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]\n"
                    "epochs = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n")
    proc = run_cli("grid", "--config", grid, "--out", tmp_path / "g", timeout=60)
    assert last_line(proc).endswith("1,000,000 trials (the product of its lists); expected at most 10,000")
    with pytest.raises(UserError, match="--seeds 100: 20,000 trials; expected at most 10,000"):
        with_seeds([PRESETS["quick"].replace(lr=0.001 * (k + 1)) for k in range(200)], 100)


@pytest.mark.parametrize("flag,value,expected", [
    ("--image-size", "1000000", f"expected an integer from 64 to {MAX_IMAGE_SIZE}"),
    ("--seed", str(2 ** 63 - 1), f"expected an integer from 0 to {MAX_SEED}"),
])
def test_values_that_would_fail_mid_run_are_refused_before_it(flag, value, expected, tmp_path):
    out = tmp_path / "run"
    proc = run_cli("train", "--preset", "quick", flag, value, "--out", out, "--data", tmp_path / "none", timeout=60)
    assert last_line(proc).endswith(expected)
    assert not out.exists()  # no config.json left "running"
    grid = tmp_path / "g.toml"
    grid.write_text(f'preset = "quick"\n{flag[2:].replace("-", "_")} = [{value}]\n')
    assert last_line(run_cli("grid", "--config", grid, "--out", tmp_path / "g", timeout=60)).endswith(expected)


EDGES = [0, 1, -1, 2 ** 63 - 1, 2 ** 31, 1e308, 1 + 1e-12, 1e-300, 0.5]
NUMERIC = [f for f, t in TrainConfig.__annotations__.items() if t in ("int", "float")]


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(st.sampled_from(NUMERIC), st.sampled_from(EDGES))
def test_every_numeric_option_at_its_edges_is_refused_or_runs_its_first_batch(field, value):
    """Each value either fails validation in one line, or its run's first steps can be drawn: the
    generator seeds, and the first batch's boxes at its image size."""
    kind = TrainConfig.__annotations__[field]
    value = int(value) if kind == "int" and float(value).is_integer() else value
    if kind == "int" and not isinstance(value, int):
        return
    try:
        config = PRESETS["quick"].replace(**{field: value}).validate()
    except UserError as e:
        assert re.match(r"\w+ = .*: expected ", str(e)) and "\n" not in str(e)  # may name the field it conflicts with
        return
    import torch
    from alexnet_tiny.transforms import random_boxes
    generator = torch.Generator().manual_seed(epoch_seed(config.seed, config.epochs))
    centres, extents, flips = random_boxes(min(config.batch_size, 4), config.image_size, generator,
                                           config.augment, config.crop_scale, config.input)
    assert len(flips) == min(config.batch_size, 4)


# ----------------------------------------------------------------------------- text in figures

@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(st.text(alphabet="$\\^_{}abc", min_size=1, max_size=12))
def test_mathtext_in_a_class_name_is_drawn_as_it_is(name):
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"mathtext-{os.getpid()}.png"
    figures.per_class_accuracy([name, "$\\undefinedcmd$"], [0.5, 0.25], [10, 10], 0.375, f"classes {name}", out)
    assert out.stat().st_size > 1000
    out.unlink()


def test_a_report_over_a_class_named_in_mathtext_renders(tmp_path):
    images = np.zeros((2, 3, 64, 64), dtype=np.uint8)
    path = figures.sample_predictions(images, ["$\\undefinedcmd$", "b"], ["$x^$", "b"], [False, True], "$t$",
                                      tmp_path / "s.png")
    assert path.stat().st_size > 1000


def test_a_run_inside_the_data_folder_or_holding_it_is_refused(small_data, tmp_path):
    inside = small_data / "train" / "myrun"
    proc = run_cli("train", "--preset", "quick", "--data", small_data, "--out", inside, timeout=120)
    assert "is inside the data folder" in last_line(proc) and not inside.exists()
    proc = run_cli("grid", "--preset", "quick", "--data", small_data, "--out", small_data.parent, timeout=120)
    assert "holds the data folder" in last_line(proc)
    assert not (small_data.parent / "grid.json").exists()


def test_a_hand_edited_run_record_is_one_line_on_the_report(tmp_path):
    from alexnet_tiny import runlog
    from alexnet_tiny.report import write_report
    good, bad = PRESETS["quick"], PRESETS["quick"].replace(lr=0.01)
    for config, val in ((good, 0.5), (bad, "0.9")):
        runlog.write_config(tmp_path / "g" / config.name(), {
            "config": config.to_dict(), "status": "done", "epochs_done": 1, "best_epoch": 1,
            "best_val_accuracy": val, "test_accuracy_at_best": 0.4, "seconds": 1.0})
    lines = []
    out = write_report(tmp_path / "g", out=tmp_path / "r", progress=False, log=lines.append, samples=0, device="cpu")
    assert (out / "index.html").exists()
    assert any(f'{bad.name()}/config.json: best_val_accuracy = "0.9": expected a number' in line for line in lines)


def test_sigterm_ends_a_command_as_ctrl_c_does(small_data, tmp_path):
    import signal
    import time
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "alexnet_tiny", "train", "--preset", "quick", "--epochs", "1",
                             "--data", str(small_data), "--out", str(out), "-q"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out / "config.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal")
    assert proc.returncode == 143 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("alexnet-tiny train: terminated (SIGTERM); rerun with --resume")


def test_errors_stay_one_readable_line(tmp_path):
    grid = tmp_path / "long.toml"
    grid.write_text('preset = "quick"\naugment = "' + "x" * 200_000 + '"\n')
    line = last_line(run_cli("grid", "--config", grid, "--out", tmp_path / "g", timeout=60))
    assert len(line) < 800 and "characters ...]" in line and "augment" in line
    assert "no wnid in it" in last_line(run_cli("prepare", "--wnids", ",,,", "--out", tmp_path / "d", timeout=60))
    assert not (tmp_path / "d").exists()


def test_an_unreadable_image_names_the_file_once_and_no_buffer():
    from alexnet_tiny.data import decode_image
    with pytest.raises(UserError) as info:
        decode_image(b"not an image", "src:train/n1/images/n1_0.JPEG")
    assert "BytesIO" not in str(info.value) and str(info.value).count("n1_0.JPEG") == 1


def test_a_url_given_to_predict_is_named_as_given():
    from alexnet_tiny.predict import load_image
    with pytest.raises(UserError, match=r"^https://example\.org/cat\.jpg: a URL; predict reads local image files"):
        load_image("https://example.org/cat.jpg")
