"""The report's page, index.html: one self-contained HTML file (figures linked relatively) from what
report.py gathered. Nothing here reads a run folder or evaluates a model.

FIGURES is the one list of the report's figures: report.draw_figures draws each into its file, the
page places it (by key) with its alt text and caption, and tests/test_docs.py checks that
docs/report.md lists every file. A new figure is an entry here, its drawing in report.draw_figures,
its place on the page, and its row in docs/report.md.
"""
from __future__ import annotations

import html

from . import figures
from .config import HYPERPARAMETERS
from .data import OFFICIAL_VAL
from .results import compares_configurations, format_spread, format_value

# key -> (file name, what it shows)
FIGURES = {
    "table": ("results_table.png", "the results table as an image"),
    "curves": ("learning_curves.png", "train and validation loss and accuracy per epoch, every trial"),
    "per_class": ("per_class_accuracy.png", "the best checkpoint's test accuracy per class"),
    "confusion": ("confusion_matrix.png", "its test confusion matrix"),
    "samples": ("sample_predictions.png", "test images captioned predicted / true, green right, red wrong"),
    "kernels": ("conv1_kernels.png", "the best trial's 64 first-layer kernels beside another's"),
    "top5": ("top5.png", "test images with their top-5 probabilities"),
    "neighbours": ("nearest_neighbours.png", "test images and their nearest training images in FC2's space"),
    "cam": ("grad_cam.png", "class-activation maps (Grad-CAM) over test images"),
    "grid_map": ("grid_map.png", "best validation accuracy over the two hyperparameters that vary most"),
    "accuracy_vs_minutes": ("accuracy_vs_minutes.png", "configurations over seeds: test accuracy against minutes"),
    "effects": ("effects.png", "each hyperparameter's effect on accuracy, their interaction, lr / (1 - momentum)"),
}


