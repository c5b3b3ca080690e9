"""What a grid taught: each hyperparameter's effect, how sure each accuracy is, which trials cannot
be told apart from the best, and the conclusions in words (report.json "findings", the page's first
section).

- Every accuracy gets its 95% Wilson interval (n images of its split).
- Every trial is compared with the best one **paired**, image by image (stats.mcnemar), on
  validation, where the choice is made, and on test: the trials with p >= 0.05 are tied with it.
  This needs each trial's per-image correctness at its best epoch (runlog.read_predictions).
- Effects: for each hyperparameter that varies (seed aside: seeds are replicates), the mean, spread
  and range of validation and test accuracy over the trials that share each value. Its size is the
  range of the value means; below the 95% margin of a difference of two accuracies on these images
  it is "within noise", and "none" when the means are equal. A field the schedule never reads is
  "inert" (config.inert_fields), whatever its numbers: its values are replicates.
- The two largest effects' interaction, and for SGD grids over lr and momentum, accuracy against
  lr / (1 - momentum), the step that momentum's geometric series sums to.
- For trials of the seed preset, the study's own conclusions (published.py) checked one by one.
"""
from __future__ import annotations

import math
import statistics

from . import runlog
from .config import HYPERPARAMETERS, inert_fields
from .published import SPLIT_IMAGES
from .results import format_value
from .stats import TIED_P, difference_margin, paired, rank_correlation, wilson

SPLITS = ("val", "test")
CONTINUOUS = 5  # a number hyperparameter at this many values or more (a random search's draws) is read as a
# trend over its values (Spearman's rho), beside the range of accuracies
METRIC = {"val": "best_val_accuracy", "test": "test_accuracy_at_best"}


def spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values), "max": max(values), "trials": len(values)}


def interval(correct: list[bool] | None, accuracy: float | None, n: int | None) -> dict | None:
    """An accuracy and its Wilson interval: from the images when known, else from accuracy x n."""
    if correct:
        k, n = sum(correct), len(correct)
    elif accuracy is not None and n:
        k = round(accuracy * n)
    else:
        return None  # no images (an empty split), or nothing known
    low, high = wilson(k, n)
    return {"accuracy": k / n, "correct": k, "images": n, "low": low, "high": high}


def effective_step(row: dict) -> float | None:
    momentum = row.get("momentum")
    if row.get("lr") is None or momentum is None or momentum >= 1:
        return None
    return row["lr"] / (1 - momentum)


# ----------------------------------------------------------------------------- the parts

def trial_intervals(scored: list[dict], correct: dict, images: dict) -> list[dict]:
    return [{"trial": r["trial"], **{s: interval(correct.get(r["trial"], {}).get(s), r.get(METRIC[s]), images.get(s))
                                     for s in SPLITS}} for r in scored]


def same_images(first: dict, second: dict, split: str) -> bool:
    """Paired only on the same images: as many, with the same labels where both runs kept them (two
    folders prepared with other splits can have as many images, not the same)."""
    if len(first[split]) != len(second[split]):
        return False
    labels = first.get("labels", {}).get(split), second.get("labels", {}).get(split)
    return None in labels or labels[0] == labels[1]


def ties(scored: list[dict], best: dict, correct: dict) -> dict:
    """Per split: each trial against the best, paired (None where either has no per-image record)."""
    out = {}
    mine = correct.get(best["trial"], {})
    for split in SPLITS:
        against = {}
        for r in scored:
            theirs = correct.get(r["trial"], {}).get(split)
            if r is best or not theirs or not mine.get(split) or not same_images(mine, correct[r["trial"]], split):
                continue
            test = paired(mine[split], theirs)
            against[r["trial"]] = {"best_only": test["only_first"], "trial_only": test["only_second"],
                                   "p": test["p"], "tied": test["tied"]}
        out[split] = {"compared": against, "tied": [t for t, c in against.items() if c["tied"]],
                      "unpaired": [r["trial"] for r in scored if r is not best and r["trial"] not in against]}
    return out


