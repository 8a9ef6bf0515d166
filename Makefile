# The two commands of the README:  `make demo`  (the main job)  and  `make test`  (the suite).
# Each creates its own virtual environment in .venv and installs what it needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.spidec-installed

.PHONY: venv demo test bench clean board-tools

# The Cortex-M toolchain and QEMU (Debian packages) for the fixed-point board builds: installed
# when missing (as root, or through sudo); without them the board tests fail under CI=true.
BOARD_PACKAGES := gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm
board-tools:
	@missing=; for t in arm-none-eabi-gcc arm-none-eabi-size arm-none-eabi-nm qemu-system-arm; do \
		command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing (apt: $(BOARD_PACKAGES))"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; \
		else echo "error: need root or sudo to apt-get install $(BOARD_PACKAGES)"; exit 1; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
			$(BOARD_PACKAGES) >/dev/null; \
	fi

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[torch,test,lava]'
	# Lava (archived upstream) declares Python < 3.11 and old pins; its real needs are installed above
	# through the lava extra, and spidec's shim makes it import on 3.11 (backends/lava/shim.py)
	$(PY) -m pip install --quiet --ignore-requires-python --no-deps lava-nc==0.10.0
	touch $@

demo: $(STAMP) board-tools
	$(VENV)/bin/spidec inspect examples/digits_fb.spir
	$(VENV)/bin/spidec reference examples/digits_fb.spir --data digits --batch 32
	$(VENV)/bin/spidec demo examples/digits_fb.onnx --out build/demo
	$(VENV)/bin/spidec dataset pack digits -o build/data
	build/demo/c/train train --train build/data/digits.train.spds --test build/data/digits.test.spds \
		--epochs 20 --checkpoint build/demo/c/checkpoint.bin
	$(VENV)/bin/spidec compile examples/digits_fb.onnx --target sim -o build/digits_fb_sim
	$(VENV)/bin/spidec train build/digits_fb_sim --data digits --epochs 20
	# the same model, integer-only, trained on a Cortex-M4 (QEMU) with 58.7 KiB of RAM
	$(VENV)/bin/spidec compile examples/digits_fb.onnx --board mps2-an386 --update online --sf 10 --report -o build/m4
	$(VENV)/bin/spidec train build/m4 --epochs 1

test: $(STAMP) board-tools
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/reference_solver.py
	$(PY) bench/sim_throughput.py
	$(PY) bench/c_throughput.py
	$(PY) bench/mcu.py
	$(PY) bench/compile_time.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
