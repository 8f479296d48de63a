"""Config files: one schema (docs: /work/notes/interfaces.md), levels override only the level,
every level exists in the registry and fits its image size, and flag overrides work."""

from pathlib import Path

import pytest
from absl import flags
from ml_collections import config_flags

from mlem.config_files import load_config
from mlem.models import registry

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
LEVEL_FILES = {"celeba64": [f"celeba64_level{k}" for k in range(1, 6)],
               "mnist": [f"mnist_level{k}" for k in range(1, 5)]}
ALL = ["celeba64", "mnist", "tiny", *LEVEL_FILES["celeba64"], *LEVEL_FILES["mnist"]]
SCHEMA = {
    "seed",
    *(f"data.{k}" for k in ("name", "image_size", "num_channels", "source", "data_dir",
                            "local_path", "random_flip")),
    "model.level", "model.dropout", "model.dtype",
    "sde.beta_min", "sde.beta_max", "sde.t_min",
    *(f"distill.{k}" for k in ("teacher_workdir", "weight", "teacher_step",
                               "teacher_param_sha256")),
    *(f"optim.{k}" for k in ("learning_rate", "warmup_steps", "weight_decay", "grad_clip",
                             "b1", "b2")),
    *(f"training.{k}" for k in ("batch_size", "num_steps", "ema_decay", "log_every",
                                "eval_every", "checkpoint_every", "keep_checkpoints",
                                "sample_every", "num_sample_images")),
    "eval.batch_size", "eval.num_batches",
    "wandb.mode", "wandb.project", "wandb.entity",
}


def _flat(config, prefix=""):
    out = {}
    for key, value in config.items():
        if hasattr(value, "items"):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _load(name):
    return load_config(CONFIGS / f"{name}.py")


@pytest.mark.parametrize("name", ALL)
def test_schema_and_registry(name):
    config = _load(name)
    assert set(_flat(config)) == SCHEMA
    assert config.model.level in registry.LEVELS
    model = registry.get_model(config.model.level, dropout=config.model.dropout,
                             dtype=config.model.dtype)
    assert config.data.image_size % 2 ** (len(model.ch_mult) - 1) == 0
    assert config.model.dtype in ("float32", "bfloat16")
    assert config.data.name in ("celeba64", "mnist5k", "synthetic")
    assert config.wandb.mode in ("offline", "disabled")
    assert config.optim.warmup_steps < config.training.num_steps
    assert config.training.eval_every <= config.training.num_steps


@pytest.mark.parametrize("base, level", [(b, lv) for b, lvs in LEVEL_FILES.items()
                                         for lv in lvs])
def test_level_files_override_only_the_level(base, level):
    base_flat, level_flat = _flat(_load(base)), _flat(_load(level))
    differs = {k for k in base_flat if base_flat[k] != level_flat[k]}
    assert differs <= {"model.level"}
    assert level_flat["model.level"] == level


def test_levels_cover_their_ladders():
    for base, prefix in (("celeba64", "celeba64"), ("mnist", "mnist")):
        levels = [_load(name).model.level for name in LEVEL_FILES[base]]
        assert levels == registry.level_names(prefix)
        # one file per dataset: configs/<dataset>.py:K is level K, the same as its level file
        for k, name in enumerate(LEVEL_FILES[base], start=1):
            assert _flat(load_config(f"{CONFIGS / base}.py:{k}")) == _flat(_load(name))
        with pytest.raises(ValueError, match="LEVEL must be 1.."):
            load_config(f"{CONFIGS / base}.py:9")
    # configs/mnist.py:KdT: level K distilled from levelT, otherwise level K
    distilled, plain = _flat(load_config(f"{CONFIGS}/mnist.py:2d3")), _flat(_load("mnist_level2"))
    assert {k for k in plain if plain[k] != distilled[k]} == {"distill.teacher_workdir",
                                                               "distill.weight"}


def test_dataset_shapes_and_defaults():
    celeba, mnist, tiny = _load("celeba64"), _load("mnist"), _load("tiny")
    assert (celeba.data.image_size, celeba.data.num_channels) == (64, 3)
    assert (celeba.training.batch_size, celeba.optim.learning_rate) == (128, 2e-4)
    assert (celeba.training.ema_decay, celeba.optim.warmup_steps) == (0.9999, 5000)
    assert (mnist.data.image_size, mnist.data.num_channels) == (16, 1)
    assert tiny.data.name == "synthetic" and tiny.wandb.mode == "disabled"
    assert tiny.model.level.startswith("tiny_") and tiny.training.num_steps <= 10
    # mnist: 500 held-out digits; synthetic: 256 held-out images.
    assert mnist.eval.batch_size * mnist.eval.num_batches <= 500
    assert tiny.eval.batch_size * tiny.eval.num_batches <= 256


def _parse(*args):
    argv, fv = ["prog", *args], flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config file", flag_values=fv, sys_argv=argv)
    fv(argv)
    return fv.config


def test_config_flag_overrides():
    config = _parse(f"--config={CONFIGS / 'mnist_level2.py'}", "--config.training.batch_size=8",
                     "--config.data.local_path=/data/img_align_celeba.zip",
                     "--config.model.dtype=bfloat16")
    assert config.training.batch_size == 8 and config.model.level == "mnist_level2"
    assert config.data.local_path == "/data/img_align_celeba.zip"
    assert config.model.dtype == "bfloat16" and config.training.num_steps == 1000


def test_dataset_file_takes_the_level_as_argument():
    config = _parse(f"--config={CONFIGS / 'mnist.py'}:2", "--config.training.batch_size=8")
    assert config.model.level == "mnist_level2" and config.training.batch_size == 8


def test_unknown_config_key_is_refused():
    with pytest.raises((KeyError, AttributeError, flags.Error)):
        _parse(f"--config={CONFIGS / 'tiny.py'}", "--config.training.bach_size=8")
