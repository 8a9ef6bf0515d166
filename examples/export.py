"""Build the example models of examples/models.py and write them as ONNX and as IR text.

    python examples/export.py                       # every example, into examples/
    python examples/export.py digits_fb --dynamo    # one example, with the dynamo exporter

For each example NAME this writes NAME.onnx (torch.onnx.export; the legacy exporter unless
--dynamo, which needs onnxscript; the state pairing stored in the metadata key spidec.state) and
NAME.spir + NAME.npz (the IR lowered from the module by spidec.from_torch). Weights come from a
fixed seed, so the files are reproducible. Only the digits example is kept in the repository; the
others are rebuilt by this script (a few MB each).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import onnx
import torch

import spidec

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from models import EXAMPLES  # noqa: E402


def build(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return EXAMPLES[name]().eval()


def export_onnx(module: torch.nn.Module, path: Path, *, dynamo: bool = False, opset: int | None = None) -> Path:
    """Export one step of ``module`` with a dynamic batch and the spidec.state metadata."""
    names_in = list(module.spidec_inputs)
    names_out = list(module.spidec_outputs)
    args = tuple(torch.rand((2, *shape)) for shape in module.spidec_inputs.values())
    kwargs: dict = {"input_names": names_in, "output_names": names_out}
    if opset is not None:
        kwargs["opset_version"] = opset
    if dynamo:
        batch = torch.export.Dim("batch")
        kwargs["dynamic_shapes"] = {k: {0: batch} for k in names_in}
        kwargs["external_data"] = False
    else:
        kwargs["dynamic_axes"] = {k: {0: "batch"} for k in names_in + names_out}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=dynamo, **kwargs)
    proto = onnx.load(str(path))
    state = ",".join(f"{s}:{o}" for s, o in module.spidec_state.items())
    onnx.helper.set_model_props(proto, {"spidec.state": state})
    onnx.save(proto, str(path))
    return path


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", metavar="NAME", help=f"examples (default: all of {', '.join(EXAMPLES)})")
    ap.add_argument("--out", default=str(HERE), help="output folder (default: examples/)")
    ap.add_argument("--dynamo", action="store_true", help="use the dynamo exporter (needs onnxscript)")
    args = ap.parse_args(argv)
    unknown = [n for n in args.names if n not in EXAMPLES]
    if unknown:
        ap.error(f"unknown example(s) {', '.join(unknown)}; choose from {', '.join(EXAMPLES)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.names or list(EXAMPLES):
        module = build(name)
        onnx_path = export_onnx(module, out / f"{name}.onnx", dynamo=args.dynamo)
        spir = spidec.save(spidec.from_torch(module, name=name), out / f"{name}.spir")
        print(f"wrote {onnx_path.name}, {spir.name} and {spir.with_suffix('.npz').name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