PAGE_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1200px;padding:24px;
color:#1f2328;line-height:1.45}
h1{margin-bottom:4px}h2{margin-top:36px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
.sub{color:#57606a;margin-top:0}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.card{border:1px solid #d0d7de;border-radius:8px;padding:10px 16px;min-width:150px}
.card b{display:block;font-size:1.6em}
.missing{background:#fff8c5;border:1px solid #d4a72c;border-radius:8px;padding:8px 16px}
table{border-collapse:collapse;font-size:14px}th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:right}
th{background:#f6f8fa}td.l,th.l{text-align:left}tr.best td{background:#fff1c2;font-weight:bold}
td.diag{background:#dff3e3;font-weight:bold}
.scroll{overflow-x:auto}img{max-width:100%;height:auto;border:1px solid #eaeef2;margin:8px 0}
code{background:#f6f8fa;padding:1px 4px;border-radius:4px}
"""


def _table_html(header: list[str], cells: list[list[str]], best_index: int | None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(f"<tr{' class=best' if i == best_index else ''}>" +
                   "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for i, row in enumerate(cells))
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'


def _hyperparameter_table(trials: list, best: dict | None) -> str:
    """One row per hyperparameter: the best trial's value, and the values across all trials."""
    configs = [t.hyperparameters for t in trials if t.hyperparameters]
    if not configs:
        return "<p><i>No trial's hyperparameters are known.</i></p>"
    chosen = next((t for t in trials if best and t.name == best["trial"]), None)
    rows = []
    for h in HYPERPARAMETERS:
        values = list(dict.fromkeys(format_value(c.get(h)) for c in configs))
        across = "same in every trial" if len(values) == 1 else ", ".join(values)
        mine = format_value(chosen.hyperparameters.get(h)) if chosen else ""
        rows.append(f'<tr><th class="l">{html.escape(h)}</th><td>{html.escape(mine)}</td>'
                    f'<td class="l">{html.escape(across)}</td></tr>')
    record = (chosen.record if chosen else None) or {}
    where = (f'<p class="sub">Best trial trained on {html.escape(str(record.get("device")))} with the dataset '
             f'<code>{html.escape(str(record.get("dataset", {}).get("root")))}</code>.</p>' if record else "")
    return ("<table><tr><th class=l>hyperparameter</th><th>best trial</th><th class=l>all trials</th></tr>"
            + "".join(rows) + "</table>" + where)


def _figure(made: dict, key: str, alt: str, caption: str) -> str:
    if key not in made:
        return f"<p><i>{html.escape(alt)}: not available (see “Missing” above).</i></p>"
    return f'<img src="{html.escape(made[key])}" alt="{html.escape(alt)}"><p class="sub">{html.escape(caption)}</p>'


def seeds_text(seeds: list) -> str:
    """A configuration's seeds; a seed that repeats (the same run in two folders given to one report)
    is said to be the same training twice, whose agreement says nothing of the spread over seeds."""
    text = ", ".join(map(str, seeds))
    repeated = sorted({s for s in seeds if seeds.count(s) > 1}, key=str)
    if repeated:
        text += f" (seed {', '.join(map(str, repeated))} more than once: the same training again, not a replicate)"
    return text


def _configurations_html(groups: list[dict], made: dict) -> str:
    """The configurations over seeds as a table (numbers as text) and the accuracy-minutes figure."""
    e = html.escape
    head = "".join(f"<th{' class=l' if i == 0 else ''}>{h}</th>" for i, h in enumerate(
        ["configuration", "seeds", "best val accuracy", "test accuracy at best", "minutes per run"]))
    body = "".join(
        f'<tr><td class="l">{e(g["label"])}</td><td>{e(seeds_text([r["seed"] for r in g["runs"]]))}</td>'
        f'<td>{e(format_spread(g["best_val_accuracy"]))}</td><td>{e(format_spread(g["test_accuracy_at_best"]))}</td>'
        f'<td>{e(format_spread(g["minutes"], percent=False))}</td></tr>' for g in groups)
    return (f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'
            '<p class=sub>Trials that differ only in their seed, as one configuration: mean ± sample standard '
            'deviation over the seeds. Minutes: the epochs\' training and evaluation time.</p>'
            + _figure(made, "accuracy_vs_minutes", "test accuracy against minutes per run, one point per "
                      "configuration with its spread over seeds", "Pick a configuration by what its time buys."))


def _per_class_html(ev: dict | None) -> str:
    """Every class's test accuracy; for many classes sorted from worst to best, with its rank."""
    if not ev:
        return ""
    classes = ev["test"]["per_class"]
    many = len(classes) > figures.MANY_CLASSES
    order = sorted(range(len(classes)), key=lambda i: (classes[i]["accuracy"], i)) if many else range(len(classes))
    rows = "".join(f'<tr>{f"<td>{rank}</td>" if many else ""}<td class="l">{html.escape(classes[i]["name"])}</td>'
                   f'<td class="l">{html.escape(classes[i]["wnid"])}</td><td>{classes[i]["accuracy"]:.1%}</td>'
                   f'<td>{classes[i]["images"]}</td></tr>' for rank, i in enumerate(order, 1))
    sorted_note = "<p class=sub>Sorted from the worst class to the best.</p>" if many else ""
    return (f'{sorted_note}<div class="scroll"><table id="per-class"><tr>{"<th>rank</th>" if many else ""}'
            '<th class="l">class</th><th class="l">wnid</th><th>test accuracy</th>'
            f'<th>images</th></tr>{rows}</table></div>')


def _confusion_html(ev: dict | None) -> str:
    """The confusion matrix as a table; for many classes, its most confused pairs instead."""
    if not ev:
        return ""
    names = ev["names"]
    if len(names) > figures.MANY_CLASSES:
        rows = "".join(f'<tr><td class="l">{html.escape(names[t])}</td><td class="l">{html.escape(names[p])}</td>'
                       f"<td>{count}</td></tr>" for t, p, count in figures.most_confused(ev["test"]["confusion"], 50))
        return ('<table id="confused-pairs"><tr><th class="l">true class</th><th class="l">predicted as</th>'
                f"<th>test images</th></tr>{rows}</table>")
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    body = "".join(f'<tr><th class="l">{html.escape(names[t])}</th>' + "".join(
        f"<td{' class=diag' if t == p else ''}>{count}</td>" for p, count in enumerate(row)) + "</tr>"
        for t, row in enumerate(ev["test"]["confusion"]))
    return (f'<div class="scroll"><table id="confusion"><tr><th class="l">true \\ predicted</th>{head}</tr>{body}'
            '</table></div>')


def _learned_html(report: dict, made: dict) -> list[str]:
    """The AlexNet paper's figures 3 and 4 and Grad-CAM, each with its numbers in words."""
    ev, kernels = report["evaluation"], report.get("kernels") or {}
    change = kernels.get("change")
    parts = ["<h2>What the network learned</h2>", "<h3>First-layer kernels</h3>",
             _figure(made, "kernels", f"the 64 conv1 kernels of the best trial beside those of "
                     f"{kernels.get('compared_with') or 'no other trial'}"
                     + (", and what training changed in them" if change else ""),
                     "Each 11 x 11 x 3 kernel scaled to its own range (the AlexNet paper's figure 3)."
                     + (" From a random start conv1 can move little in a short run; the learned-minus-initial "
                        "panel shows what it learned." if change else ""))]
    if ev and "top5" in ev:
        right = sum(t["indices"][0] == t["true_index"] for t in ev["top5"])
        k = len(ev["top5"][0]["classes"]) if ev["top5"] else 0
        parts += ["<h3>Top-5 predictions</h3>",
                  _figure(made, "top5", f"{len(ev['top5'])} test images ({right} right, {len(ev['top5']) - right} "
                          f"wrong) with bars of their {k} most probable classes",
                          "The paper's figure 4, left: the true class's bar green, a wrong first guess red.")]
        same = sum(n["same_class"] for q in ev["neighbours"] for n in q["neighbours"])
        total = sum(len(q["neighbours"]) for q in ev["neighbours"])
        parts += ["<h3>Nearest neighbours in feature space</h3>",
                  _figure(made, "neighbours", f"{len(ev['neighbours'])} test images, each beside its nearest training "
                          f"images by FC2 features; {same} of {total} neighbours share the test image's class",
                          "The paper's figure 4, right: Euclidean distance between the outputs of the second fully "
                          "connected layer (4,096 in AlexNet), after its ReLU."),
                  "<h3>Class-activation maps</h3>",
                  _figure(made, "cam", f"Grad-CAM heat maps over {len(ev['cam'])} test images, right and wrong",
                          "Grad-CAM on the last conv layer for the predicted class: red where the evidence for it "
                          "lies. Also for your own photo: alexnet-tiny predict CHECKPOINT IMAGE --cam OUT.png.")]
    return parts


def _grid_map_html(gridmap: dict | None, made: dict) -> list[str]:
    if not gridmap:
        return []
    return ["<h3>The grid as a picture</h3>",
            _figure(made, "grid_map", f"heat map of the best validation accuracy over {gridmap['x']} and "
                    f"{gridmap['y']}" + (f", one panel per {gridmap['panel']}" if gridmap["panel"] else ""),
                    "Each cell: the best validation accuracy among the finished trials with those values "
                    "(report.json: grid_map).")]


def _published_html(comparison: dict | None) -> list[str]:
    """The published table beside ours, with what the original runs did that a reader must know."""
    if not comparison:
        return []
    e = html.escape
    pct = lambda v: "–" if v is None else f"{100 * v:.1f}"  # noqa: E731
    head = ("<tr><th>lr</th><th>momentum</th><th>gamma</th><th>published train</th><th>val</th><th>test</th>"
            "<th>ours, final: train</th><th>val</th><th>test</th><th>epoch</th><th>test: ours − published</th>"
            "<th>2 SE</th><th>ours at best val: val</th><th>test</th><th>epoch</th></tr>")
    body = []
    for r in comparison["rows"]:
        cells = [r["lr"], r["momentum"], r["gamma"], *(pct(r["published"][s]) for s in ("train", "val", "test"))]
        if r["trial"] is None:
            cells += ["not run"] + [""] * 8
        else:
            d = r["difference"].get("test")
            cells += [*(pct(r["final"].get(s)) for s in ("train", "val", "test")), r["epochs_done"],
                      f"{100 * d['ours_minus_published']:+.1f}" + ("" if d["within_two_se"] else " (outside)") if d else "–",
                      f"±{200 * d['standard_error']:.1f}" if d else "–",
                      pct(r["best"]["val"]), pct(r["best"]["test"]), r["best"]["epoch"]]
        body.append("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in cells) + "</tr>")
    pairs = "; ".join(
        f"lr {p['lr']}, momentum {p['momentum']}: published {' and '.join(pct(v) for v in p['published_test'])}"
        + (f", ours {' and '.join(pct(v) for v in p['our_test'])}" if p["our_test"] else "")
        for p in comparison["pairs"])
    return ["<h2>The published study beside ours</h2>",
            f'<div class="scroll"><table id="published">{head}{"".join(body)}</table></div>',
            f"<p class=sub>Published: {e(comparison['source'])}; {e(comparison['measured'])}. Ours, final: the model "
            "after its last epoch, train accuracy in evaluation mode on the training images with random flips, as "
            "theirs. The difference is within what 500 test images allow when it is inside two standard errors (2 SE: "
            "two accuracies on 500 images each). Also as published.md.</p>",
            "<p><b>Gamma had no effect in the original runs.</b> Their StepLR(30, gamma) was stepped with the loss as "
            "its epoch, so the learning rate never moved: the two gammas of each lr and momentum are the same "
            "configuration trained twice from other random weights (ours: seeds 0 and 1). Their spread is the "
            f"run-to-run spread, in test accuracy: {e(pairs)}.</p>",
            f"<p><b>The original chose its best trial by test accuracy</b> ({e(comparison['selection'])}); this tool "
            "chooses by validation accuracy and reports test accuracy at that choice.</p>"]


def _interval(v: dict | None) -> str:
    return "–" if v is None else f"{100 * v['accuracy']:.1f} [{100 * v['low']:.1f}, {100 * v['high']:.1f}]"


def _paired(c: dict | None, is_best: bool) -> list[str]:
    if is_best:
        return ["best", "", "", ""]
    if c is None:
        return ["not paired", "", "", ""]
    return [str(c["best_only"]), str(c["trial_only"]), f"{c['p']:.2g}", "tied" if c["tied"] else "no"]


def _findings_html(found: dict | None, best: dict | None, made: dict) -> list[str]:
    """What the grid taught: the conclusions in words, the study's own checked, the effects figure,
    and every trial's accuracy with its interval and its paired comparison with the best."""
    if not found:
        return []
    e = html.escape
    parts = ["<h2>What the grid taught</h2>",
             '<ul id="conclusions">' + "".join(f"<li>{e(c)}</li>" for c in found["conclusions"]) + "</ul>"]
    if found["study"]:
        parts.append('<h3>The study\'s conclusions, checked</h3><div class="scroll"><table id="study-checks">'
                     '<tr><th class=l>the study</th><th class=l>what these runs say</th></tr>' +
                     "".join(f"<tr><td class=l>{e(c['claim'])}</td><td class=l>{e(c['verdict'])}</td></tr>"
                             for c in found["study"]) + "</table></div>")
    parts.append(_figure(made, "effects", "each hyperparameter's effect: mean validation and test accuracy at each "
                         "value (the same numbers as the conclusions above)",
                         "Each value's mean over the trials that share it, bars from the lowest to the highest; "
                         "grey: the published study's test means."))
    images = found["images"]
    head = ("<tr><th class=l>trial</th><th>val % [95% interval]</th><th>only best right</th><th>only it right</th>"
            "<th>p</th><th>tied with best</th><th>test % [95% interval]</th><th>only best right</th>"
            "<th>only it right</th><th>p</th><th>tied with best</th></tr>")
    body = []
    for t in found["intervals"]:
        is_best = best is not None and t["trial"] == best["trial"]
        cells = [t["trial"], _interval(t["val"]), *_paired(found["ties"]["val"]["compared"].get(t["trial"]), is_best),
                 _interval(t["test"]), *_paired(found["ties"]["test"]["compared"].get(t["trial"]), is_best)]
        body.append(f"<tr{' class=best' if is_best else ''}><td class=l>{e(cells[0])}</td>" +
                    "".join(f"<td>{e(c)}</td>" for c in cells[1:]) + "</tr>")
    parts += [f'<div class="scroll"><table id="intervals">{head}{"".join(body)}</table></div>',
              f"<p class=sub>Intervals: Wilson 95% on {images.get('val') or 'an unknown number of'} val and "
              f"{images.get('test') or 'an unknown number of'} test images. "
              "Paired: each trial against the best on the same images (exact McNemar test on the images only one of "
              f"the two got right); tied when p &ge; 0.05, where the difference is within chance.</p>"]
    if found.get("published_intervals"):
        rows = "".join(f"<tr><td>{r['lr']}</td><td>{r['momentum']}</td><td>{r['gamma']}</td>"
                       f"<td>{e(_interval(r['val']))}</td><td>{e(_interval(r['test']))}</td></tr>"
                       for r in found["published_intervals"])
        parts.append('<div class="scroll"><table id="published-intervals"><tr><th>lr</th><th>momentum</th>'
                     f"<th>gamma</th><th>published val % [95%]</th><th>test % [95%]</th></tr>{rows}</table></div>"
                     "<p class=sub>Published rows: unpaired intervals only, since the study kept no per-image "
                     "predictions; two of them overlap widely before they differ.</p>")
    return parts


def _public_tiny_imagenet_html(public: dict | None) -> list[str]:
    if not public:
        return []
    e, pct = html.escape, lambda v: "–" if v is None else f"{v:.1%}"  # noqa: E731
    ours, (low, high) = public["ours"], public["range"]
    mine = ours["official_val"] if ours["official_val"] is not None else ours["test"]
    where = ("below" if mine < low else "above" if mine > high else "within") if mine is not None else None
    body = "".join(f"<tr><td>{e(r['source'])}</td><td>{e(r['model'])}</td><td>{e(r['split'])}</td>"
                   f"<td>{pct(r['top1'])}</td></tr>" for r in public["rows"])
    return ["<h2>Beside public results on Tiny ImageNet-200</h2>",
            f"<p>The best checkpoint: <b>{pct(ours['official_val'])}</b> top-1 on the official validation images, "
            f"{pct(ours['test'])} on the test split"
            + (f"; {where} the range of the public AlexNet-from-scratch results below ({pct(low)} to {pct(high)})"
               if where else "") +
            ". Their training (epochs, input size, augmentation) and evaluation splits differ from this run's and "
            "from each other's: a range to place the run in, not a target.</p>",
            '<div class="scroll"><table id="public-tiny-imagenet"><tr><th>source</th><th>model</th>'
            f"<th>evaluated on</th><th>top-1</th></tr>{body}</table></div>"]


def _ended_early_html(rows: list[dict]) -> list[str]:
    """Why each trial that did not run to its last epoch ended (stopped by ASHA, diverged, failed)."""
    ended = [r for r in rows if r.get("reason")]
    if not ended:
        return []
    e = html.escape
    return ["<p>Ended before their last epoch:</p><ul id=ended-early>" +
            "".join(f"<li><code>{e(r['trial'])}</code> ({e(str(r['status']))}): {e(str(r['reason']))}</li>"
                    for r in ended) + "</ul>"]


def render_html(report: dict, table: tuple[list[str], list[list[str]], int | None], trials: list, made: dict) -> str:
    """The page of a report: `report` (what report.json holds), the results `table` (header, cells,
    index of the best row), the trials (name, hyperparameters, record) and the figures `made`."""
    e = html.escape
    best, ev = report["best"], report["evaluation"]
    header, cells, best_index = table
    pct = lambda v: "–" if v is None else f"{v:.1%}"  # noqa: E731
    cards = [("trials", str(len(cells)))]
    if best:
        cards += [("best val accuracy", f"{pct(best['best_val_accuracy'])} (epoch {best['best_epoch']})"),
                  ("test accuracy at best", pct(best["test_accuracy_at_best"]))]
    if ev:
        cards.append((f"{OFFICIAL_VAL} accuracy", pct((ev["official_val"] or {}).get("accuracy"))))
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>alexnet-tiny report: {e(report['name'])}"
             f"</title><style>{PAGE_STYLE}</style></head><body>",
             f"<h1>alexnet-tiny report: {e(report['name'])}</h1>",
             f"<p class=sub>{e(report['runs_dir'])} · generated {e(report['generated'])}</p>"]
    if report["missing"]:
        parts.append("<div class=missing><b>Missing</b><ul>" +
                     "".join(f"<li>{e(m)}</li>" for m in report["missing"]) + "</ul></div>")
    parts.append("<div class=cards>" + "".join(f"<div class=card>{e(k)}<b>{e(v)}</b></div>" for k, v in cards) + "</div>")
    if best:
        parts.append(f"<p>Best trial, chosen by validation accuracy only (by a configuration's mean over its runs when "
                     f"it ran more than once): <code>{e(best['trial'])}</code>.</p>")
    if ev:
        parts.append(f"<p>The best checkpoint is evaluated in <b>{e(ev['precision'])}</b>, the precision its trial "
                     f"was trained and selected in{' (bf16 autocast)' if ev['precision'] == 'bf16' else ''}.</p>")
    if ev and ev["official_val"]:
        parts.append(f"<p>The best checkpoint (epoch {ev['epoch']}) scores <b>{pct(ev['official_val']['accuracy'])}</b> "
                     f"on the {ev['official_val']['images']} <code>{OFFICIAL_VAL}</code> images, which no trial "
                     f"used for training or selection; {pct(ev['test']['accuracy'])} on the "
                     f"{ev['test']['images']} test images; with test-time flip averaging (each image and its "
                     f"mirror image) {pct(ev['official_val']['flip_accuracy'])} on {OFFICIAL_VAL}.</p>")
    if ev:
        parts.append(f"<p>Test accuracy with test-time flip averaging: {pct(ev['test']['flip_accuracy'])} (plain: "
                     f"{pct(ev['test']['accuracy'])}); the table and the selection use plain accuracy.</p>")
    parts += [*_findings_html(report.get("findings"), best, made),
              "<h2>Results</h2>", _table_html(header, cells, best_index),
              '<p class=sub>Also as <a href="results.csv">results.csv</a>, <a href="results.md">results.md</a> and '
              f'<a href="{FIGURES["table"][0]}">{FIGURES["table"][0]}</a>; results from each trial&rsquo;s config.json, '
              'curves from its TensorBoard files.</p>',
              *_ended_early_html(report["trials"]),
              *_published_html(report.get("published")),
              *_public_tiny_imagenet_html(report.get("public_tiny_imagenet")),
              *_grid_map_html(report.get("grid_map"), made),
              *(["<h2>Configurations over seeds</h2>", _configurations_html(report["configurations"], made)]
                if compares_configurations(report["configurations"]) else []),
              "<h2>Learning curves</h2>",
              _figure(made, "curves", "learning curves", "Loss and accuracy per epoch for every trial; the best in red."),
              "<h2>Per-class test accuracy</h2>",
              _figure(made, "per_class", "per-class test accuracy of the best trial, as bars sorted from best to "
                      "worst (the same numbers as the table below)", "The best trial's checkpoint on the test split, "
                      "sorted; the dashed line is the overall accuracy."),
              _per_class_html(ev),
              "<h2>Confusion matrix</h2>",
              _figure(made, "confusion", "confusion matrix of the best trial on the test split (the same counts as "
                      "the table below)", "Rows: true class, columns: predicted class (test split)."),
              _confusion_html(ev),
              "<h2>Sample predictions</h2>",
              _figure(made, "samples", "sample test images captioned with predicted and true class",
                      f"{len(ev['samples']) if ev else 0} test images chosen with seed {report['seed']}; caption "
                      f"“predicted / true”, green when right, red when wrong."),
              *_learned_html(report, made),
              "<h2>Hyperparameters</h2>", _hyperparameter_table(trials, best)]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def notebook_html(report: dict, figures_as: dict) -> str:
    """A report shown in Jupyter (report.Report): what the grid taught, then the results table; the
    figures given as `figures_as` {key: src} (data URIs: a notebook cell cannot link the folder)."""
    e = html.escape
    rows = report["trials"]
    varying = [h for h in HYPERPARAMETERS if len({repr(r.get(h)) for r in rows}) > 1]
    columns = ["trial", *varying, "status", "best_val_accuracy", "test_accuracy_at_best", "best_epoch"]
    header = [{"best_val_accuracy": "best val", "test_accuracy_at_best": "test at best",
               "best_epoch": "epoch"}.get(c, c) for c in columns]
    cells = [[format_value(r.get(c), c) for c in columns] for r in rows]
    best_index = next((i for i, r in enumerate(rows) if r.get("best")), None)
    parts = [f"<h3>alexnet-tiny report: {e(report['name'])}</h3>",
             *_findings_html(report.get("findings"), report.get("best"), figures_as),
             "<h2>Results</h2>", _table_html(header, cells, best_index)]
    return f"<div>{''.join(parts)}</div>"
