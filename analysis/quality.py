"""Sample quality beside MSE: KID and FD of the cost–error sweep's points (docs/quality.md).

MSE to the coupled reference says how close a sampler's paths are to the top level's; KID
and FD say how close its *distribution* is to the data's. ``config.analysis.quality``:

* ``features``: ``'classifier'`` (MNIST-5k: the small classifier of :mod:`mlem.eval.features`,
  trained once and cached in ``WORKDIR/classifier``; the data are the 500 held-out
  digits), ``'inception'`` (CelebA: the FID Inception-v3 with the weights file
  ``inception_weights``; the data are the features and ``(μ, Σ)`` in the npz ``reference``
  written by ``python -m analysis.reference_stats``), or ``''`` (off).
* ``kid_subsets``, ``kid_subset_size``, ``bootstrap``: KID's subsets and the resamples of
  every interval.

:mod:`analysis.cost_error` keeps the features of every solve, one ``(B, d)`` array per
configuration and realisation, in ``cost_error/features.npz``; :func:`analyse` turns them
into, per method (EM at each level, ``em`` over all levels, each ML-EM curve, switching,
pattern search):

* its **envelope**: the configurations whose mean MSE on the *selection* realisations is
  below that of every cheaper one (so nothing is chosen on the realisations it is judged
  on), each with KID and FD on the evaluation realisations, KID with a 95% interval whose
  resamples are realisations;
* **at the operating cost** (the FLOPs, or seconds, of EM at the top level with
  ``sampling.steps`` steps): the envelope's costliest point within that cost;
* the cost at which it **first reaches the top level's KID**: the cheapest envelope point
  whose KID is at most the upper end of the interval of the reference solves' own KID;

and the best ML-EM variant's KID minus EM's at the operating cost, paired over realisations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from analysis import common, comparison
from mlem import files
from mlem.eval import features as feature_nets
from mlem.eval import metrics

FEATURES = ("classifier", "inception")
CLASSIFIER_DIR = "classifier"  # under the workdir
INPUT = "samples clipped to [-1, 1]"  # what the feature networks see
RULERS = {"flops": "FLOPs per sample", "seconds": "seconds per solve of a batch"}


@dataclasses.dataclass(frozen=True, eq=False)
class Features:
    """A feature network and the data's features the samples are judged against."""

    kind: str
    fn: Callable[[np.ndarray], np.ndarray]  # images (B, H, W, C) → (B, d) float32
    data: np.ndarray  # (N, d) features of the data (KID)
    data_stats: tuple[np.ndarray, np.ndarray]  # their (μ, Σ) (FD), or the saved ones
    record: dict  # what identifies the features (the settings of the sweep record it)


def settings(config: Any) -> dict:
    """``config.analysis.quality`` (defaults and meanings: ``configs/sample_base.py``);
    ``features`` checked."""
    q = dict(config.analysis.quality)
    if q["features"] not in ("", *FEATURES):
        raise ValueError(f"config.analysis.quality.features: choose '', "
                         f"{', '.join(FEATURES)}; got {q['features']!r}")
    for key in ("classifier_steps", "kid_subsets", "kid_subset_size", "bootstrap"):
        q[key] = int(q[key])
    return q


def features_for(ctx: common.Context) -> Features | None:
    """The configured features (training the MNIST classifier on first use), or ``None``."""
    q = settings(ctx.config)
    if q["features"] == "classifier":
        return _classifier(ctx, q)
    if q["features"] == "inception":
        return _inception(ctx, q)
    return None


def prepare_features(config: Any, workdir: str | Path) -> None:
    """Train (and cache) the MNIST-5k classifier of ``config.analysis.quality`` ahead of the
    analysis, e.g. beside the ladder's training; nothing for other features."""
    q = settings(config)
    if q["features"] != "classifier":
        return
    from mlem.config_files import load_config

    data = load_config(config.train_configs[0]).data
    if data.name == "mnist5k":
        feature_nets.load_or_train_classifier(Path(workdir) / CLASSIFIER_DIR,
                                              int(data.image_size), q["classifier_steps"])


