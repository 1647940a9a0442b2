# Deep learning with noisy labels: build, test, reproduce.
#   make book        set up (venv + install) and build the book into _build/html
#   make test        unit tests + every notebook at profile=smoke + an offline book build
#   make reproduce   re-execute every chapter at profile=book, then build
#   make bench       the benchmarks in bench/
#   make sync        pair notebooks/<chapter>.md (the source you edit) with its .ipynb
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# use ../shared/data when it is there and nothing else was said
SHARED := $(abspath ../shared/data)
export NLUTILS_DATA ?= $(if $(wildcard $(SHARED)/mnist.npz),$(SHARED),)

.PHONY: setup book reproduce test bench clean sync

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

book: setup
	$(PY) tools/build_book.py
	$(VENV)/bin/jupyter-book build . -W -n --keep-going
	@echo "book: _build/html/index.html"

reproduce: setup
	$(PY) tools/build_book.py --all
	$(VENV)/bin/jupyter-book build . -W -n --keep-going

test: setup
	$(PY) -m pytest -q -ra

# the chapter sources are notebooks/<chapter>.md (MyST); this regenerates the paired .ipynb
sync: setup
	$(VENV)/bin/jupytext --sync notebooks/*.md

bench: setup
	$(PY) bench/train_loop.py
	$(PY) bench/l2rw_step.py
	$(PY) bench/gradsim_epoch.py
	$(PY) bench/cifar_cnn.py
	$(PY) bench/massive_noise.py

clean:
	rm -rf _build .cache