def effects(scored: list[dict], images: dict) -> list[dict]:
    """Each varying hyperparameter (seed aside), largest effect on validation first."""
    found = []
    for h in HYPERPARAMETERS:
        if h == "seed":
            continue
        values = sorted({repr(r.get(h)) for r in scored})
        if len(values) < 2:
            continue
        by_value = []
        for v in sorted({r.get(h) for r in scored}, key=lambda v: (str(type(v)), v)):
            members = [r for r in scored if r.get(h) == v]
            by_value.append({"value": v, **{s: spread([r[METRIC[s]] for r in members]) for s in SPLITS
                                            if all(r.get(METRIC[s]) is not None for r in members)}})
        means = [b["val"]["mean"] for b in by_value]
        size = max(means) - min(means)
        margin = difference_margin(statistics.fmean(means), images.get("val") or 0)
        margin = None if math.isnan(margin) else margin  # unknown image count: report.json has no NaN
        # inert only where no trial's schedule reads it (a grid over schedules changes these with them)
        reasons = [inert_fields(r).get(h) for r in scored]
        inert = set(reasons) if all(reasons) else set()
        if inert:
            verdict = "inert"
        elif size == 0:
            verdict = "none"
        elif margin is not None and size < margin:
            verdict = "within noise"
        else:
            verdict = "effect"
        numbers = [r.get(h) for r in scored]
        continuous = (len(by_value) >= CONTINUOUS and
                      all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers))
        rho = rank_correlation(numbers, [r["best_val_accuracy"] for r in scored]) if continuous else None
        found.append({"hyperparameter": h, "values": by_value, "size": size, "margin": margin, "verdict": verdict,
                      "inert": sorted(inert)[0] if inert else None, "continuous": continuous, "rho": rho})
    return sorted(found, key=lambda e: (e["verdict"] != "effect", -e["size"]))


def interaction(scored: list[dict], found: list[dict]) -> dict | None:
    """Mean validation accuracy over the first effect's values, one line per value of the second."""
    real = [e for e in found if e["verdict"] == "effect"]
    if len(real) < 2 or real[1].get("continuous"):  # a line per drawn value would be a line per trial
        return None
    x, line = real[0]["hyperparameter"], real[1]["hyperparameter"]
    xs = [b["value"] for b in real[0]["values"]]
    lines = []
    for lv in (b["value"] for b in real[1]["values"]):
        points = []
        for xv in xs:
            members = [r["best_val_accuracy"] for r in scored if r.get(x) == xv and r.get(line) == lv]
            points.append(statistics.fmean(members) if members else None)
        lines.append({"value": lv, "val": points})
    return {"x": x, "line": line, "xs": xs, "lines": lines}


def step_view(scored: list[dict]) -> dict | None:
    """Accuracy against lr / (1 - momentum), when both vary: points, and the configurations that
    share a step (equal steps, other lr and momentum) with their accuracies."""
    if len({r.get("lr") for r in scored}) < 2 or len({r.get("momentum") for r in scored}) < 2:
        return None
    points = [{"trial": r["trial"], "lr": r["lr"], "momentum": r["momentum"], "step": effective_step(r),
               "val": r["best_val_accuracy"], "test": r.get("test_accuracy_at_best")}
              for r in scored if effective_step(r) is not None]
    shared: dict[str, list[dict]] = {}
    for p in points:
        shared.setdefault(f"{p['step']:.6g}", []).append(p)
    same = [{"step": float(step), "configurations": sorted({(p["lr"], p["momentum"]) for p in ps}),
             "val": spread([p["val"] for p in ps])}
            for step, ps in shared.items() if len({(p["lr"], p["momentum"]) for p in ps}) > 1]
    return {"points": points, "rank_correlation": rank_correlation([p["step"] for p in points],
                                                                    [p["val"] for p in points]),
            "shared_steps": same}


def replicate_spread(groups: list[dict], images: dict) -> dict | None:
    """The seed-to-seed spread of configurations run more than once, beside the binomial one."""
    repeated = [g for g in groups if len(g["runs"]) > 1]
    if not repeated:
        return None
    sds = [g["best_val_accuracy"]["sd"] for g in repeated]
    p = statistics.fmean(g["best_val_accuracy"]["mean"] for g in repeated)
    n = images.get("val")
    inert = sorted({f"{f}: {reason}" for g in repeated for f, reason in g.get("inert", {}).items()})
    return {"configurations": len(repeated), "runs": sum(len(g["runs"]) for g in repeated),
            "seed_sd": statistics.fmean(sds), "binomial_sd": math.sqrt(p * (1 - p) / n) if n else None,
            "inert": inert}


# ----------------------------------------------------------------------------- the study's conclusions