def required_features(ctx: common.Context, field: str) -> Features:
    """:func:`features_for`, or a ``ValueError`` saying that ``field`` needs them."""
    feats = features_for(ctx)
    if feats is None:
        raise ValueError(f"{field} needs features for FD: set config.analysis.quality.features "
                         f"('classifier' on MNIST-5k, 'inception' on CelebA)")
    return feats


def _classifier(ctx: common.Context, q: dict) -> Features:
    from mlem.data.mnist import mnist5k

    data = ctx.level_configs[0]["data"]
    if data["name"] != "mnist5k":
        raise ValueError(f"config.analysis.quality.features='classifier' is the MNIST-5k "
                         f"classifier, but the ladder is trained on {data['name']}; use "
                         f"'inception' (CelebA) or ''")
    size = int(data["image_size"])
    workdir = ctx.workdir / CLASSIFIER_DIR
    params, record = feature_nets.load_or_train_classifier(workdir, size, q["classifier_steps"])
    print(f"[quality] MNIST-5k classifier ({workdir}): held-out accuracy "
          f"{record['heldout_accuracy']:.1%}", flush=True)
    rms = record["feature_rms"]
    heldout, _ = mnist5k("heldout", size)
    data = feature_nets.classifier_features(params, heldout, rms)
    return Features("classifier",
                    lambda x: feature_nets.classifier_features(params, _clipped(x), rms),
                    data, metrics.gaussian_stats(data),
                    {"features": "classifier", **record, "input": INPUT,
                     "data": f"the {len(heldout)} held-out MNIST-5k digits"})


def check_files(config: Any) -> dict:
    """``settings(config)``, after checking that the files the features need exist (the
    pipelines call it before training, so a missing file stops a run at once)."""
    q = settings(config)
    if q["features"] != "inception":
        return q
    weights, reference = q["inception_weights"], q["reference"]
    if not weights or not Path(weights).is_file():
        raise FileNotFoundError(
            f"config.analysis.quality.inception_weights: Inception weights file {weights!r} "
            f"not found; convert pytorch-fid's pt_inception-2015-12-05 weights to npz "
            f"(docs/quality.md) or set --config.analysis.quality.features=''")
    if not reference or not Path(reference).is_file():
        raise FileNotFoundError(
            f"config.analysis.quality.reference: reference statistics {reference!r} not found; "
            f"write them with python -m analysis.reference_stats (docs/quality.md)")
    return q


def _inception(ctx: common.Context, q: dict) -> Features:
    from analysis import reference_stats
    from mlem.eval.inception import load_inception_params

    check_files(ctx.config)
    weights, reference = q["inception_weights"], q["reference"]
    saved = reference_stats.load_reference(reference)
    fn = feature_nets.inception_feature_fn(load_inception_params(weights))
    return Features("inception", lambda x: fn(_clipped(x)),
                    saved["features"].astype(np.float32), (saved["mu"], saved["sigma"]),
                    {"features": "inception", "input": INPUT,
                     "weights_sha256": files.file_sha256(weights),
                     "reference_sha256": files.file_sha256(reference), "data": reference})


def _clipped(images: np.ndarray) -> np.ndarray:
    """Samples as an image file would hold them: clipped to the data range ``[-1, 1]`` (MSE
    is measured on the unclipped samples)."""
    return np.clip(np.asarray(images, np.float32), -1.0, 1.0)


# --- the features of the sweep's rows ----------------------------------------------------

FEATURES_FILE = "features.npz"


def row_id(row: Mapping) -> str:
    """The key of one (configuration, realisation) in ``features.npz``."""
    return "|".join(comparison.config_key(row)) + f"|r{int(row['realisation'])}"


