# dmlight: every command a user needs. `make demo` and `make test` install first when needed.
PY       ?= .venv/bin/python
VENV_OK  := .venv/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
FASHION  := /usr/share/datasets/fashion-mnist
SEEDS    ?= range(20)
QUICK    ?= outputs/quick

.PHONY: install demo test bench report reproduce reproduce-use reproduce-learn reproduce-bias \
        reproduce-offset-l2 reproduce-quick clean

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

# The USE experiment on the 5,000 embedded digits: ReLU and Abs, 3 seeds, sweep, report.
demo: install
	$(PY) -m dmlight.train -m experiment=use_distance_metrics activation=relu,abs 'seed=range(3)' \
	    trainer.max_epochs=1000 run.progress_every=250 paths.output_dir=outputs/demo
	$(PY) -m dmlight.report outputs/demo/use_distance_metrics

test: install
	$(PY) -m pytest -q --timeout=900 tests

bench: install
	$(PY) bench/train_speed.py
	$(PY) bench/perturb_speed.py

clean:
	rm -rf outputs/* .pytest_cache
