"""predict: images of every mode and size through the checkpoint's preprocessing, and each failure path."""
from __future__ import annotations

import json
import struct
import zlib
import numpy as np
import pytest
import torch
from PIL import Image

from alexnet_tiny.data import load_dataset
from alexnet_tiny.errors import UserError
from alexnet_tiny.predict import MAX_PIXELS, load_image, predict
from alexnet_tiny.evaluate import predict_logits
from alexnet_tiny.train import train

from conftest import FAST, run_cli


pytestmark = pytest.mark.usefixtures("narrow_alexnet")  # many trial-epochs; the real width is not needed

@pytest.fixture(scope="module")
def checkpoint(small_data, tmp_path_factory):
    """A real best.pt from one short epoch (predict needs weights, not accuracy)."""
    out = tmp_path_factory.mktemp("predict") / "run"
    train(FAST.replace(epochs=1), data=small_data, out=out, device="cpu", progress=False, log=lambda m: None)
    return out / "best.pt"


def photo(size=(320, 200), seed=0) -> Image.Image:
    """A camera-like RGB picture: a gradient with noise and a bright disc left of centre."""
    rng = np.random.default_rng(seed)
    w, h = size
    x, y = np.meshgrid(np.linspace(0, 1, w), np.linspace(0, 1, h))
    pixels = np.stack([200 * x, 180 * y, 120 * (1 - x)], -1) + rng.normal(0, 20, (h, w, 3))
    pixels[(x - 0.4) ** 2 + (y - 0.5) ** 2 < 0.04] = (250, 230, 40)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


MODES = {  # file name -> how to make it from an RGB photo
    "rgb.jpg": lambda im: im,
    "gray.jpg": lambda im: im.convert("L"),
    "cmyk.jpg": lambda im: im.convert("CMYK"),
    "rgba.png": lambda im: im.convert("RGBA"),
    "palette.png": lambda im: im.convert("P", palette=Image.Palette.ADAPTIVE),
    "palette.gif": lambda im: im.convert("P", palette=Image.Palette.ADAPTIVE),
    "gray_alpha.png": lambda im: im.convert("LA"),
    "bilevel.bmp": lambda im: im.convert("1"),
    "gray16.png": lambda im: Image.fromarray(np.asarray(im.convert("L"), dtype=np.uint16) * 257),  # real 16-bit
    "rgb.webp": lambda im: im,
    "rgb.tiff": lambda im: im,
}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    paths = {}
    for i, (name, make) in enumerate(MODES.items()):
        im = make(photo(size=(320 + 40 * i, 200 + 25 * i), seed=i))
        im.save(folder / name)
        paths[name] = folder / name
    return paths


def test_every_mode_becomes_a_64px_rgb_square(images):
    for name, path in images.items():
        with Image.open(path) as im:
            assert im.mode != "RGB" or name.startswith("rgb"), name  # the files really hold those modes
        x = load_image(path)
        assert x.shape == (3, 64, 64) and x.dtype == torch.uint8, name
        assert x.float().std() > 5, f"{name}: image content lost"


def test_centre_crop_keeps_the_middle_square(tmp_path):
    # a wide image: black side bands, a white square in the middle -> all white after the crop
    im = Image.new("RGB", (300, 100), (0, 0, 0))
    im.paste((255, 255, 255), (100, 0, 200, 100))
    im.save(tmp_path / "wide.png")
    assert load_image(tmp_path / "wide.png").min() == 255


def test_transparency_becomes_white(tmp_path):
    Image.new("RGBA", (80, 80), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    assert load_image(tmp_path / "clear.png").min() == 255


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (200, 100), (255, 255, 255))
    im.paste((0, 0, 0), (0, 0, 200, 50))  # black top half
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    im.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    x = load_image(tmp_path / "rotated.jpg").float().mean(0)
    # upright, the black half is on the right
    assert x[:, :20].mean() > 200 and x[:, -20:].mean() < 50


