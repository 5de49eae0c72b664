"""Trains the gradient-boosted-trees ranker on `recstack export-ranking` output and exports it
to ONNX for the ranking service.

The same question and examples as the DeepFM ranker (`train_ranker.py`; docs/ranking.md): in
the validation world each training user's candidates that came next are positives and a sample
of the others negatives. LightGBM fits binary log-loss trees on the same features, read as one
row of numbers: the dense values, then the hashed sparse ids as their bucket numbers. The
number of trees is chosen on the judged validation users' NDCG@20 (every `--step` trees up to
`--trees`); then that many trees are fitted again on the training and the judged users together
(sampled alike). The real holdout's judged users are only reported.

The ONNX graph takes the service's two inputs, `sparse` (int64) and `dense` (float32), joins
them into that row, runs the trees (`ai.onnx.ml` TreeEnsembleClassifier, converted by
onnxmltools) and outputs the positive class's probability as `score` [batch]: the same scale
as DeepFM's sigmoid, which rerank's MMR weighs against similarity. Before writing, the graph is
run by ONNX Runtime on every holdout row and must give LightGBM's own scores.

The same trees are also written as `model.trees.json` (the card's `trees`): the ranking service
walks them itself, blocks of rows at a time, instead of running the graph's tree operator
(docs/ranking.md, "Trees walked by the service"); it checks the two agree when it loads them.

Usage: python scripts/train_gbdt.py --data DIR --out DIR [--trees N] [--seed S]
"""

import argparse
import json
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np
import onnx
import onnxmltools
import onnxruntime as ort
from onnx import TensorProto, helper
from onnxmltools.convert.common.data_types import FloatTensorType

from ranker_data import K, list_metrics, load_export, model_card

# The trees' settings, chosen on the validation world (docs/ranking.md, "gbdt-1", "gbdt-2"): 31 leaves
# with at least 200 rows each keep a tree from fitting a handful of users; at most 5 levels
# read as well as unlimited depth there (0.2001 against 0.1981 NDCG@20) and bound the service's
# walk of a tree to 5 steps (unlimited trees were 11 deep on average).
PARAMS = {
    "objective": "binary",
    "learning_rate": 0.1,
    "num_leaves": 31,
    "max_depth": 5,
    "min_data_in_leaf": 200,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "deterministic": True,
    "force_row_wise": True,
    "num_threads": 2,
    "verbose": -1,
}
# The trees beside the graph, for the ranking service's own walk (the card's `trees`).
TREES = "model.trees.json"
# ONNX opsets the graph uses; onnxmltools writes trees for `ai.onnx.ml` 3 at this default opset.
OPSET = 15


def rows(split):
    """One row of numbers per candidate: dense values, then the sparse buckets."""
    return np.hstack([split["dense"].astype(np.float32), split["sparse"].astype(np.float32)])


def floor32(t: float) -> np.float32:
    """The largest float32 not above `t`: for a float32 x, `x <= t` exactly when `x <= floor32(t)`."""
    f = np.float32(t)
    return np.nextafter(f, np.float32(-np.inf)) if float(f) > t else f


def round_thresholds_down(booster, node):
    """LightGBM splits on `x <= t` with a double t; ONNX stores t as the nearest float32, which
    can round up past feature values LightGBM sent right (a third of the splits here). Each
    node's threshold becomes the largest float32 not above LightGBM's, matched within its tree
    by the float32 the converter wrote."""
    exact = {}
    def walk(tree, n):
        if "split_feature" in n:
            exact.setdefault((tree, np.float32(n["threshold"])), set()).add(floor32(n["threshold"]))
            walk(tree, n["left_child"])
            walk(tree, n["right_child"])
    for info in booster.dump_model()["tree_info"]:
        walk(info["tree_index"], info["tree_structure"])
    attrs = {a.name: a for a in node.attribute}
    modes, trees, values = attrs["nodes_modes"].strings, attrs["nodes_treeids"].ints, attrs["nodes_values"].floats
    for i, (mode, tree) in enumerate(zip(modes, trees)):
        if mode == b"BRANCH_LEQ":
            (value,) = exact[(tree, np.float32(values[i]))]
            values[i] = float(value)


