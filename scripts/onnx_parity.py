"""ONNX export parity of any model on the whole PublicTest split: the README's figures for the
shipped model, by the check `python -m stages.export` runs on a trained best.pt.

    python scripts/onnx_parity.py [MODEL] [--prepared data/prepared]

MODEL: any `load_classifier` reference that PyTorch runs (default: pretrained). It is exported
to a temporary file exactly as the export stage does (`onnx_backend.export_onnx`) and compared
with PyTorch by the stage's own `onnx_backend.parity` on every val (PublicTest) face, with and
without flip TTA: one JSON line of the largest probability difference and the number of
differing predictions, and exit 1 where the stage would refuse the export. Never PrivateTest.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from emovision import scoring
from emovision.data.prepared import load_meta, load_split
from emovision.errors import cli_main
from emovision.inference import from_spec, load_artifact
from emovision.onnx_backend import disagreement, export_onnx, parity


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default="pretrained")
    p.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    args = p.parse_args(argv)
    source = load_meta(args.prepared)["source"]  # checked before the model loads
    spec, state_dict = load_artifact(args.model)
    x, _ = load_split(args.prepared, "val")
    with tempfile.TemporaryDirectory() as tmp:
        onnx_file = export_onnx(spec, state_dict, Path(tmp) / "fer.onnx")
        # the stage's call: the model on the CPU at scoring.CPU_BATCH, both backends alike
        check = parity(from_spec(spec, state_dict, "cpu", args.model), onnx_file, x, scoring.CPU_BATCH)
    print(json.dumps({"model": args.model, "dataset": source, "split": "val", **check}))
    return 1 if disagreement(check) else 0


if __name__ == "__main__":
    raise SystemExit(main())