def test_predictions_match_the_training_pipeline(checkpoint, small_data):
    """A 64x64 test JPEG through predict gives exactly what the model gives its cached copy."""
    from alexnet_tiny.checkpoint import load_checkpoint, model_from_checkpoint
    ds = load_dataset(small_data, progress=False)
    test = ds.splits["test"]
    files = [small_data / f for f in test.files[:5]]
    results = predict(checkpoint, files, topk=3, device="cpu")
    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt)
    probs = predict_logits(model, test.images[:5], ckpt["preprocessing"]["image_size"], "cpu").softmax(1)
    for r, p in zip(results, probs):
        assert [t["class"] for t in r["top"]] == [ds.names[k] for k in p.argsort(descending=True)[:3]]
        assert r["top"][0]["probability"] == pytest.approx(p.max().item(), abs=1e-5)
        assert [t["probability"] for t in r["top"]] == sorted((t["probability"] for t in r["top"]), reverse=True)


def test_a_checkpoint_is_evaluated_with_its_own_preprocessing(checkpoint, small_data, tmp_path):
    """evaluate and predict read resize, mean and std from the checkpoint, never recompute them from
    its image size: a checkpoint recording another preprocessing gives that preprocessing's logits."""
    import torch
    from alexnet_tiny.checkpoint import load_checkpoint, model_from_checkpoint
    from alexnet_tiny.evaluate import evaluate_checkpoint
    from alexnet_tiny.transforms import Preprocessing
    ckpt = load_checkpoint(checkpoint)
    size = ckpt["preprocessing"]["image_size"]
    other = Preprocessing(size, size + 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert other != Preprocessing.for_size(size)
    changed = tmp_path / "other.pt"
    torch.save({**ckpt, "preprocessing": other.to_dict()}, changed)
    ds = load_dataset(small_data, progress=False)
    model = model_from_checkpoint(ckpt)
    test = ds.splits["test"]
    for prep, path in ((Preprocessing.for_size(size), checkpoint), (other, changed)):
        expected = predict_logits(model, test.images, prep, "cpu")
        result = evaluate_checkpoint(path, data=small_data, device="cpu", progress=False)
        assert result["accuracy"] == (expected.argmax(1) == test.labels).double().mean().item()
        top = predict(path, [small_data / test.files[0]], topk=1, device="cpu")[0]["top"][0]
        assert top["probability"] == pytest.approx(expected[0].softmax(0).max().item(), abs=1e-5)
    default_logits, other_logits = (predict_logits(model, test.images[:8], p, "cpu")
                                    for p in (Preprocessing.for_size(size), other))
    assert not torch.allclose(default_logits, other_logits)  # the two really differ


def test_flip_averaging_is_the_mean_over_each_image_and_its_mirror(checkpoint, small_data):
    """--flip: the logits of every image averaged with those of its mirror image; with no crop margin
    that is exactly mirroring the image before preprocessing."""
    from alexnet_tiny.checkpoint import load_checkpoint, model_from_checkpoint
    from alexnet_tiny.evaluate import evaluate_checkpoint
    from alexnet_tiny.transforms import Preprocessing
    ckpt = load_checkpoint(checkpoint)
    model, size = model_from_checkpoint(ckpt), ckpt["preprocessing"]["image_size"]
    test = load_dataset(small_data, progress=False).splits["test"]
    no_margin = Preprocessing(size, size)
    plain, mirrored = (predict_logits(model, images, no_margin, "cpu")
                       for images in (test.images, test.images.flip(-1)))
    assert torch.allclose(predict_logits(model, test.images, no_margin, "cpu", flip=True), (plain + mirrored) / 2,
                          atol=1e-6)
    assert not torch.allclose(plain, mirrored, atol=1e-4)  # mirroring changes what the model sees
    # the checkpoint's own preprocessing (resize, then centre crop), mirrored after it
    from alexnet_tiny.transforms import eval_batch
    x = eval_batch(test.images, size)
    with torch.no_grad():
        expected = (model(x) + model(x.flip(-1))) / 2
    flipped = predict_logits(model, test.images, size, "cpu", flip=True)
    assert torch.allclose(flipped, expected, atol=1e-6)
    plain = predict_logits(model, test.images, size, "cpu")
    result = evaluate_checkpoint(checkpoint, data=small_data, device="cpu", progress=False, flip=True)
    assert result["accuracy"] == (plain.argmax(1) == test.labels).double().mean().item()
    assert result["flip_accuracy"] == (flipped.argmax(1) == test.labels).double().mean().item()
    proc = run_cli("evaluate", checkpoint, "--data", small_data, "--flip", "-q", "--device", "cpu", check=True)
    assert proc.stdout.strip().splitlines()[-1] == (
        f"test: accuracy {result['accuracy']:.3f}, loss {result['loss']:.4f} on {len(test)} images; "
        f"with flip averaging {result['flip_accuracy']:.3f}, loss {result['flip_loss']:.4f}")


def test_topk_is_capped_at_the_number_of_classes(checkpoint, images):
    (result,) = predict(checkpoint, [images["rgb.jpg"]], topk=10, device="cpu")
    assert len(result["top"]) == 3
    assert sum(t["probability"] for t in result["top"]) == pytest.approx(1, abs=1e-5)
    with pytest.raises(UserError, match="--topk 0"):
        predict(checkpoint, [images["rgb.jpg"]], topk=0)


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height (1-bit grey) but holds one tiny data chunk: a bomb's header."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("width,height", [(8000, 7000), (10000, 10000), (40000, 40000)])
def test_pixel_bombs_are_refused(tmp_path, width, height):
    # over our limit only; over PIL's warning threshold; over PIL's error threshold
    assert width * height > MAX_PIXELS
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header(width, height))
    with pytest.raises(UserError, match="refused") as e:
        load_image(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_unreadable_files_fail_alone(checkpoint, images, tmp_path):
    (tmp_path / "notes.txt").write_text("not a picture")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(images["rgb.jpg"].read_bytes()[:300])
    paths = [images["rgb.jpg"], tmp_path / "notes.txt", truncated, tmp_path / "absent.png", tmp_path,
             images["cmyk.jpg"]]
    results = predict(checkpoint, paths, device="cpu")
    assert [("error" in r) for r in results] == [False, True, True, True, True, False]
    for r in results[1:5]:
        assert r["image"] in r["error"] and "\n" not in r["error"]
    assert "top" in results[0] and "top" in results[5]


@pytest.mark.slow
def test_cli_predicts_every_mode_and_reports_failures(checkpoint, images, tmp_path):
    (tmp_path / "notes.txt").write_text("not a picture")
    files = [*images.values(), tmp_path / "notes.txt"]
    proc = run_cli("predict", checkpoint, *files, "--topk", "2", "--device", "cpu")
    assert proc.returncode == 1
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 1 and "notes.txt" in errors[0] and "Traceback" not in proc.stderr
    for path in images.values():
        assert str(path) in proc.stdout
    assert proc.stdout.count("%") == 2 * len(images)

    proc = run_cli("predict", checkpoint, images["rgb.jpg"], images["gray.jpg"], "--json", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [r["image"] for r in out] == [str(images["rgb.jpg"]), str(images["gray.jpg"])]
    assert all(len(r["top"]) == 3 for r in out)  # --topk 5 capped at the 3 classes


@pytest.mark.slow
@pytest.mark.parametrize("content", [b"", b"garbage" * 100, b"hi\n", b"\x80\x02}q\x00(", "truncated", "foreign"])
def test_cli_rejects_bad_checkpoints_cleanly(checkpoint, images, tmp_path, content):
    bad = tmp_path / "bad.pt"
    if content == "truncated":
        bad.write_bytes(checkpoint.read_bytes()[:100_000])
    elif content == "foreign":
        torch.save({"weights": torch.zeros(3)}, bad)
    else:
        bad.write_bytes(content)
    proc = run_cli("predict", bad, images["rgb.jpg"])
    assert proc.returncode == 2
    assert proc.stderr.startswith("alexnet-tiny predict: error:") and str(bad) in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_pickled_code_is_never_run(images, tmp_path):
    """A checkpoint whose pickle would run code is refused, and the code does not run."""
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"model": Exploit(), "classes": {}, "preprocessing": {}}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="evil.pt"):
        predict(tmp_path / "evil.pt", [images["rgb.jpg"]])
    assert not marker.exists()