def trees_file(booster, n_features):
    """The trees for the ranking service's own walk (the card's `trees` file; see
    `services/core/src/ranking/trees.rs`): per tree its splits in pre-order (feature, threshold
    as `floor32`, children: a node's index, or -1 - a leaf's) and its leaves in the order met."""
    trees = []
    for info in booster.dump_model()["tree_info"]:
        t = {"feature": [], "threshold": [], "left": [], "right": [], "leaves": []}

        def walk(n):
            if "split_feature" not in n:
                t["leaves"].append(float(np.float32(n["leaf_value"])))
                return -len(t["leaves"])
            k = len(t["feature"])
            t["feature"].append(int(n["split_feature"]))
            t["threshold"].append(float(floor32(n["threshold"])))
            t["left"].append(0)
            t["right"].append(0)
            t["left"][k] = walk(n["left_child"])
            t["right"][k] = walk(n["right_child"])
            return k
        walk(info["tree_structure"])
        trees.append(t)
    return {"features": n_features, "base": 0.0, "trees": trees}


def walk_trees(file, x):
    """`trees_file`'s scores of rows `x`, one row and tree at a time: checks the file."""
    out = np.empty(len(x), dtype=np.float64)
    for r, row in enumerate(x):
        total = file["base"]
        for t in file["trees"]:
            c = 0 if t["feature"] else -1
            while c >= 0:
                c = t["left"][c] if row[t["feature"][c]] <= np.float32(t["threshold"][c]) else t["right"][c]
            total += t["leaves"][-c - 1]
        out[r] = 1 / (1 + np.exp(-total))
    return out


def sample_like_training(split, negatives, seed):
    """Rows of a judged split sampled as the export samples training users: every positive and
    `negatives` of the rest, for users with a positive. A boolean mask."""
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(split["label"]), dtype=bool)
    for user in np.unique(split["group"]):
        rows_of = np.flatnonzero(split["group"] == user)
        positive = split["label"][rows_of] > 0
        if not positive.any():
            continue
        keep[rows_of[positive]] = True
        rest = rows_of[~positive]
        keep[rng.choice(rest, min(negatives, len(rest)), replace=False)] = True
    return keep


