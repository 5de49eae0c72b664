"""What both ranker trainers read and how they judge: `recstack export-ranking`'s arrays and
the list metrics of candidates in a model's order (`train_ranker.py`, DeepFM; `train_gbdt.py`,
gradient-boosted trees).

Each split (`train`, `valid`, `test`) is a set of candidate rows: `sparse` (hashed ids),
`dense` (scaled values), `label` (the user rated the item next), `group` (the user),
`position` (recall's merged place) and `relevant` (the user's held-out count, found by recall
or not).
"""

import json
from pathlib import Path

import numpy as np

K = 20
SPLIT_ARRAYS = ("sparse", "dense", "label", "group", "position", "relevant")

# Exported features the rankers do not use, and why. User ids: ~2,800 training users with a
# few positives each; their embeddings memorise those and the validation NDCG is no better.
# Item ids: their embeddings learn which items were popular in the validation period, which is
# most of the validation gain they bring (0.1913 -> 0.1816 without them) and does not carry to
# the next period (the holdout reads better without them: 0.1652 -> 0.1668); `item_log_recent`
# says what was rising as of each world's end instead (docs/ranking.md, "deepfm-6").
UNUSED = {"user_id", "item_id"}


def feature_spec(data: Path):
    """The exported features less `UNUSED`: (the sparse columns kept, the card's `features`)."""
    exported = json.loads((data / "features.json").read_text())
    sparse_cols = [n for n, f in enumerate(exported["sparse"]) if f["name"] not in UNUSED]
    return sparse_cols, {"sparse": [exported["sparse"][n] for n in sparse_cols], "dense": exported["dense"]}


def load_split(data: Path, name: str, sparse_cols):
    s = {k: np.load(data / f"{name}_{k}.npy") for k in SPLIT_ARRAYS}
    s["sparse"] = np.ascontiguousarray(s["sparse"][:, sparse_cols])
    return s


def list_metrics(split, scores, k=K):
    """Mean per-user NDCG@k and recall@k of the candidates ordered by `scores` (ties keep
    recall's order), against every held-out item of the user (`relevant`, found by recall or
    not): what the levels bench measures on the served list."""
    order = np.lexsort((split["position"], -scores, split["group"]))
    g, lab, rel = split["group"][order], split["label"][order], split["relevant"][order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    ends = np.r_[starts[1:], len(g)]
    disc = 1 / np.log2(np.arange(k) + 2)
    ndcg, recall = [], []
    for a, b in zip(starts, ends):
        top = lab[a:min(b, a + k)]
        ndcg.append(float((top * disc[:len(top)]).sum() / disc[:min(k, rel[a])].sum()))
        recall.append(float(top.sum() / rel[a]))
    return float(np.mean(ndcg)), float(np.mean(recall)), len(starts)


def recall_order(split):
    """The metrics of recall's own merged order, the bar a ranker must clear."""
    return list_metrics(split, -split["position"].astype(np.float64))


def load_export(data: Path):
    """The export's features (less `UNUSED`) and splits, and recall's own order's metrics on the
    validation world and the holdout: (spec, (train, valid, test), {"valid"|"test": metrics})."""
    sparse_cols, spec = feature_spec(data)
    train, valid, test = (load_split(data, name, sparse_cols) for name in ("train", "valid", "test"))
    y = train["label"]
    print(f"train: {len(y)} rows ({int(y.sum())} positives); valid: {len(np.unique(valid['group']))} users; "
          f"test: {len(np.unique(test['group']))} users")
    baseline = {name: recall_order(s) for name, s in (("valid", valid), ("test", test))}
    return spec, (train, valid, test), baseline


def card_metrics(ranked, baseline):
    """The card's `metrics`: the model's order and recall's on the validation world (chosen on)
    and the holdout (reported), each {"valid"|"test": (ndcg, recall, users)}."""
    metrics = {}
    for name, key in (("valid", "validation"), ("test", "holdout")):
        (n, r, users), (bn, br, _) = ranked[name], baseline[name]
        metrics.update({
            f"{key}_ndcg@{K}": round(n, 4),
            f"{key}_recall@{K}": round(r, 4),
            f"{key}_recall_order_ndcg@{K}": round(bn, 4),
            f"{key}_recall_order_recall@{K}": round(br, 4),
            f"{key}_users": users,
        })
    return metrics


def model_card(name, version, spec, ranked, baseline, data: Path, rows: int, training: dict):
    """A ranker's card (`model.json`, read by the ranking service): its inputs, its metrics, and
    how it was trained — what both trainers record, then `training`'s model-specific fields."""
    return {
        "name": name,
        "version": version,
        "sparse_input": "sparse",
        "dense_input": "dense",
        "output": "score",
        "features": spec,
        "metrics": card_metrics(ranked, baseline),
        "training": {
            "data": "MovieTweetings 100K (MIT), per-user time split, last 20% held out; the training "
                    "ratings split again the same way (the validation world)",
            "artifact_version": (data / "artifact_version").read_text().strip(),
            # The newest training rating of those artifacts: the ranking service reports how
            # far the data it serves has moved past it (docs/ranking.md).
            "data_as_of": (data / "data_as_of").read_text().strip(),
            "rows": str(rows),
            "examples": "recall's first 500 candidates of each validation-world user: those rated next "
                        "are positives, 50 of the rest negatives; one user in five judges (validation) "
                        "and reports (holdout: the same hash on the real split)",
            "metrics": f"NDCG@{K} and recall@{K} of the candidates in the model's order against recall's "
                       "merged order, over every held-out item of the user",
            "unused": ", ".join(sorted(UNUSED)),
            **training,
        },
    }