def load_row_features(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        return {}
    with np.load(path) as saved:
        return {k: saved[k] for k in saved.files}


def save_row_features(path: Path, rows: Sequence[Mapping], store: Mapping[str, np.ndarray]
                      ) -> None:
    """The features of ``rows`` (those present), written atomically."""
    keep = {k: store[k] for k in map(row_id, rows) if k in store}
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **keep)
    tmp.replace(path)


# --- statistics --------------------------------------------------------------------------

def analyse(rows: Sequence[dict], row_features: Mapping[str, np.ndarray],
            reference_features: Sequence[np.ndarray], feats: Features, config: Any,
            num_levels: int, best_method: str) -> dict:
    """KID and FD of every method's envelope, at the operating cost, the cost to reach the
    top level's KID, and ``best_method`` against EM at the operating cost (module docstring).

    ``reference_features``: per evaluation realisation, the features of the reference
    solves (the top level on the finest grid)."""
    q = settings(config)
    evaluation, selection = comparison.split_rows(rows, config)
    configs, sweep_ = comparison.table(evaluation)
    op, op_text = comparison.operating_point(config, configs, sweep_, num_levels)
    realisations = sorted({r["realisation"] for r in evaluation})
    missing = [row_id(r) for r in evaluation if row_id(r) not in row_features]
    if missing:
        raise ValueError(f"cost_error/features.npz lacks {len(missing)} solves (e.g. "
                         f"{missing[0]}); rerun python -m analysis.cost_error --recompute")
    kid_args = dict(num_subsets=q["kid_subsets"], subset_size=q["kid_subset_size"])
    units = lambda i: [row_features[row_id({**configs[i], "realisation": r})]
                       for r in realisations]
    cache: dict[int, dict] = {}

    def judged(i: int) -> dict:
        if i not in cache:
            f = units(i)
            cache[i] = {"kid": metrics.kid_with_ci(f, feats.data, **kid_args,
                                                   num_resamples=q["bootstrap"]),
                        "fd": metrics.frechet_distance(*metrics.gaussian_stats(np.concatenate(f)),
                                                       *feats.data_stats)}
        return cache[i]

    top = {"kid": metrics.kid_with_ci(list(reference_features), feats.data, **kid_args,
                                      num_resamples=q["bootstrap"]),
           "fd": metrics.fd_with_ci(list(reference_features), feats.data_stats,
                                    num_resamples=min(q["bootstrap"], 100))}
    chooser = _selection_mse(selection, configs) if selection else sweep_.error.mean(1)
    cost = {"flops": sweep_.costs["flops"], "seconds": sweep_.costs["seconds"].mean(1)}
    budget = {ruler: float(c[op]) for ruler, c in cost.items()}
    top_flops = float(cost["flops"][op] / configs[op]["steps"])
    methods = {}
    for method, members in _methods(configs).items():
        methods[method] = {}
        for ruler, c in cost.items():
            env = _envelope(members, c, chooser)
            points = [{**_describe(configs[i]), "cost": float(c[i]), **judged(i)} for i in env]
            within = [p for p in points if p["cost"] <= budget[ruler] * (1 + 1e-9)]
            reach = [p for p in points if p["kid"]["value"] <= top["kid"]["hi"]]
            methods[method][ruler] = {
                "envelope": points, "at_operating_cost": within[-1] if within else None,
                "reaches_top_level_kid_at": reach[0] if reach else None}
        reach = methods[method]["flops"]["reaches_top_level_kid_at"]
        if reach:
            reach["top_level_evals"] = reach["cost"] / top_flops
    difference = _best_against_em(methods, best_method, configs, units, feats, q)
    return {"features": feats.record, "num_realisations": len(realisations),
            "samples_per_point": int(sum(len(u) for u in reference_features)),
            "envelope_chosen_on": ("selection realisations' MSE" if selection
                                   else "evaluation realisations' MSE (no selection ones)"),
            "operating_cost": {**budget, "point": op_text},
            "top_level": top, "methods": methods, "best_minus_em_at_operating_cost": difference}


