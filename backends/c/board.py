"""Cortex-M boards for the fixed-point C runtime: what ``spidec compile --board`` adds, the memory
plan ``--report`` prints, and building and running the image under QEMU (``spidec train BUILD``).

The memory plan is computed from the compiled model alone (every state array's element type times
its length, by part) and checked against the built image: each planned symbol's size in
``arm-none-eabi-nm`` equals the plan, and ``arm-none-eabi-size``'s data + bss is the plan plus
the runtime's and newlib's own static data (reported as such).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...errors import SpidecError

# ram_bytes, flash_bytes: the part's memories as runtime/board/link.ld lays them out (RAM: the 16 MiB
# PSRAM holding data, bss, heap and stack; flash: the 4 MiB code memory at 0x0)
BOARDS = {
    "mps2-an386": {"cpu": "Cortex-M4F", "arch": "-mcpu=cortex-m4 -mfpu=fpv4-sp-d16 -mfloat-abi=hard -mthumb",
                   "ram_bytes": 16 << 20, "flash_bytes": 4 << 20},
    "mps2-an385": {"cpu": "Cortex-M3", "arch": "-mcpu=cortex-m3 -mfloat-abi=soft -mthumb",
                   "ram_bytes": 16 << 20, "flash_bytes": 4 << 20},
}

BOARD_MAKEFILE = """
# ---- the {cpu} board {board} (arm-none-eabi-gcc, newlib with semihosting; run under QEMU)
#   make board        spide-{board}.elf (and its .map), then arm-none-eabi-size
#   make qemu ARGS="train data/train.spds data/test.spds --epochs 1"
BOARD = {board}
BOARD_CC ?= arm-none-eabi-gcc
BOARD_ARCH = {arch}
BOARD_CFLAGS ?= -std=c99 -O2 -ffp-contract=off -ffunction-sections -fdata-sections -Wall -Wextra -Werror
BOARD_SRC = model.c weights.c runtime/src/spide_train.c runtime/board/spide_board.c runtime/board/startup.c
QEMU ?= qemu-system-arm
ARGS ?= eval data/test.spds

board: spide-$(BOARD).elf

spide-$(BOARD).elf: $(BOARD_SRC) runtime/board/link.ld runtime/include/spide.h runtime/board/board.h
\t$(BOARD_CC) $(BOARD_CFLAGS) $(BOARD_ARCH) -DSPIDE_BOARD_NAME='"$(BOARD)"' -DSPIDE_BOARD_INPUTS={n_inputs} \\
\t\t-Iruntime/include -Iruntime/board --specs=nano.specs --specs=rdimon.specs -u _printf_float \\
\t\t-T runtime/board/link.ld -Wl,--gc-sections -Wl,-Map=spide-$(BOARD).map -o $@ $(BOARD_SRC) -lm
\tarm-none-eabi-size $@

qemu: spide-$(BOARD).elf
\t$(QEMU) -M $(BOARD) -display none -serial none -monitor none -semihosting-config enable=on,target=native \\
\t\t-icount shift=0 -kernel spide-$(BOARD).elf -append "$(ARGS)" </dev/null

.PHONY: board qemu
"""


STACK_BUDGET = 2048  # bytes; the QEMU run measures the high-water mark (spide_board.c paints the stack)
TOOLS = ("arm-none-eabi-gcc", "arm-none-eabi-size", "arm-none-eabi-nm", "qemu-system-arm")
INSTALL_HINT = ("install the toolchain and QEMU: apt-get update && apt-get install -y gcc-arm-none-eabi "
                "libnewlib-arm-none-eabi qemu-system-arm")


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


def memory_plan(prog: Any) -> list[dict[str, Any]]:
    """RAM and flash of a fixed-point model by part: ``[{part, symbols: {name: bytes}, ram, flash}]``,
    from the step program's buffer plan (the arrays fixed.c.j2 declares from it) and the board
    program's sample buffer ``x``."""
    if prog.quant is None:
        raise SpidecError("the memory plan is of a fixed-point build: run the quantize pass first")
    parts: dict[str, dict[str, int]] = {k: {} for k in (
        "weights", "momentum", "membranes", "spike buffers", "rates and counts", "other model state",
        "sample buffer")}
    flash = 0
    for b in prog.buffers:
        parts.setdefault(b.part, {})[b.name] = b.nbytes
        if b.part == "weights":
            flash += b.nbytes  # the initial values, copied to RAM at reset
    parts["sample buffer"]["x"] = 4 * prog.inputs[0].size
    out = [{"part": k, "symbols": v, "ram": sum(v.values()), "flash": 0} for k, v in parts.items()]
    out[0]["flash"] = flash
    out.append({"part": "stack (budget)", "symbols": {}, "ram": STACK_BUDGET, "flash": 0})
    return out


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SpidecError(f"{' '.join(cmd)} failed:", detail=done.stdout[-2000:] + done.stderr[-3000:])
    return done.stdout


