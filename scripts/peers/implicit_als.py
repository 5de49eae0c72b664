"""The `implicit` library's ALS on the split `recstack eval --export-split DIR` wrote.

Prints a Markdown row with NDCG@20, recall@20 and recall@200 computed exactly as
services/offline/src/eval.rs does: held-out items of each user, training items excluded.
"""
import math
import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from implicit.als import AlternatingLeastSquares

d = Path(sys.argv[1])
n_users, n_items = map(int, (d / "shape.txt").read_text().split())
train = np.loadtxt(d / "train.csv", delimiter=",", dtype=np.int64, ndmin=2)
test = np.loadtxt(d / "test.csv", delimiter=",", dtype=np.int64, ndmin=2)

# Same confidence as recstack's ALS: 1 + alpha * rating / 10 (implicit adds the 1 itself).
alpha = 20.0
conf = alpha * train[:, 2].astype(np.float32) / 10.0
user_items = sp.csr_matrix((conf, (train[:, 0], train[:, 1])), shape=(n_users, n_items))
model = AlternatingLeastSquares(factors=32, regularization=0.05, iterations=12, random_state=42, num_threads=1)
model.fit(user_items, show_progress=False)

truth = {}
for u, i, _ in test:
    truth.setdefault(int(u), set()).add(int(i))
users = np.array(sorted(truth), dtype=np.int64)
ids, _ = model.recommend(users, user_items[users], N=200, filter_already_liked_items=True)

def recall_at(ranked, t, k):
    return sum(1 for i in ranked[:k] if i in t) / len(t)

def ndcg_at(ranked, t, k):
    dcg = sum(1 / math.log2(r + 2) for r, i in enumerate(ranked[:k]) if i in t)
    ideal = sum(1 / math.log2(r + 2) for r in range(min(len(t), k)))
    return dcg / ideal if ideal else 0.0

rows = [(ndcg_at(list(r), truth[int(u)], 20), recall_at(list(r), truth[int(u)], 20), recall_at(list(r), truth[int(u)], 200)) for u, r in zip(users, ids)]
m = np.mean(rows, axis=0)
# The first columns of `recstack eval`'s table (NDCG@20, recall@20, recall@200; no intervals).
print(f"| implicit ALS (peer, same split) | {m[0]:.4f} | {m[1]:.4f} | {m[2]:.4f} | | | | |")
