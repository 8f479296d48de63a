# mlem — the two commands a newcomer types are `make demo` and `make test`.
# Set-up: a virtual environment in .venv with CPU JAX. For CUDA 12/13 GPUs run
#   .venv/bin/pip install -U "jax[cuda13]"        (or "jax[cuda12]"; TPU VMs: "jax[tpu]")
# after `make setup`; everything else is the same (no target forces a platform: JAX uses the
# accelerator it finds; the tests pin themselves to the CPU in tests/conftest.py).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test test-integration test-all lint demo demo-samplers reproduce-mnist demo-synthetic celeba-reference bench-sampler bench-train \
	bench-coverage clean

setup: $(STAMP)

# requirements.txt pins everything (tested versions); the editable install of the package
# (pyproject.toml) then makes `import mlem` work from any directory.
$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

# Two workers (the machine's two cores; XLA compiles on one); tests sharing the trained tiny
# ladder stay on one worker (--dist loadgroup).
PYTEST := $(PY) -m pytest -q -n 2 --dist loadgroup

# Three tiers (docs/testing.md): unit and fast numerics; integration (pipelines, subprocesses,
# trained ladders); slow numerical checks. CI runs the first two.
test: setup
	$(PYTEST) -m "not slow and not integration" tests

test-integration: setup
	$(PYTEST) -m "integration and not slow" tests

test-all: setup
	$(PYTEST) tests

lint: setup
	$(PY) -m ruff check .

# The whole pipeline on the embedded MNIST-5k data (train 4 levels, γ, V_k, the cost-error
# sweep in both framings, the distributional stage at the demo's scale, figures).
demo: setup
	$(PY) -m experiments.mnist_cpu --workdir runs/mnist --out results/mnist_cpu

# After make demo: the samplers users pick (DPM-Solver++(2M), its SDE variant, EDM's Heun),
# single-level against multilevel, at the demo's scale (about 4 minutes on 2 CPU cores).
demo-samplers: setup
	$(PY) -m analysis.samplers --config configs/mnist_sample.py \
		--config.analysis.samplers.enabled=True --workdir runs/mnist --out results/mnist_cpu

# The powered MNIST study (docs/design.md §3, both framings; on 2 CPU cores about 50 minutes for
# the sweep, 55 more for the distributional sets and under 2 hours for the samplers stage,
# resumable stage by stage): the demo's ladder, twice its realisations, prefix ladders against
# the oracle, pathwise and in distribution, and the samplers users pick (analysis.samplers).
reproduce-mnist: setup
	$(PY) -m experiments.mnist_cpu --config configs/mnist_reproduce.py --workdir runs/mnist \
		--out results/mnist_reproduce

# The synthetic HTMC testbed: exact drift, controllable γ (the exact check of the theory).
demo-synthetic: setup
	$(PY) -m analysis.testbed --gamma 3 --quick --out results/synthetic_quick

# FID/KID reference statistics of the CelebA 64×64 train split (docs/quality.md); hours on a
# CPU. INCEPTION_WEIGHTS: pytorch-fid's weights as an npz; CELEBA: img_align_celeba.zip.
celeba-reference: setup
	$(PY) -m analysis.reference_stats --config configs/celeba64_sample.py \
		--inception_weights "$(INCEPTION_WEIGHTS)" --local_path "$(CELEBA)" \
		--out runs/celeba64/celeba64_train_inception.npz

bench-sampler: setup
	$(PY) -m benchmarks.sampler

bench-train: setup
	$(PY) -m benchmarks.train

# Coverage and bias of every headline interval, by simulation through mlem.eval.speedup.
bench-coverage: setup
	$(PY) -m benchmarks.coverage --out results/coverage/coverage.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
