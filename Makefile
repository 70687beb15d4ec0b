# dmlight: every command a user needs. `make demo` and `make test` install first when needed.
PY       ?= .venv/bin/python
VENV_OK  := .venv/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
FASHION  := /usr/share/datasets/fashion-mnist
SEEDS    ?= range(20)
QUICK    ?= outputs/quick

.PHONY: install demo test test-fast bench report reproduce reproduce-use reproduce-learn reproduce-bias \
        reproduce-offset-l2 reproduce-quick gpu-check gpu-wheels wandb-sync dashboard clean study-quick study

install: $(VENV_OK)

$(VENV_OK): pyproject.toml
	@test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	@# Real Fashion-MNIST for the loader's tests and the benchmarks (Debian package; skipped without apt/root).
	@if [ ! -d $(FASHION) ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -q && apt-get install -y -q dataset-fashion-mnist) >/dev/null \
	    || echo "warning: could not install dataset-fashion-mnist; data=fashion_mnist needs its files"; fi
	@rm -f .venv/.installed-* && touch $@

# The USE experiment on the 5,000 embedded digits: ReLU and Abs, 3 seeds, sweeps during and after training, report.
demo: install
	$(PY) -m dmlight.train -m experiment=use_distance_metrics activation=relu,abs 'seed=range(3)' \
	    trainer.max_epochs=1000 perturbation.every_n_epochs=100 run.progress_every=250 paths.output_dir=outputs/demo
	$(PY) -m dmlight.report outputs/demo/use_distance_metrics

test: install
	$(PY) -m pytest -q --timeout=900 tests

# The suite without real trainings (tests marked slow): config, report, layers, errors, CLI.
test-fast: install
	$(PY) -m pytest -q --timeout=300 -m "not slow" tests

# Speed and memory as ratios against plain PyTorch baselines measured in the same process.
bench: install
	$(PY) bench/train_speed.py --json outputs/bench/train_speed.json
	$(PY) bench/perturb_speed.py --json outputs/bench/perturb_speed.json
	$(PY) bench/probe_cost.py --json outputs/bench/probe_cost.json
	$(PY) bench/ensemble_speed.py --json outputs/bench/ensemble_speed.json
	$(PY) bench/offset_l2_speed.py --json outputs/bench/offset_l2_speed.json

report: install
	$(PY) -m dmlight.report $(or $(RUNS),outputs)

# ---- W&B. Upload every offline run under RUNS (default outputs): each seed's run, the report runs
# (no `install` first: runs exist only where dmlight is installed).
# Pass wandb sync's flags with SYNC_ARGS, e.g. SYNC_ARGS='--entity my-team' or SYNC_ARGS=--dry-run.
wandb-sync:
	@find $(or $(RUNS),outputs) -type d -name 'offline-run-*' -path '*/wandb/*' -print0 | sort -z \
	    | xargs -0 -r $(PY) -m wandb sync $(SYNC_ARGS)

# The dashboard (dmlight/dashboard.py) for PROJECT (and ENTITY): saved with an account, else its spec as JSON.
dashboard: install
	$(PY) -m dmlight.dashboard --project $(or $(PROJECT),dmlight) $(if $(ENTITY),--entity $(ENTITY)) $(ARGS)

# ---- Full reproduction: the papers' settings exactly (full MNIST, 20 seeds, 5,000 / 50,000
# epochs). Each job trains 20 seeds as one ensemble; hydra/launcher=gpus runs one job per GPU.
# Resumable: rerun the same target after a crash. Needs MNIST's IDX files (see README).
FULL_RUN := data=mnist hydra/launcher=gpus paths.output_dir=outputs/full $(ARGS)
FULL     := 'seeds=range(20)' $(FULL_RUN)
TRAIN    := $(PY) -m dmlight.train -m

reproduce-use: install
	$(TRAIN) experiment=use_distance_metrics activation=relu,abs $(FULL)

reproduce-learn: install
	$(TRAIN) experiment=learn_distance_metrics arch=mlp,mlp2,mlp2_neg activation=relu,abs $(FULL)

reproduce-bias: install
	$(TRAIN) experiment=learn_bias arch=mlp,mlp2,mlp2_neg activation=relu,abs $(FULL)

reproduce-offset-l2: install
	$(TRAIN) experiment=offset_l2 arch=offset_l2,offset_l2_neg activation=relu,abs $(FULL)

reproduce: reproduce-use reproduce-learn reproduce-bias reproduce-offset-l2
	$(PY) -m dmlight.report outputs/full

# ---- Every experiment of both papers on the embedded 5,000 digits, 5 seeds, 2,000 epochs each,
# then the report: within the hour on 2 CPU cores.
QUICK_ARGS := data=mnist5k 'seeds=range(5)' paths.output_dir=$(QUICK) run.progress_every=500 $(ARGS)