def study_checks(comparison: dict, best: dict, on_test: dict) -> list[dict]:
    """The study's conclusions, each with what our trials of the seed preset say."""
    rows = [r for r in comparison["rows"]]
    checks = []
    pick = max(rows, key=lambda r: r["published"]["test"])
    by_val = max(rows, key=lambda r: r["published"]["val"])
    words = f"lr {format_value(pick['lr'])}, momentum {format_value(pick['momentum'])}"
    ours = [r for r in rows if r["trial"]]
    claim = f"The best configuration is {words}, gamma {format_value(pick['gamma'])} ({pick['published']['test']:.1%} test)."
    verdict = (f"Chosen by test accuracy (the notebook sorts its table by test); on validation its best was lr "
               f"{format_value(by_val['lr'])}, momentum {format_value(by_val['momentum'])} "
               f"({by_val['published']['val']:.1%}).")
    if ours:
        mine = next((r for r in ours if r["trial"] == best["trial"]), None)
        if mine is not None:
            same = (mine["lr"], mine["momentum"]) == (pick["lr"], pick["momentum"])
            verdict += (f" Ours, chosen on validation: lr {format_value(mine['lr'])}, momentum "
                        f"{format_value(mine['momentum'])}" + (" (the same configuration)." if same else "."))
        picked = [r["trial"] for r in ours if (r["lr"], r["momentum"]) == (pick["lr"], pick["momentum"])]
        compared = [t for t in picked if t == best["trial"] or t in on_test["compared"]]
        level = [t for t in compared if t == best["trial"] or t in on_test["tied"]]
        if compared:
            verdict += (f" On our test images, its trials are {'tied with' if level else 'below'} our best "
                        f"(paired, p {'>=' if level else '<'} {TIED_P}).")
        elif picked:
            verdict += " Its trials have no per-image predictions here: not compared with our best."
    checks.append({"claim": claim, "verdict": verdict})
    gaps = [p["published_gap"] for p in comparison["pairs"] if p["published_gap"] is not None]
    our_gaps = [p["our_gap"] for p in comparison["pairs"] if p["our_gap"] is not None]
    verdict = ("Inert, as its code ran: its StepLR was stepped with the loss as the epoch, so the learning rate "
               "never moved and the two gammas are the same configuration trained twice (here from seeds 0 and 1); "
               f"the published pairs differ by {statistics.fmean(gaps):.1%} test on average")
    verdict += (f", ours by {statistics.fmean(our_gaps):.1%}: run-to-run noise." if our_gaps else ".")
    checks.append({"claim": "gamma (0.1 or 0.01) changes the result.", "verdict": verdict})
    config_means = []
    for key in {(r["lr"], r["momentum"]) for r in rows}:
        pub = [r["published"]["test"] for r in rows if (r["lr"], r["momentum"]) == key]
        mine = [r["final"]["test"] for r in ours if (r["lr"], r["momentum"]) == key and r["final"].get("test") is not None]
        if mine:
            config_means.append((statistics.fmean(pub), statistics.fmean(mine)))
    rho = rank_correlation([a for a, _ in config_means], [b for _, b in config_means])
    if rho is not None:
        checks.append({"claim": "The ranking of the configurations (published test accuracy, mean of each pair).",
                       "verdict": f"Ours ranks the {len(config_means)} configurations with Spearman rho {rho:.2f} "
                                  f"against the published ranking (final models' test accuracy)."})
    return checks


def published_intervals(comparison: dict) -> list[dict]:
    """The published rows' accuracies with their intervals: unpaired, as the study kept no per-image
    predictions."""
    return [{"lr": r["lr"], "momentum": r["momentum"], "gamma": r["gamma"],
             **{s: interval(None, r["published"][s], SPLIT_IMAGES[s]) for s in SPLITS}} for r in comparison["rows"]]


# ----------------------------------------------------------------------------- all of it

