"""Print README's results tables (Markdown) from results directories.

    python -m analysis.report results/mnist_cpu results/synthetic_gamma2.5_seeds96 ...

A directory written by ``analysis.testbed`` gives one row of the synthetic table; one
written by the image pipeline (``make demo``, ``experiments.celeba64``) gives its headline
table, every comparison (each ML-EM schedule against EM, in FLOPs and in seconds) and the
plain wall-clock sentence. Every number is read from the directory's ``summary.json`` (and
``cost_error/speedup.json``); nothing is typed by hand.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from absl import app

from analysis import cli
from mlem import cli as mlem_cli


def fmt(value, digits: int = 3) -> str:
    """A number with `digits` significant digits; "∞" and "−∞"; "n/a" for a missing or NaN one."""
    if isinstance(value, float) and abs(value) == float("inf"):
        return "∞" if value > 0 else "−∞"
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}g}"


def fmt_ci(pair, digits: int = 3) -> str:
    """An interval as "[lo, hi]"."""
    if not pair or any(v is None for v in pair):
        return "[n/a]"
    return f"[{fmt(pair[0], digits)}, {fmt(pair[1], digits)}]"


def synthetic_rows(dirs: Sequence[Path]) -> list[str]:
    """The synthetic testbed's table: exponents and speedups with 95% intervals over seeds."""
    lines = ["| equation | γ target | γ fitted | levels | seeds | EM exponent (theory γ+1) | "
             "ML-EM exponent (theory γ) | finite-ladder prediction | fit range (RMSE) | "
             "speedup at the fit range's low end | at its high end | wall time |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for d in dirs:
        s = json.loads((d / "summary.json").read_text())
        lo, hi = s["fit_range"]
        heun = s["config"].get("solver", "euler") == "heun"  # runs before the field: Euler
        equation = (f"ODE ({'Heun' if heun else 'Euler'})" if s["config"].get("noise", 1.0) == 0
                    else f"SDE ({'stochastic Heun' if heun else 'EM'})")
        lines.append(
            f"| {equation} | {fmt(s['gamma_target'])} | {fmt(s['gamma_fitted'], 4)} | "
            f"{s['config']['num_levels']} | {s['seeds']} | "
            f"{fmt(s['exponent_em'])} {fmt_ci(s.get('exponent_em_ci95'))} | "
            f"{fmt(s['exponent_mlem'])} {fmt_ci(s.get('exponent_mlem_ci95'))} | "
            f"{fmt(s.get('exponent_mlem_ideal_ladder'))} | {lo:.2g} – {hi:.2g} | "
            f"{_synthetic_speedup(s, 'low')} | {_synthetic_speedup(s, 'high')} | "
            f"{s['wall_time_s']:.0f} s |")
    dist = [(d, json.loads((d / "summary.json").read_text()).get("distributional"))
            for d in dirs]
    dist = [(d, x) for d, x in dist if x and x.get("targets")]
    if dist:
        lines += ["", "Distributional error (moments of a seed's batch against independent "
                  "exact solves; targets predeclared as multiples of the exact batches' own "
                  "floor): ML-EM's speedup over EM [95% CI], and the exponents of cost "
                  "against the error (EM, ML-EM).", "",
                  "| run | floor | " + " | ".join(dist[0][1]["targets"]) +
                  " | exponents EM, ML-EM |", "|---|---|" + "---|" * len(dist[0][1]["targets"])
                  + "---|"]
        for d, x in dist:
            e = x.get("exponents") or {}
            cells = [f"{fmt_value(t['speedup']['value'], '×')} {fmt_ci(t['speedup']['ci'])} "
                     f"(not reached: {fmt_failures(t['not_reached'], 'em', 'mlem')})"
                     for t in x["targets"].values()]
            exps = (f"{fmt_value(e['base']['value'])} {fmt_ci(e['base']['ci'])}, "
                    f"{fmt_value(e['other']['value'])} {fmt_ci(e['other']['ci'])}") if e else ""
            lines.append(f"| {d.name} | {fmt(x['floor'])} | " + " | ".join(cells) +
                         f" | {exps} |")
    return lines


def fmt_value(value, suffix: str = "") -> str:
    """A headline value, or "not reached" (the evaluation realisations do not reach it)."""
    return "not reached" if value is None else f"{fmt(value)}{suffix}"


def fmt_failures(not_reached: dict | None, base: str = "base", other: str = "other") -> str:
    """The fractions of resamples where each method (``base``, ``other``) fails to reach the
    target."""
    if not not_reached:
        return ""
    names = {"base": base, "other": other}
    return ", ".join(f"{names.get(k, k)} {v:.0%}" for k, v in not_reached.items())


def _synthetic_speedup(s: dict, end: str) -> str:
    """The speedup at one end of the synthetic fit range with its interval ("not measured"
    with fewer than 4 seeds)."""
    name = f"speedup_at_fit_range_{end}"
    if s.get(f"{name}_ci95") is None:
        return "not measured"
    return f"{fmt_value(s[name], '×')} {fmt_ci(s[f'{name}_ci95'])}"


def wallclock_sentence(summary: dict) -> str:
    """One plain sentence: is ML-EM faster or slower than EM in wall-clock, and by how much."""
    w = summary["wallclock_speedup_at_equal_mse"]
    value, (lo, hi) = w["at_operating_point"], w["at_operating_point_ci"]
    if value is None:
        return ("In wall-clock time the ML-EM configurations chosen on the selection "
                "realisations do not reach the operating MSE on the evaluation ones, so no "
                f"speedup is measured there (95% CI [{fmt(lo)}, {fmt(hi)}]).")
    verdict = "faster" if value > 1 else "slower"
    factor = value if value > 1 else 1 / value
    certain = lo > 1 or hi < 1
    hedge = "" if certain else " (the 95% interval includes 1: not a clear difference)"
    return (f"In wall-clock time as deployed ({summary.get('timing_record', 'see timings.json')})"
            f", ML-EM is {factor:.2f}× {verdict} than EM at the operating point (EM seconds ÷ "
            f"ML-EM seconds at equal MSE = {value:.2f}, 95% CI [{fmt(lo)}, {fmt(hi)}]){hedge}.")


def headline_rows(name: str, h: dict, suffix: str = "×") -> list[str]:
    """Rows of one headline comparison: the operating point and every predeclared target."""
    rows = []  # coarsest target first (the summary's keys come back sorted by name)
    for target, t in sorted(h["targets"].items(), key=lambda kv: -kv[1]["target_mse"]):
        rows.append(f"| {name}, at {target} (MSE {fmt(t['target_mse'])}) | "
                    f"{fmt_value(t['value'], suffix)} | {fmt_ci(t['ci'])} | "
                    f"{fmt_failures(t['not_reached'], h['against'], h['curve'])} |")
    return rows


def image_rows(d: Path) -> list[str]:
    """The headline table of an image sweep, its comparisons and the wall-clock sentence."""
    s = json.loads((d / "summary.json").read_text())
    detail = json.loads((d / "cost_error" / "speedup.json").read_text())
    f, w, r = (s["speedup_at_equal_mse"], s["wallclock_speedup_at_equal_mse"],
               s["mse_ratio_at_equal_cost"])
    lines = [f"**{d}** ({s['num_realisations']} evaluation realisations, "
             f"{s['num_selection_realisations']} selection realisations; operating point: "
             f"{s['operating_point']}, MSE {fmt(s['operating_point_mse'])} on the selection "
             f"realisations; best ML-EM variant {s['best_method']} in FLOPs, "
             f"{s['best_method_seconds']} in seconds, {f['chosen_on']}; intervals: "
             f"{f['interval']}, failures counted)", "",
             "| quantity | value | 95% CI | resamples not reaching the target |",
             "|---|---:|---|---|",
             f"| γ (used for predictions: {s.get('gamma_source')}) | {fmt(s.get('gamma'))} | "
             f"{fmt_ci(s.get('gamma_ci'))} | |",
             f"| γ (held-out loss power law with floor) | {fmt(s.get('gamma_loss'))} | "
             f"{fmt_ci(s.get('gamma_loss_ci'))} | |",
             f"| held-out loss, levels 1–{len(s.get('heldout_losses') or [])} | "
             f"{', '.join(fmt(v, 3) for v in s.get('heldout_losses') or [])} | | |",
             *headline_rows(f"speedup over EM, FLOPs ({f['curve']})", f),
             *headline_rows(f"speedup over EM, seconds ({w['curve']})", w),
             f"| MSE ratio at EM's operating FLOPs ({fmt(r['at_cost_flops'])}; EM ÷ "
             f"{r['curve']}) | {fmt_value(r['value'])} | {fmt_ci(r['ci'])} | |"]
    if s.get("top_level_evals_at_operating_point"):
        t = s["top_level_evals_at_operating_point"]
        lines.append(f"| whole-solve FLOPs at the operating MSE, in top-level calls | "
                     f"{fmt_value(t['value'])} | {fmt_ci(t['ci'])} | "
                     f"{t['curve']} {t['not_reached_fraction']:.0%} |")
    for key, ruler in (("speedup_over_switching_at_equal_mse", "FLOPs"),
                       ("wallclock_speedup_over_switching_at_equal_mse", "seconds")):
        if s.get(key):
            lines += headline_rows(f"speedup over switching, {ruler} ({s[key]['curve']})",
                                   s[key])
    if s.get("variance_time_averaged") is not None:
        lines.append(f"| V_k time-averaged, levels 1–{len(s['variance_time_averaged'])} | "
                     f"{', '.join(fmt(v) for v in s['variance_time_averaged'])} | | |")
    if s.get("variance_time_averaged") is not None and s.get("level_flops") is not None:
        vc = np.asarray(s["variance_time_averaged"]) * np.asarray(s["level_flops"]) / 1e6
        lines.append(f"| V_k·c_k time-averaged (per MFLOP of level k), levels 1–{vc.size} | "
                     f"{', '.join(fmt(v) for v in vc)} | | |")
    if s.get("variance_time_averaged_without_gaussian") is not None:
        values = s["variance_time_averaged_without_gaussian"]
        lines.append(f"| V_k time-averaged without the Gaussian, levels 2–{len(values) + 1} | "
                     f"{', '.join(fmt(v) for v in values)} | | |")
    if "total_wall_seconds" in s:
        lines.append(f"| wall time of the run that computed it | {s['total_wall_seconds']:.0f} s "
                     f"| | |")
    if s.get("pattern_search"):
        lines += ["", "| pattern search: point | patterns | selection MSE (where it won) | "
                  "evaluation MSE ± SE | FLOPs | squared bias vs top-level EM (noise) | "
                  "bias share of the distance |", "|---|---:|---:|---|---:|---|---:|"]
        for name, p in sorted(s["pattern_search"].items(),
                              key=lambda kv: kv[1]["point"]["top_evals"]):
            b = p["bias_against_top_level_em"]
            lines.append(f"| {name} | {p['num_patterns']} | {fmt(p['selection_mse'])} | "
                         f"{fmt(p['evaluation_mse'])} ± {fmt(p['evaluation_mse_se'], 2)} | "
                         f"{fmt(p['expected_flops'])} | {fmt(b['bias_sq'])} "
                         f"({fmt(b['bias_sq_noise'], 2)}) | {fmt(b['bias_share'], 2)} |")
    if s.get("kid_at_operating_cost"):
        lines += ["", *quality_rows(s)]
    first = next(iter(detail["comparisons"].values()))["flops"]["targets"]
    names = sorted(first, key=lambda name: -first[name]["target_error"])
    lines += ["", "| against EM: curve | ruler | " + " | ".join(names) + " |",
              "|---|---|" + "---|" * len(names)]
    for curve, by_ruler in sorted(detail["comparisons"].items()):
        for ruler, c in by_ruler.items():
            cells = [f"{fmt_value(c['targets'][n]['speedup']['value'], '×')} "
                     f"{fmt_ci(c['targets'][n]['speedup']['ci'])}" for n in names]
            lines.append(f"| {curve} | {ruler} | " + " | ".join(cells) + " |")
    lines += ["", wallclock_sentence(s)]
    if s.get("oracle"):
        lines += ["", *oracle_rows(s["oracle"], s.get("gamma"))]
    if s.get("distributional"):
        lines += ["", *distributional_rows(s["distributional"])]
    if s.get("samplers"):
        lines += ["", *samplers_rows(s["samplers"])]
    return lines


ERRORS = {"fd": "FD (features)", "moments": "pixel moments"}


def distributional_rows(d: dict) -> list[str]:
    """The distributional cost-to-ε table (:mod:`analysis.distributional`): per framing,
    comparison, error and predeclared target, both methods' FLOPs to reach it and the speedup
    in FLOPs and in seconds, with intervals and failures; then the exponents in FLOPs."""
    floors = ", ".join(f"{ERRORS[r]} {fmt(f['value'])} {fmt_ci(f['ci'])}"
                       for r, f in d["floor"].items())
    lines = [f"Distributional error against the oracle ({d['samples_per_point']} samples a "
             f"configuration against {d['oracle_samples']} oracle samples; floor, an "
             f"independent oracle set against the oracle's: {floors}; targets are multiples of "
             f"the floor; each method's path chosen on its selection sets):", "",
             "| framing | comparison | error | target | FLOPs (base) [95% CI] | FLOPs (other) "
             "[95% CI] | speedup, FLOPs [95% CI] | speedup, seconds [95% CI] | not reached "
             "(FLOPs) |", "|---|---|---|---|---|---|---|---|---|"]
    exps = []
    for framing, comps in d["comparisons"].items():
        for name, by_error in comps.items():
            base, other = name.split(" vs ")[1], name.split(" vs ")[0]
            for error, by_cost in by_error.items():
                flops, secs = by_cost["flops"], by_cost.get("seconds")
                for target, t in sorted(flops["targets"].items(),
                                        key=lambda kv: -kv[1]["target_error"]):
                    ts = secs["targets"][target]["speedup"] if secs else None
                    lines.append(
                        f"| {framing} | {name} | {ERRORS[error]} | {target} | "
                        f"{fmt_value(t['cost_base']['value'])} {fmt_ci(t['cost_base']['ci'])} | "
                        f"{fmt_value(t['cost_other']['value'])} "
                        f"{fmt_ci(t['cost_other']['ci'])} | "
                        f"{fmt_value(t['speedup']['value'], '×')} {fmt_ci(t['speedup']['ci'])} | "
                        + (f"{fmt_value(ts['value'], '×')} {fmt_ci(ts['ci'])}" if ts else "")
                        + f" | {fmt_failures(t['not_reached'], base, other)} |")
                if flops.get("exponents"):
                    e = flops["exponents"]
                    exps.append(f"| {framing} | {name} | {ERRORS[error]} | "
                                f"{', '.join(flops['exponent_targets'])} | "
                                f"{fmt_value(e['base']['value'])} {fmt_ci(e['base']['ci'])} | "
                                f"{fmt_value(e['other']['value'])} {fmt_ci(e['other']['ci'])} | "
                                f"{fmt_value(e['difference']['value'])} "
                                f"{fmt_ci(e['difference']['ci'])} |")
    if exps:
        lines += ["", "Exponents a of FLOPs ∝ ε^-a (ε the distributional error) over the "
                      "targets both paths reach on their selection sets:", "",
                      "| framing | comparison | error | targets | base | other | base − other |",
                      "|---|---|---|---|---|---|---|", *exps]
    return lines


def solver_comparison_rows(c: dict) -> list[str]:
    """The synthetic testbed's best single-level solver against its best multilevel one
    (:mod:`analysis.testbed.solvers`): per error and target, both costs, the speedup and
    failures; the solvers on each path."""
    kind = "ODE" if c["noise"] == 0 else "SDE"
    lines = [f"Synthetic {kind}, γ = {c['gamma']:g}: the cheapest single-level solver against "
             f"the cheapest multilevel one over the solvers {', '.join(c['solvers'])} (speedup "
             f"> 1: multilevel is cheaper):", "",
             "| error | target | single-level cost [95% CI] | multilevel cost [95% CI] | "
             "speedup [95% CI] | not reached | solvers on the paths (single; multilevel) |",
             "|---|---|---|---|---|---|---|"]
    for error, name in (("mse", "pathwise"), ("dist", "distributional")):
        e = c[error]
        used = "; ".join(", ".join(sorted({p["solver"] for p in e["paths"][k]}))
                         for k in ("single", "multilevel"))
        for target, t in e["targets"].items():
            lines.append(f"| {name} | {target} | {fmt_value(t['cost_single']['value'])} "
                         f"{fmt_ci(t['cost_single']['ci'])} | "
                         f"{fmt_value(t['cost_multilevel']['value'])} "
                         f"{fmt_ci(t['cost_multilevel']['ci'])} | "
                         f"{fmt_value(t['speedup']['value'], '×')} {fmt_ci(t['speedup']['ci'])} "
                         f"| {fmt_failures(t['not_reached'], 'single', 'multilevel')} | {used} |")
    return lines


def samplers_rows(d: dict) -> list[str]:
    """The samplers table (:mod:`analysis.samplers`): per reference, error and predeclared
    target, the cheapest single-level sampler of any kind against the cheapest multilevel
    one (framing ``all``), their FLOPs and the multilevel speedup in FLOPs and seconds; then
    the speedups in the ``own`` and ``oracle`` framings."""
    refs = d["references"]
    floors = "; ".join(f"{name}: " + ", ".join(
        f"{ERRORS[r]} {fmt(f['value'])} {fmt_ci(f['ci'])}" for r, f in ref["floor"].items())
        for name, ref in refs.items())
    lines = [f"The samplers users pick ({d['configurations']} configurations, each on its "
             f"selection sets; the {d['evaluated']} on a chosen path judged on their evaluation "
             f"sets). Floors (oracle: an independent oracle set; data: the oracle set against "
             f"the held-out data): {floors}. Speedup = cheapest single-level ÷ cheapest "
             f"multilevel (> 1: multilevel is cheaper):", "",
             "| reference | error | target | cheapest single-level | FLOPs [95% CI] | cheapest "
             "multilevel | FLOPs [95% CI] | speedup, FLOPs [95% CI] | speedup, seconds [95% CI] "
             "| not reached (FLOPs) |", "|---|---|---|---|---|---|---|---|---|---|"]
    others = []
    for framing, by_ref in d["comparisons"].items():
        for ref, by_error in by_ref.items():
            for error, by_cost in by_error.items():
                flops, secs = by_cost["flops"], by_cost.get("seconds")
                for target, t in sorted(flops["targets"].items(),
                                        key=lambda kv: -kv[1]["target_error"]):
                    ts = secs["targets"][target]["speedup"] if secs else None
                    sec = f"{fmt_value(ts['value'], '×')} {fmt_ci(ts['ci'])}" if ts else ""
                    fl = f"{fmt_value(t['speedup']['value'], '×')} {fmt_ci(t['speedup']['ci'])}"
                    fails = fmt_failures(t["not_reached"], "single", "multilevel")
                    if framing != "all":
                        others.append(f"| {framing} | {ref} | {ERRORS[error]} | {target} | "
                                      f"{fl} | {sec} | {fails} |")
                        continue
                    by = flops["reached_by"][target]
                    lines.append(
                        f"| {ref} | {ERRORS[error]} | {target} | {by['single'] or 'not reached'}"
                        f" | {fmt_value(t['cost_base']['value'])} "
                        f"{fmt_ci(t['cost_base']['ci'])} | {by['multilevel'] or 'not reached'} | "
                        f"{fmt_value(t['cost_other']['value'])} "
                        f"{fmt_ci(t['cost_other']['ci'])} | {fl} | {sec} | {fails} |")
    if others:
        lines += ["", "The same in the `own` framing (the top level alone against the full "
                      "ladder) and the `oracle` framing (levels and prefixes below the oracle's "
                      "network):", "",
                  "| framing | reference | error | target | speedup, FLOPs [95% CI] | speedup, "
                  "seconds [95% CI] | not reached (FLOPs) |", "|---|---|---|---|---|---|---|",
                  *others]
    return lines


def oracle_rows(o: dict, gamma: float | None) -> list[str]:
    """The oracle framing's cost-to-ε table (per comparison and ruler: both methods' costs to
    reach each predeclared MSE and the speedup, with intervals and failures) and the
    exponents of cost against ε beside ``1 + γ`` and ``γ``."""
    lines = [f"Oracle framing ({o['framing']}; {o['num_realisations']} evaluation and "
             f"{o['num_selection_realisations']} selection realisations; each method's "
             f"configurations chosen on the selection ones):", "",
             "| comparison | ruler | target MSE | cost (base) [95% CI] | cost (other) [95% CI] "
             "| speedup [95% CI] | not reached |", "|---|---|---:|---|---|---|---|"]
    exps = []
    for name, by_ruler in o["comparisons"].items():
        base, other = name.split(" vs ")[1], name.split(" vs ")[0]
        for ruler, c in by_ruler.items():
            for t in c["targets"].values():
                lines.append(
                    f"| {name} | {ruler} | {fmt(t['target_error'])} | "
                    f"{fmt_value(t['cost_base']['value'])} {fmt_ci(t['cost_base']['ci'])} | "
                    f"{fmt_value(t['cost_other']['value'])} {fmt_ci(t['cost_other']['ci'])} | "
                    f"{fmt_value(t['speedup']['value'], '×')} {fmt_ci(t['speedup']['ci'])} | "
                    f"{fmt_failures(t['not_reached'], base, other)} |")
            if c.get("exponents"):
                e = c["exponents"]
                exps.append(f"| {name} | {ruler} | {fmt_value(e['base']['value'])} "
                            f"{fmt_ci(e['base']['ci'])} | {fmt_value(e['other']['value'])} "
                            f"{fmt_ci(e['other']['ci'])} | {fmt_value(e['difference']['value'])} "
                            f"{fmt_ci(e['difference']['ci'])} |")
    if exps:
        theory = ("" if gamma is None else f": (1 + γ)/2 = {fmt((1 + gamma) / 2)} for EM and "
                  f"γ/2 = {fmt(gamma / 2)} for ML-EM")
        lines += ["", f"Exponents a of cost ∝ ε^-a over the targets, ε an MSE (the paper's "
                      f"1 + γ and γ are in RMSE, so in MSE they halve{theory}; γ = "
                      f"{fmt(gamma)} from analysis.fit_gamma):", "",
                  "| comparison | ruler | base | other | base − other |",
                  "|---|---|---|---|---|", *exps]
    return lines


def quality_rows(s: dict) -> list[str]:
    """Sample quality at equal cost (docs/quality.md): per method, KID and FD at the operating
    FLOPs and the cost at which it first reaches the top level's KID; the paired verdict."""
    top, feats = s["top_level_kid"], s["quality_features"]
    lines = [f"KID and FD of {feats['features']} features against {feats['data']}; the top "
             f"level on the finest grid: KID {fmt(top['value'])} {fmt_ci([top['lo'], top['hi']])},"
             f" FD {fmt(s['top_level_fd']['value'])}. Points on each method's envelope chosen "
             f"on the selection realisations' MSE.", "",
             "| method | point at the operating FLOPs | KID [95% CI] | FD | first reaches the "
             "top level's KID at (FLOPs; top-level calls; seconds) |", "|---|---|---|---:|---|"]
    for method, p in s["kid_at_operating_cost"].items():
        reach = s["cost_to_reach_top_level_kid"][method]
        where = ("never in the sweep" if reach["flops"] is None else
                 f"{fmt(reach['flops'])}; {fmt(reach['top_level_evals'])}; "
                 f"{fmt(reach['seconds'])} s")
        if p is None:
            lines.append(f"| {method} | none within the cost | | | {where} |")
            continue
        point = (f"{p['steps']} steps, {fmt(p['top_evals'])} top-level calls" if p["top_evals"]
                 else f"level {p['level']} before {fmt(p['switch_at'])}, then the top; "
                      f"{p['steps']} steps" if p["switch_at"]
                 else f"level {p['level']}, {p['steps']} steps")
        lines.append(f"| {method} | {point} | {fmt(p['kid']['value'])} "
                     f"{fmt_ci([p['kid']['lo'], p['kid']['hi']])} | {fmt(p['fd'])} | {where} |")
    d = s.get("kid_best_minus_em_at_operating_cost")
    if d:
        lines += ["", f"At the operating FLOPs, KID({d['methods'][0]}) − KID(EM) = "
                      f"{fmt(d['value'])}, 95% CI {fmt_ci([d['lo'], d['hi']])} (paired over "
                      f"realisations): {d['verdict']}."]
    return lines


def learn_rows(dirs: Sequence[Path]) -> list[str]:
    """The learned-schedule table of ``analysis.learn_probs``: the learned run chosen on the
    selection realisations ÷ the best constant or variance-optimal schedule at equal MSE, at
    predeclared targets, with 95% intervals over evaluation realisations."""
    lines = ["| results | problem | runs (anchor, λ) | chosen run | SGD steps | target (MSE) | "
             "learned ÷ best constant | learned ÷ constant | learned ÷ variance-optimal | "
             "wall time |", "|---|---|---|---|---:|---|---|---|---|---:|"]
    cell = lambda t: (f"{fmt_value(t['value'], '×')} {fmt_ci(t['ci'])} (not reached: "
                      f"{fmt_failures(t['not_reached'], 'baseline', 'learned')})")
    for d in dirs:
        s = json.loads((d / "summary.json").read_text())["learn_probs"]
        runs = ", ".join(f"({fmt(r['anchor_top_evals'])}, {fmt(r['lam'])})"
                         for r in s["per_lambda"])
        heads = s["speedup_learned_over_best_constant"]
        for name, t in sorted(heads.items(), key=lambda kv: -kv[1]["target_mse"]):
            lines.append(
                f"| {d} | {s['problem']} | {runs} | {s['chosen_run']} | "
                f"{s['config']['sgd_steps']} | {name} ({fmt(t['target_mse'])}) | {cell(t)} | "
                f"{cell(s['speedup_learned_over_constant'][name])} | "
                f"{cell(s['speedup_learned_over_variance'][name])} | "
                f"{s.get('wall_time_s', float('nan')):.0f} s |")
    return lines


def poisson_rows(d: Path) -> list[str]:
    """The Poisson-limit table of ``analysis.poisson_limit``: per step count, the error of
    Poisson ML-EM and of EM at the top level, and the evaluations of the corrections."""
    s = json.loads((d / "summary.json").read_text())
    rates = ", ".join(fmt(r) for r in s["rates"][1:])
    lines = [f"**{d}** (rates λ₂…λ_K = {rates} per solve; {s['config']['seeds']} seeds; "
             f"limit of the corrections' evaluations {fmt(s['correction_evals_limit'])})", "",
             "| steps N | Poisson ML-EM RMSE (± SE) | EM top level RMSE "
             "| evaluations of levels 2…K |",
             "|---:|---|---:|---:|"]
    for n, e, se, em, ev in zip(s["steps"], s["rmse"], s["rmse_se"], s["em_top_rmse"],
                                s["correction_evals"]):
        lines.append(f"| {n} | {fmt(e)} ± {fmt(se, 2)} | {fmt(em)} | {fmt(ev)} |")
    return lines


def report(dirs: Sequence[str | Path]) -> str:
    """All tables for ``dirs`` (synthetic directories first, in one table)."""
    dirs = [Path(d) for d in dirs]
    for d in dirs:
        if not (d / "summary.json").is_file():
            raise FileNotFoundError(f"{d}: no summary.json; run the analysis that writes it")
    kinds = {d: json.loads((d / "summary.json").read_text()) for d in dirs}
    synthetic = [d for d in dirs if "exponent_em" in kinds[d]]
    learned = [d for d in dirs if "learn_probs" in kinds[d] and "speedup_at_equal_mse"
               not in kinds[d]]
    lines = synthetic_rows(synthetic) if synthetic else []
    if learned:
        lines += ["", *learn_rows(learned)]
    for d in (d for d in dirs if d not in synthetic and d not in learned):
        if "solver_comparison" in kinds[d]:
            lines += ["", *solver_comparison_rows(kinds[d]["solver_comparison"])]
            continue
        lines += ["", *(poisson_rows(d) if "correction_evals" in kinds[d] else image_rows(d))]
    return "\n".join(lines).strip() + "\n"


def parse_flags(argv: Sequence[str]) -> list[str]:
    """absl's own flags only; the results directories are positional arguments."""
    return cli.parse(argv, lambda argv: None)


def run(argv: Sequence[str]) -> None:
    """Print the tables of the results directories ``argv[1:]``."""
    if len(argv) < 2:
        mlem_cli.fail("give one or more results directories: python -m analysis.report "
                      "RESULTS_DIR [RESULTS_DIR ...]")
    try:
        print(report(argv[1:]), end="")
    except (FileNotFoundError, KeyError) as err:
        mlem_cli.fail(err)


if __name__ == "__main__":
    app.run(run, flags_parser=parse_flags)