reproduce-quick: install
	$(TRAIN) experiment=use_distance_metrics activation=relu,abs trainer.max_epochs=2000 $(QUICK_ARGS)
	$(TRAIN) experiment=learn_distance_metrics arch=mlp,mlp2,mlp2_neg activation=relu,abs trainer.max_epochs=2000 $(QUICK_ARGS)
	$(TRAIN) experiment=learn_bias arch=mlp,mlp2,mlp2_neg activation=relu,abs trainer.max_epochs=2000 $(QUICK_ARGS)
	$(TRAIN) experiment=offset_l2 arch=offset_l2,offset_l2_neg activation=relu,abs trainer.max_epochs=2000 $(QUICK_ARGS)
	$(PY) -m dmlight.report $(QUICK)

# ---- GPU self-check (bench/gpu_check.py): every GPU branch in < 5 min on one CUDA GPU, one line
# per check, outputs/gpu_check/result.json; without CUDA it says so and exits 0. No `install`
# first: on a GPU machine without network it runs with PY=python3 and the wheels of `gpu-wheels`:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site:$PWD; make gpu-check PY=python3
# (with no .venv and PY left as is, it installs .whl/ into $(GPU_SITE) if python3 lacks hydra, and
# does just that).
GPU_SITE   ?= /tmp/dmlight-gpu-site
GPU_WHEELS := hydra-core==1.3.8 omegaconf==2.3.1 PyYAML==6.0.4 hydra-joblib-launcher==1.2.0 joblib==1.6.0
ANTLR      := antlr4-python3-runtime==4.9.3

gpu-check:
	@if [ "$(PY)" = .venv/bin/python ] && [ ! -x .venv/bin/python ]; then \
	    python3 -c 'import hydra, omegaconf, hydra_plugins.hydra_joblib_launcher' 2>/dev/null || \
	        python3 -m pip install -q --no-index --no-deps --upgrade --target $(GPU_SITE) .whl/*.whl || exit 1; \
	    echo "python3 bench/gpu_check.py $(ARGS)  (PYTHONPATH=$(GPU_SITE):$$PWD)"; \
	    PYTHONPATH=$(GPU_SITE):$$PWD$${PYTHONPATH:+:$$PYTHONPATH} python3 bench/gpu_check.py $(ARGS); \
	else echo "$(PY) bench/gpu_check.py $(ARGS)"; \
	    PYTHONPATH=$$PWD$${PYTHONPATH:+:$$PYTHONPATH} $(PY) bench/gpu_check.py $(ARGS); fi

# What a GPU machine without network lacks (its Python 3.12 has torch, Lightning, PyYAML, joblib),
# as wheels in .whl/ (git-ignored; carry it along). omegaconf pins antlr4 4.9.3, an sdist only:
# its pure-Python wheel is built here.
gpu-wheels:
	python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	    --platform any -d .whl $(GPU_WHEELS)
	ls .whl/antlr4_python3_runtime-4.9.3-*.whl >/dev/null 2>&1 || python3 -m pip wheel -q --no-deps $(ANTLR) -w .whl
	@du -sh .whl && ls .whl

clean:
	rm -rf outputs/* .pytest_cache

# ---- Beyond the papers (docs/study.md): where does the distance code hold? Each axis is a Hydra sweep
# (conf/experiment/study_*.yaml) around the study point (conf/experiment/study.yaml); the report's section
# "Beyond the papers" gives the verdicts. Resumable like every sweep: rerun after a kill trains nothing twice.
STUDY_AXES := study_activation study_depth study_width study_data study_optimizer study_learn
STUDY_OUT  ?= outputs/study-quick

# The main axes on the embedded digits and a Fashion-MNIST subset, 3 seeds, 300 epochs: ~30 min on 2 CPU cores.
study-quick: install
	@n=0; for axis in $(STUDY_AXES); do n=$$((n + 1)); echo "[study-quick] axis $$n/6: $$axis"; \
	    $(TRAIN) experiment=$$axis paths.output_dir=$(STUDY_OUT) run.progress_every=150 $(ARGS) || exit 1; done
	$(PY) -m dmlight.report $(STUDY_OUT)

# The same grid at the papers' scale: full MNIST (and full Fashion-MNIST on the data axis), 10 seeds, 2,000 epochs,
# one job per GPU (ARGS='hydra/launcher=slurm' on a cluster). Needs MNIST's IDX files (docs/reproduce.md).
STUDY_FULL := 'seeds=range(10)' trainer.max_epochs=2000 hydra/launcher=gpus paths.output_dir=outputs/study $(ARGS)
study: install
	@for axis in study_activation study_depth study_width study_optimizer study_learn; do \
	    $(TRAIN) experiment=$$axis data=mnist $(STUDY_FULL) || exit 1; done
	$(TRAIN) experiment=study_data data=mnist,fashion_mnist $(STUDY_FULL)
	$(PY) -m dmlight.report outputs/study