def conclusions(found: list[dict], best: dict, tie: dict, steps: dict | None, replicates: dict | None,
                groups: list[dict]) -> list[str]:
    said = []
    real = [e for e in found if e["verdict"] == "effect"]
    if real:
        said.append("Ranked by effect on validation accuracy (range of the means over each one's values): " + "; ".join(
            f"{e['hyperparameter']}{'*' if e.get('with_stopped') else ''} {100 * e['size']:.1f} points"
            for e in real) + ".")
    for e in found:
        if e.get("rho") is not None:
            trend = ("rises with it" if e["rho"] > 0 else "falls as it grows") if abs(e["rho"]) >= 0.5 else "has no clear trend"
            said.append(f"{e['hyperparameter']}, at {len(e['values'])} values from {format_value(e['values'][0]['value'])} "
                        f"to {format_value(e['values'][-1]['value'])}: validation accuracy {trend} (Spearman rho "
                        f"{e['rho']:.2f} over the trials).")
        if e["verdict"] == "inert":
            said.append(f"{e['hyperparameter']} had no effect by construction: {e['inert']}; its values are replicates.")
        elif e["verdict"] == "none":
            said.append(f"{e['hyperparameter']} had no effect: equal accuracy at every value.")
        elif e["verdict"] == "within noise":
            said.append(f"{e['hyperparameter']}: {100 * e['size']:.1f} points between its values, within the noise of "
                        f"these images (95% margin {100 * e['margin']:.1f} points).")
    repeated = next((g for g in groups if best["trial"] in [r["trial"] for r in g["runs"]] and len(g["runs"]) > 1), None)
    if repeated:
        said.append(f"Best configuration (mean validation accuracy over {len(repeated['runs'])} runs): "
                    f"{repeated['label']}, val {repeated['best_val_accuracy']['mean']:.1%} +- "
                    f"{repeated['best_val_accuracy']['sd']:.1%}, test {repeated['test_accuracy_at_best']['mean']:.1%}; "
                    f"its best run {best['trial']} is evaluated below.")
    else:
        said.append(f"Best trial (validation): {best['trial']}, val {best['best_val_accuracy']:.1%}"
                    + (f", test {best['test_accuracy_at_best']:.1%}." if best.get("test_accuracy_at_best") is not None
                       else "."))
    for split, where in (("val", "validation"), ("test", "test")):
        t = tie.get(split, {})
        if t.get("compared"):
            names = ", ".join(t["tied"]) if t["tied"] else "none"
            said.append(f"Tied with it on {where} (paired McNemar, p >= {TIED_P}): {names}"
                        + (f"; {len(t['unpaired'])} trial(s) without per-image predictions not compared." if t["unpaired"]
                           else "."))
        elif t.get("unpaired"):
            said.append(f"On {where}, no trial could be compared with it image by image (no per-image predictions).")
    if steps is not None and steps["rank_correlation"] is not None:
        rho = steps["rank_correlation"]
        trend = "rises" if rho > 0 else "falls"
        text = (f"lr and momentum act nearly as one step, lr / (1 - momentum): validation accuracy {trend} with it "
                if abs(rho) >= 0.7 else
                "Validation accuracy against the step lr / (1 - momentum): no clear trend ") + f"(Spearman rho {rho:.2f})"
        for s in steps["shared_steps"]:
            pairs = " and ".join(f"lr {format_value(lr)}, momentum {format_value(m)}" for lr, m in s["configurations"])
            text += f"; {pairs} share the step {s['step']:.3g} and differ by {s['val']['max'] - s['val']['min']:.1%}"
        said.append(text + ".")
    if replicates is not None:
        said.append(f"Run to run: {replicates['configurations']} configuration(s) run more than once vary by "
                    f"{replicates['seed_sd']:.1%} (sd of validation accuracy), where the images alone give "
                    + (f"{replicates['binomial_sd']:.1%}." if replicates["binomial_sd"] else "an unknown spread."))
    return said


def find(rows: list[dict], best: dict | None, correct: dict, groups: list[dict], comparison: dict | None) -> dict | None:
    """Everything above, for the scored trials (done or stopped at a rung, with a validation score).
    `correct`: {trial: {split: [bool per image]}} for the trials whose predictions are known."""
    scored = [r for r in rows if r.get("status") in runlog.SCORED and r.get("best_val_accuracy") is not None]
    if best is None or not scored:
        return None
    images = {s: next((len(c[s]) for c in correct.values() if s in c), None) for s in SPLITS}
    if images["val"] is None and comparison is not None:
        images = {s: SPLIT_IMAGES[s] for s in SPLITS}  # the seed preset's splits
    # Trials stopped early at a rung were scored at fewer epochs: an effect is measured on the finished
    # trials where they vary it, else on all scored ones (ASHA stopped every other value), said so.
    done = [r for r in scored if r["status"] == runlog.STATUS_DONE]
    found = effects(done, images)
    on_done = {e["hyperparameter"] for e in found}
    with_stopped = [dict(e, with_stopped=True) for e in effects(scored, images) if e["hyperparameter"] not in on_done]
    found = sorted(found + with_stopped, key=lambda e: (e["verdict"] != "effect", -e["size"]))
    tie = ties(scored, best, correct)
    steps = step_view(done) or step_view(scored)
    replicates = replicate_spread(groups, images)
    said = conclusions(found, best, tie, steps, replicates, groups)
    stopped = len(scored) - len(done)
    if stopped:
        said.insert(1 if found else 0, f"{stopped} trial(s) stopped early at a rung (ASHA) are scored at the epoch "
                    "they stopped: " + ("effects marked * include them, which exaggerates those." if with_stopped
                                        else "the effects compare the finished trials."))
    result = {"images": images, "intervals": trial_intervals(scored, correct, images), "ties": tie, "effects": found,
              "effects_over": [r["trial"] for r in done], "interaction": interaction(scored if any(e.get("with_stopped") for e in found[:2]) else done, found), "steps": steps,
              "replicates": replicates, "conclusions": said, "study": None}
    if comparison is not None:
        result["study"] = study_checks(comparison, best, tie["test"])
        result["published_intervals"] = published_intervals(comparison)
    return result
