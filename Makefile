# The two commands of the README:  `make demo`  (the main job)  and  `make test`  (the suite).
# Each creates its own virtual environment in .venv and installs what it needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.spidec-installed

.PHONY: venv demo test bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[torch,test,lava]'
	# Lava (archived upstream) declares Python < 3.11 and old pins; its real needs are installed above
	# through the lava extra, and spidec's shim makes it import on 3.11 (backends/lava/shim.py)
	$(PY) -m pip install --quiet --ignore-requires-python --no-deps lava-nc==0.10.0
	touch $@

demo: $(STAMP)
	$(VENV)/bin/spidec inspect examples/digits_fb.spir
	$(VENV)/bin/spidec reference examples/digits_fb.spir --data digits --batch 32
	$(VENV)/bin/spidec demo examples/digits_fb.onnx --out build/demo
	$(VENV)/bin/spidec dataset pack digits -o build/data
	build/demo/c/train train --train build/data/digits.train.spds --test build/data/digits.test.spds \
		--epochs 20 --checkpoint build/demo/c/checkpoint.bin
	$(VENV)/bin/spidec compile examples/digits_fb.onnx --target sim -o build/digits_fb_sim
	$(VENV)/bin/spidec train build/digits_fb_sim --data digits --epochs 20

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/reference_solver.py
	$(PY) bench/sim_throughput.py
	$(PY) bench/c_throughput.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
