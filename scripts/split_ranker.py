"""Splits a serving ranker (`model.onnx`) into its first stage and its head for the ranking
service, and records the split in the model card (`model.json`, section `factored`).

- `model.first.onnx`: the model's inputs (`sparse`, `dense`) to the output of the Gemm whose
  result the graph splits (ServingDeepFM's `addmm`): everything before it is linear in the
  one-hot sparse ids and the dense values.
- `model.head.onnx`: that Gemm output to the score.

The ranking service folds the first stage into per-id tables when it loads the model (checking
on random rows that the fold, then the head, gives the full model's scores) and runs only the
head per request. `train_ranker.py` calls this after its export; on its own it splits an
existing model without retraining (needs only the `onnx` package):

Usage: python scripts/split_ranker.py DIR
"""

import json
import sys
from pathlib import Path


def split_for_serving(model_dir: Path) -> dict:
    """Writes `model.first.onnx` and `model.head.onnx` beside `model.onnx`; returns the card's
    `factored` section.

    The cut is the output of the Gemm whose result the graph splits (ServingDeepFM's `addmm`):
    everything before it is linear in the one-hot sparse ids and the dense values, which is
    what the ranking service's folding needs (it checks that on random rows when it loads).
    """
    import onnx
    from onnx import utils

    full = model_dir / "model.onnx"
    graph = onnx.load(str(full)).graph
    feeds_split = {i for n in graph.node if n.op_type == "Split" for i in n.input}
    cuts = [o for n in graph.node if n.op_type == "Gemm" for o in n.output if o in feeds_split]
    if len(cuts) != 1:
        raise SystemExit(f"expected one Gemm output feeding a Split in {full}, found {cuts}")
    pre = cuts[0]
    inputs = [i.name for i in graph.input]
    outputs = [o.name for o in graph.output]
    utils.extract_model(str(full), str(model_dir / "model.first.onnx"), inputs, [pre])
    utils.extract_model(str(full), str(model_dir / "model.head.onnx"), [pre], outputs)
    return {"first": "model.first.onnx", "head": "model.head.onnx", "pre": pre}


def main():
    if len(sys.argv) != 2:
        raise SystemExit("usage: split_ranker.py DIR (holding model.onnx and model.json)")
    model_dir = Path(sys.argv[1])
    card_path = model_dir / "model.json"
    card = json.loads(card_path.read_text())
    card["factored"] = split_for_serving(model_dir)
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {model_dir}/model.first.onnx, model.head.onnx and the card's factored section")


if __name__ == "__main__":
    main()
