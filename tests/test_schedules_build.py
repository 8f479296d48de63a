"""One factory of named schedules (:func:`mlem.schedules.build`): what ``python -m sample``
builds, and what ``analysis.cost_error.make_probs`` (which calls it) builds."""

from __future__ import annotations

import json

import ml_collections
import numpy as np
import pytest

from analysis.cost_error import make_probs
from mlem import generation, schedules

TS = np.linspace(0.0, 0.999, 17)
COSTS = np.array([1e5, 4e5, 1.6e6])
VARIANCES = {"levels": ["a", "b", "c"], "bin_edges": [0.0, 0.3, 0.999],
             "variances": [[9.0, 2.0, 0.5], [9.0, 0.2, 0.01]]}


def make_probs_by_formula(schedule, level_costs, ts, variances, gamma, top_evals, learned=""):
    """What the sweep's schedules are, written out from the primitives of
    :mod:`mlem.schedules` (the reference ``make_probs``, which calls :func:`schedules.build`,
    must reproduce): ``variance`` per time bin, ``constant`` on time-averaged ``V_k``,
    ``dyadic`` and ``learned`` (a schedule file rescaled by ``c``)."""
    num_steps = len(ts) - 1
    v, inc = np.asarray(variances["variances"]), schedules.increment_costs(level_costs)
    make = {
        "variance": lambda c: schedules.on_grid(schedules.variance_optimal(v, inc, c),
                                                variances["bin_edges"], ts),
        "constant": lambda c: schedules.constant(schedules.variance_optimal(v.mean(0), inc, c),
                                                 num_steps),
        "dyadic": lambda c: schedules.constant(schedules.dyadic(len(level_costs), gamma, c),
                                               num_steps),
        "learned": lambda c: schedules.scaled(schedules.load(learned, len(level_costs), ts), c),
    }[schedule]
    c = schedules.knob_for_top_evals(make, top_evals)
    return c, make(c)


@pytest.mark.parametrize("schedule", ["variance", "constant", "dyadic", "learned"])
def test_build_reproduces_make_probs(schedule, tmp_path):
    learned = tmp_path / "learned.json"
    schedules.save(learned, np.array([[1.0, 0.3, 0.02], [1.0, 0.5, 0.2]]), [0.0, 0.5, 0.999])
    for top in (0.5, 2.0, 8.0):
        args = (schedule, COSTS, TS, VARIANCES, 2.5, top, str(learned))
        c_old, p_old = make_probs(*args)
        c_new, p_new = make_probs_by_formula(*args)
        assert c_new == pytest.approx(c_old, rel=1e-12)
        np.testing.assert_allclose(p_new, p_old, rtol=1e-12)
        assert p_new.shape == (16, 3) and schedules.top_evals(p_new) == pytest.approx(top)


def test_constant_and_file_are_the_given_probabilities_at_c_1(tmp_path):
    c, probs = schedules.build("constant", TS, COSTS, probs=[1.0, 0.5, 0.25])
    assert c == 1.0
    np.testing.assert_array_equal(probs, schedules.constant([1.0, 0.5, 0.25], 16))
    _, doubled = schedules.build("constant", TS, COSTS, probs=[1.0, 0.5, 0.25], c=2.0)
    np.testing.assert_allclose(doubled[0], [1.0, 1.0, 0.5])
    schedules.save(tmp_path / "s.json", np.array([1.0, 0.4, 0.1]))
    _, from_file = schedules.build("file", TS, COSTS, file=tmp_path / "s.json")
    np.testing.assert_array_equal(from_file, schedules.load(tmp_path / "s.json", 3, TS))
    with pytest.raises(ValueError, match="probs: every probability must lie in"):
        schedules.build("constant", TS, COSTS, probs=[1.0, 1.5, 0.25])  # not clipped away


def test_variance_schedule_is_the_variance_optimal_one_per_bin():
    v = np.asarray(VARIANCES["variances"])
    c, probs = schedules.build("variance", TS, COSTS, variances=v,
                               bin_edges=VARIANCES["bin_edges"], c=300.0)
    inc = schedules.increment_costs(COSTS)
    expected = schedules.on_grid(schedules.variance_optimal(v, inc, 300.0),
                                 VARIANCES["bin_edges"], TS)
    assert c == 300.0
    np.testing.assert_array_equal(probs, expected)
    assert not np.allclose(probs[0], probs[-1])  # time-dependent
    _, flat = schedules.build("variance", TS, COSTS, variances=v.mean(0), c=300.0)
    assert np.all(flat == flat[0])  # (K,) variances: constant in time


def test_build_refuses_unknown_names_missing_inputs_and_two_knobs():
    with pytest.raises(ValueError, match="schedule: must be one of constant, variance, dyadic, "
                                         "file, got 'learned'"):
        schedules.build("learned", TS, COSTS)
    with pytest.raises(ValueError, match="gamma: the schedule 'dyadic' needs it"):
        schedules.build("dyadic", TS, COSTS, c=1.0)
    with pytest.raises(ValueError, match="bin_edges: the schedule 'variance' needs it"):
        schedules.build("variance", TS, COSTS, variances=np.ones((2, 3)))
    with pytest.raises(ValueError, match="c, top_evals: give at most one knob"):
        schedules.build("dyadic", TS, COSTS, gamma=2.0, c=1.0, top_evals=2.0)
    with pytest.raises(ValueError, match="probs: has 2 entries but the ladder has 3 levels"):
        schedules.build("constant", TS, COSTS, probs=[1.0, 0.5])


def test_sample_builds_its_schedules_with_build(tmp_path):
    config = ml_collections.ConfigDict({"results_dir": "", "sampling": {
        "schedule": "constant", "probs": (1.0, 0.5, 0.25), "c": 30.0, "top_evals": 0.0,
        "variance_file": "", "schedule_file": ""}})
    names = tuple(VARIANCES["levels"])
    np.testing.assert_array_equal(generation.build_schedule(config, names, COSTS, TS),
                                  schedules.constant([1.0, 0.5, 0.25], 16))  # c ignored
    (tmp_path / "v.json").write_text(json.dumps(VARIANCES))
    config.sampling.update(schedule="variance", variance_file=str(tmp_path / "v.json"),
                           top_evals=3.0)
    probs = generation.build_schedule(config, names, COSTS, TS)
    assert schedules.top_evals(probs) == pytest.approx(3.0)
    config.sampling.schedule = "dyadic"  # build knows it; sample has no gamma to give it
    with pytest.raises(ValueError, match="schedule: must be one of constant, variance, file"):
        generation.build_schedule(config, names, COSTS, TS)