def _selection_mse(selection: Sequence[dict], configs: Sequence[dict]) -> np.ndarray:
    """``(P,)`` mean MSE of each of ``configs`` over the selection realisations."""
    chosen, sweep_ = comparison.table(selection)
    mean = dict(zip(map(comparison.config_key, chosen), sweep_.error.mean(1)))
    return np.array([mean[comparison.config_key(c)] for c in configs])


def _methods(configs: Sequence[dict]) -> dict[str, list[int]]:
    """Configuration indices of each method: ``em-level<k>``, ``em`` (every level), each
    other curve."""
    out: dict[str, list[int]] = {}
    for i, c in enumerate(configs):
        if c["method"] == "em":
            out.setdefault("em", []).append(i)
            out.setdefault(f"em-level{c['level']}", []).append(i)
        else:
            out.setdefault(c["curve"], []).append(i)
    return dict(sorted(out.items()))


def _envelope(members: Sequence[int], cost: np.ndarray, chooser: np.ndarray) -> list[int]:
    """The members with a finite cost (a configuration off every seconds path is not timed),
    by increasing cost, whose ``chooser`` MSE is below every cheaper one's."""
    out, best = [], np.inf
    finite = [i for i in members if np.isfinite(cost[i])]
    for i in sorted(finite, key=lambda i: (cost[i], chooser[i])):
        if chooser[i] < best:
            out.append(i)
            best = chooser[i]
    return out


def _describe(config: Mapping) -> dict:
    return {k: config[k] for k in ("curve", "level", "top", "steps", "top_evals", "switch_at")}


def _best_against_em(methods: dict, best: str, configs: Sequence[dict], units, feats: Features,
                     q: dict) -> dict | None:
    """``KID(best) − KID(em)`` at the operating FLOPs, paired over realisations."""
    if best not in methods or "em" not in methods:
        return None
    points = {m: methods[m]["flops"]["at_operating_cost"] for m in (best, "em")}
    if any(p is None for p in points.values()):
        return None
    index = {comparison.config_key(c): i for i, c in enumerate(configs)}
    pick = {m: index[comparison.config_key(p)] for m, p in points.items()}
    diff = metrics.kid_difference_with_ci(units(pick[best]), units(pick["em"]), feats.data,
                                          q["kid_subsets"], q["kid_subset_size"],
                                          q["bootstrap"])
    verdict = ("worse than EM" if diff["lo"] > 0 else "better than EM" if diff["hi"] < 0
               else "equal to EM within the interval")
    return {**diff, "methods": [best, "em"], "verdict": f"{best} is {verdict} in KID",
            "points": points}


def summary_fields(result: Mapping) -> dict:
    """The fields ``summary.json`` gains: per method, the KID at the operating FLOPs with its
    interval and the cost at which it first reaches the top level's KID; the top level's KID;
    the best variant against EM."""
    at_op, reach = {}, {}
    for method, rulers in result["methods"].items():
        p = rulers["flops"]["at_operating_cost"]
        at_op[method] = None if p is None else {
            "kid": p["kid"], "fd": p["fd"], "flops": p["cost"],
            **{k: p[k] for k in ("level", "steps", "top_evals", "switch_at")}}
        r = rulers["flops"]["reaches_top_level_kid_at"]
        s = rulers["seconds"]["reaches_top_level_kid_at"]
        reach[method] = {"flops": r and r["cost"], "top_level_evals": r and r["top_level_evals"],
                         "seconds": s and s["cost"]}
    return {"kid_at_operating_cost": at_op, "cost_to_reach_top_level_kid": reach,
            "top_level_kid": result["top_level"]["kid"],
            "top_level_fd": result["top_level"]["fd"],
            "kid_best_minus_em_at_operating_cost": result["best_minus_em_at_operating_cost"],
            "quality_features": result["features"]}
