"""UNet and ladder registry: shapes, conditioning, sizes along each ladder, bad input."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlem import cost
from mlem.models import UNet, get_model, level_names, registry

LADDER_SHAPES = {"tiny": (8, 8, 3), "smoke": (8, 8, 3), "mnist": (16, 16, 1),
                 "celeba64": (64, 64, 3)}


def _init(model, shape, batch=2, seed=0):
    """Random parameters of the right shapes, images and times ``linspace(0.1, 0.9)``.

    Not ``model.init``: zero-initialised output convs would hide the inputs, and compiling
    the init's RNG graph takes tens of seconds on a busy CPU. Kernels ~ N(0, 1/fan_in).
    """
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((batch, *shape)), jnp.float32)
    t = jnp.linspace(0.1, 0.9, batch)
    shapes = jax.eval_shape(model.init, {"params": jax.random.key(0)}, x, t)["params"]

    def draw(path, s):
        assert s.dtype == jnp.float32, (path, s.dtype)  # params stay float32 for any dtype
        if len(s.shape) > 1:
            return rng.standard_normal(s.shape) / math.sqrt(math.prod(s.shape[:-1]))
        centre = 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else 0.0  # GroupNorm
        return centre + 0.1 * rng.standard_normal(s.shape)

    params = jax.tree_util.tree_map_with_path(lambda p, s: jnp.asarray(draw(p, s), jnp.float32),
                                              shapes)
    return params, x, t


def _apply(model):
    """Jitted ``model.apply`` (eager Flax dispatches op by op and is slow on a busy CPU)."""
    return jax.jit(model.apply, static_argnames="train")


def _param_count(name, shape):
    model = get_model(name)
    x, t = jnp.zeros((1, *shape)), jnp.zeros((1,))
    shapes = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, x, t))
    return sum(math.prod(s.shape) for s in jax.tree.leaves(shapes))


def _flops(name, shape):
    model = get_model(name)
    x, t = jnp.zeros((1, *shape)), jnp.full((1,), 0.5)
    params = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, x, t))["params"]
    return cost.flops_per_sample(lambda p, x, t: model.apply({"params": p}, x, t),
                                 params, x, t, batch_size=1)


@pytest.mark.parametrize("name", ["tiny_level1", "tiny_level2"])
def test_output_shape_dtype_and_finite(name):
    model = get_model(name)
    params, x, t = _init(model, (8, 8, 3), batch=3)
    out = _apply(model)({"params": params}, x, t)
    assert out.shape == x.shape and out.dtype == jnp.float32
    assert np.all(np.isfinite(out)) and float(jnp.std(out)) > 1e-2


def test_bfloat16_compute_keeps_float32_params_and_output():
    model = get_model("tiny_level1", dtype="bfloat16")
    params, x, t = _init(model, (8, 8, 3))
    out = _apply(model)({"params": params}, x, t)
    ref = _apply(get_model("tiny_level1"))({"params": params}, x, t)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref, atol=0.05 * float(jnp.abs(ref).max()))


def test_time_conditioning_changes_output_and_is_per_example():
    model = get_model("tiny_level2")
    params, x, _ = _init(model, (8, 8, 3))
    apply = _apply(model)
    out_a = apply({"params": params}, x, jnp.full((2,), 0.1))
    out_b = apply({"params": params}, x, jnp.full((2,), 0.9))
    assert float(jnp.abs(out_a - out_b).max()) > 1e-3 * float(jnp.abs(out_a).max())
    # A (B,) time vector conditions each example on its own time; a scalar broadcasts.
    mixed = apply({"params": params}, x, jnp.array([0.1, 0.9]))
    np.testing.assert_allclose(mixed[0], out_a[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mixed[1], out_b[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(apply({"params": params}, x, 0.1), out_a, atol=1e-6)


def test_dropout_only_in_training():
    model = get_model("tiny_level1", dropout=0.5)
    params, x, t = _init(model, (8, 8, 3))
    apply = _apply(model)
    eval_out = apply({"params": params}, x, t, train=False)
    drop = [apply({"params": params}, x, t, train=True, rngs={"dropout": jax.random.key(k)})
            for k in (0, 1)]
    assert not np.allclose(drop[0], drop[1])
    assert not np.allclose(drop[0], eval_out)


@pytest.mark.parametrize("prefix", ["tiny", "smoke", "mnist", "celeba64"])
def test_params_strictly_increase_along_ladder(prefix):
    counts = [_param_count(n, LADDER_SHAPES[prefix]) for n in level_names(prefix)]
    assert all(b > a for a, b in zip(counts, counts[1:])), counts


def test_celeba_level5_is_the_standard_ddpm_unet():
    assert 35.5e6 < _param_count("celeba64_level5", (64, 64, 3)) < 36.0e6  # DDPM: 35.7M
    model = get_model("celeba64_level5")
    assert (model.ch, model.ch_mult, model.num_res_blocks, model.attn_resolutions) == (
        128, (1, 2, 2, 2), 2, (16,))


def test_tiny_flops_strictly_increase():
    flops = [_flops(n, LADDER_SHAPES["tiny"]) for n in level_names("tiny")]
    assert all(b > a for a, b in zip(flops, flops[1:])), flops


@pytest.mark.slow
def test_celeba_flops_grow_two_to_four_times_per_level():
    flops = [_flops(n, LADDER_SHAPES["celeba64"]) for n in level_names("celeba64")]
    ratios = np.array(flops[1:]) / np.array(flops[:-1])
    assert np.all((ratios >= 2.0) & (ratios <= 4.0)), ratios


def test_level_names_and_registry():
    assert level_names("celeba64") == [f"celeba64_level{k}" for k in range(1, 6)]
    assert level_names("mnist") == [f"mnist_level{k}" for k in range(1, 5)]
    assert level_names("tiny") == ["tiny_level1", "tiny_level2"]
    assert set(level_names()) == set(registry.LEVELS)
    assert get_model("mnist_level2", dropout=0.3, dtype="bfloat16").dropout == 0.3


def test_unknown_level_lists_known_names():
    with pytest.raises(ValueError, match="unknown model level 'celeba64_level9'.*celeba64_level5"):
        get_model("celeba64_level9")


def test_unknown_field_fails_at_construction():
    with pytest.raises(TypeError):
        get_model("tiny_level1", channels=3)


def test_image_size_not_divisible_names_image_size_and_ch_mult():
    model = UNet(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(), norm_groups=4)
    x = jnp.zeros((1, 10, 10, 1))
    with pytest.raises(ValueError, match=r"image_size 10x10.*ch_mult=\(1, 2, 2\)"):
        jax.eval_shape(model.init, {"params": jax.random.key(0)}, x, jnp.zeros((1,)))


def test_group_norm_channels_must_divide():
    model = UNet(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=())  # concat: 48 ch
    x = jnp.zeros((1, 8, 8, 1))
    with pytest.raises(ValueError, match="GroupNorm: 48 channels.*norm_groups"):
        jax.eval_shape(model.init, {"params": jax.random.key(0)}, x, jnp.zeros((1,)))


def test_tiny_levels_are_tiny():
    counts = [_param_count(n, (8, 8, 3)) for n in level_names("tiny")]
    assert all(c < 50_000 for c in counts), counts


def test_ladder_table_cli_on_the_mnist_ladder(tmp_path, capsys):
    """``python -m analysis.ladder_table``: table, JSON, mnist FLOPs growing ×2–4 per level."""
    from analysis import ladder_table as table

    configs = [f"configs/mnist_level{k}.py" for k in range(1, 5)]
    rows = table.run(configs, json_path=str(tmp_path / "ladder.json"))
    out = capsys.readouterr().out
    assert "| mnist_level4 |" in out and f"×{rows[1]['ratio']:.2f}" in out
    saved = json.loads((tmp_path / "ladder.json").read_text())
    assert [r["level"] for r in saved["rows"]] == level_names("mnist")
    assert saved["rows"][0]["parameters"] == _param_count("mnist_level1", (16, 16, 1))
    ratios = np.array([r["ratio"] for r in saved["rows"][1:]])
    assert np.all((ratios >= 2.0) & (ratios <= 4.0)), ratios
    with pytest.raises(ValueError, match="^levels: must be listed cheapest first"):
        table.ladder_rows(["configs/tiny.py", "configs/tiny.py"])  # equal FLOPs