def elf_symbols(elf: Path) -> dict[str, int]:
    """Sizes of the data and bss symbols of an image (static ones by their name before any '.N')."""
    sizes: dict[str, int] = {}
    for line in _run(["arm-none-eabi-nm", "-S", "-t", "d", str(elf)]).splitlines():
        f = line.split()
        if len(f) == 4 and f[2] in "bBdD":
            sizes[f[3].split(".")[0]] = sizes.get(f[3].split(".")[0], 0) + int(f[1])
    return sizes


def elf_size(elf: Path) -> dict[str, int]:
    """``arm-none-eabi-size``: text, data, bss; flash = text + data, static RAM = data + bss."""
    lines = _run(["arm-none-eabi-size", str(elf)]).splitlines()
    text, data, bss = (int(v) for v in lines[1].split()[:3])
    return {"text": text, "data": data, "bss": bss, "flash": text + data, "static_ram": data + bss}


def check_plan(plan: list[dict[str, Any]], elf: Path) -> dict[str, Any]:
    """Compare the plan with the image: every planned symbol's size, and the totals."""
    syms, size = elf_symbols(elf), elf_size(elf)
    wrong = {}
    for part in plan:
        for name, nbytes in part["symbols"].items():
            if syms.get(name) != nbytes:
                wrong[name] = (nbytes, syms.get(name))
    planned_static = sum(p["ram"] for p in plan if p["symbols"])
    return {"size": size, "mismatches": wrong, "planned_static_ram": planned_static,
            "runtime_static_ram": size["static_ram"] - planned_static,
            "planned_flash_data": sum(p["flash"] for p in plan), "code_and_constants": size["text"]}


def report_totals(plan: list[dict[str, Any]], check: dict[str, Any] | None = None,
                  measured: dict[str, int] | None = None) -> tuple[int, int]:
    """(RAM, flash) in bytes as the report's total line counts them."""
    ram = sum(p["ram"] for p in plan) + (check["runtime_static_ram"] if check else 0) \
        + (measured.get("heap_used", 0) if measured else 0)
    return ram, check["size"]["flash"] if check else sum(p["flash"] for p in plan)


def fits(board: str, ram: int, flash: int) -> dict[str, Any]:
    """``ram`` and ``flash`` bytes against the part's capacity (BOARDS): ``fits``, and by how much
    each is over (negative: room left)."""
    b = BOARDS[board]
    over = {"ram": ram - b["ram_bytes"], "flash": flash - b["flash_bytes"]}
    return {"board": board, "cpu": b["cpu"], "ram": ram, "flash": flash, "ram_bytes": b["ram_bytes"],
            "flash_bytes": b["flash_bytes"], "over": over, "fits": all(v <= 0 for v in over.values())}


def fits_line(v: dict[str, Any], counted: str = "") -> str:
    """The verdict of :func:`fits` in words."""
    def kib(n: int) -> str:
        return f"{n / 1024:,.1f} KiB"

    use = (f"RAM {kib(v['ram'])} of {kib(v['ram_bytes'])}, flash {kib(v['flash'])} of {kib(v['flash_bytes'])}"
           f"{counted}")
    if v["fits"]:
        return f"fits {v['board']} ({v['cpu']}): {use}"
    over = " and ".join(f"{what} by {math.ceil(n / 1024):,} KiB" for what, n in
                        (("RAM", v["over"]["ram"]), ("flash", v["over"]["flash"])) if n > 0)
    return f"does not fit {v['board']} ({v['cpu']}): over its {over}; {use}"


def format_report(plan: list[dict[str, Any]], check: dict[str, Any] | None = None,
                  measured: dict[str, int] | None = None, board: str | None = None) -> str:
    rows = [(p["part"], p["ram"], p["flash"]) for p in plan]
    lines = [f"{'part':<26}{'RAM bytes':>12}{'flash bytes':>13}"]
    lines += [f"{name:<26}{ram:>12,}{fl:>13,}" for name, ram, fl in rows]
    total_ram = sum(r for _, r, _ in rows)
    if check is not None:
        lines.append(f"{'runtime + newlib (image)':<26}{check['runtime_static_ram']:>12,}"
                     f"{check['code_and_constants']:>13,}")
        total_ram += check["runtime_static_ram"]
    if measured:
        lines.append(f"{'heap (measured)':<26}{measured.get('heap_used', 0):>12,}{0:>13,}")
        total_ram += measured.get("heap_used", 0)
    flash = check["size"]["flash"] if check else sum(f for _, _, f in rows)
    lines.append(f"{'total':<26}{total_ram:>12,}{flash:>13,}   ({total_ram / 1024:.1f} KiB RAM, "
                 f"{flash / 1024:.1f} KiB flash)")
    if check is not None:
        s = check["size"]
        ok = "agrees" if not check["mismatches"] else f"DISAGREES on {check['mismatches']}"
        lines.append(f"arm-none-eabi-size: text {s['text']:,} data {s['data']:,} bss {s['bss']:,} -> flash "
                     f"{s['flash']:,}, static RAM {s['static_ram']:,}; the plan {ok} symbol by symbol")
    if measured and "stack_used" in measured:
        lines.append(f"stack measured on the board: {measured['stack_used']:,} bytes (budget {STACK_BUDGET:,})")
    if board is not None:
        lines.append(fits_line(fits(board, *report_totals(plan, check, measured)),
                               "" if check else " (the plan's arrays only: add the toolchain to count the code)"))
    return "\n".join(lines)