def to_onnx(booster, n_dense, n_sparse):
    """The trees behind the service's inputs: `sparse` int64 [B, S] and `dense` float [B, D] →
    `score` float [B], the positive class's probability."""
    trees = onnxmltools.convert_lightgbm(
        booster,
        initial_types=[("features", FloatTensorType([None, n_dense + n_sparse]))],
        zipmap=False,
        target_opset=OPSET,
    )
    g = trees.graph
    round_thresholds_down(booster, next(n for n in g.node if n.op_type == "TreeEnsembleClassifier"))
    probabilities = next(o.name for o in g.output if o.name != "label")
    nodes = [
        helper.make_node("Cast", ["sparse"], ["sparse_f"], to=TensorProto.FLOAT),
        helper.make_node("Concat", ["dense", "sparse_f"], ["features"], axis=1),
        *g.node,
        helper.make_node("Gather", [probabilities, "positive"], ["score"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "gbdt",
        [
            helper.make_tensor_value_info("sparse", TensorProto.INT64, [None, n_sparse]),
            helper.make_tensor_value_info("dense", TensorProto.FLOAT, [None, n_dense]),
        ],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None])],
        initializer=[*g.initializer, helper.make_tensor("positive", TensorProto.INT64, [], [1])],
    )
    model = helper.make_model(graph, opset_imports=list(trees.opset_import), producer_name="recstack train_gbdt")
    model.ir_version = trees.ir_version
    onnx.checker.check_model(model)
    return model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    # 150: with the `item_*_then` columns validation NDCG@20 still rose past 100 trees (0.2120
    # at 100, 0.2138 at 140, flat to 200).
    ap.add_argument("--trees", type=int, default=150, help="at most; the best on validation is kept")
    ap.add_argument("--step", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--negatives", type=int, default=50,
                    help="the judged users' negatives in the refit (the export's for training users)")
    ap.add_argument("--version", default="gbdt-2")
    args = ap.parse_args()

    spec, (train, valid, test), baseline = load_export(args.data)
    y = train["label"]
    n_dense, n_sparse = train["dense"].shape[1], train["sparse"].shape[1]
    names = [*spec["dense"], *(f["name"] for f in spec["sparse"])]

    start = time.time()
    booster = lgb.train({**PARAMS, "seed": args.seed}, lgb.Dataset(rows(train), y, feature_name=names),
                        num_boost_round=args.trees,
                        callbacks=[lgb.log_evaluation(0)])
    xv = rows(valid)
    best, best_trees = -1.0, 0
    for trees in range(args.step, args.trees + 1, args.step):
        ndcg = list_metrics(valid, booster.predict(xv, num_iteration=trees))[0]
        print(f"{trees} trees: validation NDCG@{K} {ndcg:.4f} ({time.time() - start:.0f}s)", flush=True)
        if ndcg > best:
            best, best_trees = ndcg, trees
    chosen = lgb.train({**PARAMS, "seed": args.seed}, lgb.Dataset(rows(train), y, feature_name=names),
                       num_boost_round=best_trees)
    # The number of trees chosen, the trees are fitted again on every user of the validation
    # world: the judged users' candidates sampled as the training users' are. Validation is then
    # reported for the trees it chose among (the refit has seen it); the holdout for the refit.
    extra = sample_like_training(valid, args.negatives, args.seed)
    x_all = np.vstack([rows(train), rows(valid)[extra]])
    y_all = np.concatenate([y, valid["label"][extra]])
    booster = lgb.train({**PARAMS, "seed": args.seed}, lgb.Dataset(x_all, y_all, feature_name=names),
                        num_boost_round=best_trees)
    print(f"refit on {len(y_all)} rows ({int(y_all.sum())} positives): training and judged users")

    xt = rows(test)
    scores = {"valid": chosen.predict(xv), "test": booster.predict(xt)}
    ranked = {name: list_metrics(s, scores[name]) for name, s in (("valid", valid), ("test", test))}
    for name in ("valid", "test"):
        (n, r, users), (bn, br, _) = ranked[name], baseline[name]
        print(f"{name} ({users} users), {best_trees} trees: NDCG@{K} {n:.4f} recall@{K} {r:.4f}; "
              f"recall's order NDCG@{K} {bn:.4f} recall@{K} {br:.4f}")

    model = to_onnx(booster, n_dense, n_sparse)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    served = session.run(["score"], {"sparse": test["sparse"], "dense": test["dense"]})[0]
    drift = float(np.abs(served - scores["test"]).max())
    print(f"ONNX graph: max |score difference| on the holdout {drift:.2e}")
    if not drift < 1e-5:
        raise SystemExit(f"the ONNX graph does not compute the trained trees' scores (off by {drift:.2e})")

    walkable = trees_file(booster, n_dense + n_sparse)
    drift = float(np.abs(walk_trees(walkable, xt[:2000]) - scores["test"][:2000]).max())
    print(f"trees file: max |score difference| on 2,000 holdout rows {drift:.2e}")
    if not drift < 1e-5:
        raise SystemExit(f"the trees file does not compute the trained trees' scores (off by {drift:.2e})")

    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out / "model.onnx"
    onnx.save(model, onnx_path)
    (args.out / TREES).write_text(json.dumps(walkable, separators=(",", ":")) + "\n")
    card = model_card("gbdt", args.version, spec, ranked, baseline, args.data, len(y_all), {
        "refit": f"the trees chosen on validation, fitted again on the training and the judged users "
                 f"({args.negatives} sampled negatives each); validation metrics are the chosen trees', "
                 f"holdout metrics the refit's",
        "trees": f"{best_trees} of at most {args.trees} (best validation NDCG@{K}, every {args.step})",
        "seed": str(args.seed),
        "lightgbm": lgb.__version__,
        "onnxmltools": onnxmltools.__version__,
        "model": "gradient-boosted trees (LightGBM, binary log-loss): "
                 + ", ".join(f"{k} {v}" for k, v in PARAMS.items()
                             if k not in ("objective", "deterministic", "force_row_wise", "num_threads", "verbose")),
        "export": "ai.onnx.ml TreeEnsembleClassifier behind a Cast and a Concat of the service's inputs; "
                  "output the positive class's probability",
    })
    card["trees"] = TREES
    (args.out / "model.json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {onnx_path} ({onnx_path.stat().st_size // 1024} KiB) and model.json")


if __name__ == "__main__":
    main()