def build(out: Path) -> Path:
    info = board_info(out)
    miss = missing_tools()
    if miss:
        raise SpidecError(f"building for {info['board']} needs {', '.join(miss)}", hint=INSTALL_HINT)
    _run(["make", "-C", str(out), "board"])
    return out / f"spide-{info['board']}.elf"


def board_info(out: Path) -> dict[str, Any]:
    path = Path(out) / "board.json"
    if not path.exists():
        raise SpidecError(f"{out} holds no board build (no board.json)", hint="compile with --board: spidec "
                          f"compile MODEL --target c --board mps2-an386 -o {out}")
    return json.loads(path.read_text())


LINE = re.compile(r"(\w+) (\S+)")


def parse_line(line: str) -> dict[str, Any]:
    """``key value`` pairs of one line of the board's output (numbers converted)."""
    out: dict[str, Any] = {}
    if line.startswith(("memory ", "calibration ", "progress ")):
        line = line.split(" ", 1)[1]
    for k, v in LINE.findall(line):
        if k in ("hash", "model", "board"):
            out[k] = v
            continue
        try:
            out[k] = int(v)
        except ValueError:
            try:
                out[k] = float(v)
            except ValueError:
                out[k] = v
    return out


def run_qemu(out: Path, args: list[str], *, timeout: float | None = None,
             echo: Callable[[str], None] | None = None, progress: bool = False) -> dict[str, Any]:
    """Run the board image under QEMU (-icount shift=0, semihosting) in folder ``out`` with
    ``args``; returns the parsed result lines (``epochs``, ``memory``, ``calibration``...).
    ``echo`` gets every result line; ``progress`` draws the board's progress lines as a bar on stderr."""
    info = board_info(out)
    elf = build(out)
    cmd = ["qemu-system-arm", "-M", info["board"], "-display", "none", "-serial", "none", "-monitor", "none",
           "-semihosting-config", "enable=on,target=native", "-icount", "shift=0", "-kernel", elf.name,
           "-append", " ".join(args)]
    proc = subprocess.Popen(cmd, cwd=out, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True)
    result: dict[str, Any] = {"board": info["board"], "epochs": [], "command": cmd}
    drawn = False
    # the deadline holds while the board is silent too (a loop reading its output would wait for it)
    stopped = threading.Event()
    timer = threading.Timer(timeout, lambda: (stopped.set(), proc.kill())) if timeout is not None else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            f = parse_line(line)
            if line.startswith("progress "):
                if progress:
                    width = 30
                    filled = int(width * f["done"] / max(1, f["total"]))
                    sys.stderr.write(f"\repoch {f['epoch']} [{'#' * filled}{'.' * (width - filled)}] "
                                     f"{f['done']}/{f['total']} loss {f['loss']:.4f} ")
                    sys.stderr.flush()
                    drawn = True
                continue
            if drawn:
                sys.stderr.write("\r" + " " * 78 + "\r")
                drawn = False
            if echo:
                echo(line)
            if line.startswith("epoch "):
                result["epochs"].append(f)
            elif line.startswith(("memory ", "calibration ", "board ")):
                result.update(f)
        proc.wait()
    finally:
        if timer is not None:
            timer.cancel()
        if proc.poll() is None:  # (interrupted: QEMU goes too)
            proc.kill()
            proc.wait()
        if drawn:
            sys.stderr.write("\n")
    err = proc.stderr.read() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if stopped.is_set():
        done = [e["epoch"] for e in result["epochs"] if e.get("epoch", 0) >= 1]
        raise SpidecError(f"QEMU ran past the timeout of {timeout:g} s and was stopped "
                          + (f"after epoch {done[-1]}" if done else "before the first epoch ended"),
                          hint="a longer --timeout, or fewer samples: --limit-train N --limit-test N")
    result["returncode"] = proc.returncode
    if proc.returncode != 0:
        raise SpidecError(f"the board program exited with {proc.returncode}", detail=err[-2000:])
    return result


__all__ = ["BOARDS", "STACK_BUDGET", "board_info", "build", "check_plan", "elf_size", "elf_symbols", "fits",
           "fits_line", "format_report", "memory_plan", "missing_tools", "parse_line", "report_totals", "run_qemu"]
