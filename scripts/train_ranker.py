"""Trains the DeepFM ranker on `recstack export-ranking` output and exports it to ONNX.

DeepFM (Guo et al., 2017): a shared embedding per sparse field feeds a first-order term, a
factorization machine (pairwise interactions) and an MLP; the dense features join the first
order term and the MLP.

The ranker reorders recall's candidates, so it learns from them: in the validation world (the
training ratings split again by time; see services/src/ranking/export.rs) each training user's
candidates that came next are positives and a sample of the others negatives, with binary
cross-entropy. After each epoch the model ranks every candidate of the judged validation users;
the epoch with the best NDCG@20 is kept (the model is chosen on the validation world only). The
real holdout's judged users are then reported: NDCG@20 and recall@20 of the ranker's order of
recall's candidates against recall's own order.

Writes `model.onnx` and `model.json` (the model card the ranking service reads). The ONNX graph
is `ServingDeepFM`: the trained weights folded into a form ONNX Runtime runs ~2x faster,
checked to give the same scores on the holdout before it is written.

The graph is also written in two parts (`split_ranker.py`): the first stage and the head; the
card's `factored` section names them.

Usage: python scripts/train_ranker.py --data DIR --out DIR [--epochs N] [--seed S]
"""

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ranker_data import K, list_metrics, load_export, model_card
from split_ranker import split_for_serving


class DeepFM(nn.Module):
    def __init__(self, buckets, n_dense, dim=8, hidden=(64, 32)):
        super().__init__()
        self.offsets = torch.tensor(np.concatenate([[0], np.cumsum(buckets)[:-1]]), dtype=torch.int64)
        total = int(sum(buckets))
        self.embed = nn.Embedding(total, dim)
        self.linear = nn.Embedding(total, 1)
        self.dense_linear = nn.Linear(n_dense, 1)
        layers, width = [], len(buckets) * dim + n_dense
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)
        nn.init.normal_(self.embed.weight, std=0.01)
        nn.init.zeros_(self.linear.weight)

    def forward(self, sparse, dense):
        idx = sparse + self.offsets
        e = self.embed(idx)                                   # [B, F, D]
        first = self.linear(idx).sum(dim=1) + self.dense_linear(dense)   # [B, 1]
        s = e.sum(dim=1)
        fm = 0.5 * (s * s - (e * e).sum(dim=1)).sum(dim=1, keepdim=True)  # [B, 1]
        deep = self.mlp(torch.cat([e.flatten(1), dense], dim=1))
        return torch.sigmoid(first + fm + deep).squeeze(1)    # [B]


class ServingDeepFM(nn.Module):
    """The same function as a trained `DeepFM`, rearranged into what ONNX Runtime runs fast.

    The training form reduces over the field axis of a [B, F, D] tensor three times (the
    first-order sum, the FM's sum and its sum of squares); ONNX Runtime's ReduceSum over a
    middle axis costs about as much as the rest of the graph. Here the weights are folded so
    that one Gather and one Gemm produce everything the reductions did:

    - each table row is [e / sqrt(2), w - |e|^2 / 2] (embedding e, first-order weight w), so
      summing a row's last column over the fields gives the first-order term minus half the
      FM's sum of squares;
    - one Gemm over [gathered rows, dense] gives the MLP's first layer (before ReLU), the
      field sum s / sqrt(2), and that last column's sum plus the dense first-order term;
    - the FM is then 0.5 |s|^2 - 0.5 sum |e|^2 = |s / sqrt(2)|^2 + (the part already summed).
    """

    def __init__(self, m: DeepFM):
        super().__init__()
        with torch.no_grad():
            e, w = m.embed.weight, m.linear.weight
            fields, dim = len(m.offsets), e.shape[1]
            w0 = m.mlp[0].weight                      # [H, F*D + n_dense]
            hidden, n_dense = w0.shape[0], m.dense_linear.weight.shape[1]
            root2 = math.sqrt(2.0)
            self.register_buffer("offsets", m.offsets.clone())
            self.table = nn.Parameter(torch.cat([e / root2, w - 0.5 * (e * e).sum(1, keepdim=True)], dim=1))
            width = dim + 1
            gemm = torch.zeros(fields * width + n_dense, hidden + dim + 1)
            for f in range(fields):
                rows = slice(f * width, f * width + dim)
                gemm[rows, :hidden] = w0[:, f * dim:(f + 1) * dim].T * root2
                gemm[rows, hidden:hidden + dim] = torch.eye(dim)
                gemm[f * width + dim, hidden + dim] = 1.0
            gemm[fields * width:, :hidden] = w0[:, fields * dim:].T
            gemm[fields * width:, hidden + dim] = m.dense_linear.weight[0]
            bias = torch.zeros(hidden + dim + 1)
            bias[:hidden] = m.mlp[0].bias
            bias[hidden + dim] = m.dense_linear.bias[0]
            self.gemm, self.bias = nn.Parameter(gemm), nn.Parameter(bias)
        self.split = [hidden, dim, 1]
        self.rest = nn.Sequential(*list(m.mlp)[1:])   # ReLU, then the MLP's other layers

    def forward(self, sparse, dense):
        rows = nn.functional.embedding(sparse + self.offsets, self.table)          # [B, F, D+1]
        y = torch.addmm(self.bias, torch.cat([rows.flatten(1), dense], dim=1), self.gemm)
        h, s, first = torch.split(y, self.split, dim=1)
        return torch.sigmoid(first + (s * s).sum(dim=1, keepdim=True) + self.rest(h)).squeeze(1)


def score(model, split):
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(split["sparse"]), torch.from_numpy(split["dense"])).numpy()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=6, help="at most; the best on validation is kept")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--version", default="deepfm-6")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    spec, (train, valid, test), baseline = load_export(args.data)
    y = train["label"]

    model = DeepFM([f["buckets"] for f in spec["sparse"]], train["dense"].shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = nn.BCELoss()
    xs_t, xd_t, y_t = torch.from_numpy(train["sparse"]), torch.from_numpy(train["dense"]), torch.from_numpy(y)
    start = time.time()
    best, best_epoch, best_state = -1.0, 0, None
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(y))
        total, batches = 0.0, math.ceil(len(y) / args.batch)
        for b in range(batches):
            idx = perm[b * args.batch:(b + 1) * args.batch]
            opt.zero_grad()
            loss = loss_fn(model(xs_t[idx], xd_t[idx]), y_t[idx])
            loss.backward()
            opt.step()
            total += loss.item()
            if b % 20 == 0:
                print(f"\repoch {epoch + 1}/{args.epochs} batch {b}/{batches} loss {total / (b + 1):.4f}", end="", flush=True)
        ndcg, _, _ = list_metrics(valid, score(model, valid))
        print(f"\repoch {epoch + 1}/{args.epochs}: loss {total / batches:.4f}, validation NDCG@{K} {ndcg:.4f} "
              f"({time.time() - start:.0f}s)          ")
        if ndcg > best:
            best, best_epoch = ndcg, epoch + 1
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    model.eval()

    ranked = {name: list_metrics(s, score(model, s)) for name, s in (("valid", valid), ("test", test))}
    for name in ("valid", "test"):
        (n, r, users), (bn, br, _) = ranked[name], baseline[name]
        print(f"{name} ({users} users), epoch {best_epoch}: NDCG@{K} {n:.4f} recall@{K} {r:.4f}; "
              f"recall's order NDCG@{K} {bn:.4f} recall@{K} {br:.4f}")

    serving = ServingDeepFM(model).eval()
    ts, td = torch.from_numpy(test["sparse"]), torch.from_numpy(test["dense"])
    with torch.no_grad():
        drift = (serving(ts, td) - model(ts, td)).abs().max().item()
    print(f"serving form: max |score difference| on the holdout {drift:.2e}")
    if not drift < 1e-5:
        raise SystemExit(f"the serving form does not compute the trained model's scores (off by {drift:.2e})")

    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out / "model.onnx"
    batch = torch.export.Dim("batch")
    torch.onnx.export(
        serving,
        (ts[:2], td[:2]),
        str(onnx_path),
        dynamo=True,
        external_data=False,
        input_names=["sparse", "dense"],
        output_names=["score"],
        dynamic_shapes={"sparse": {0: batch}, "dense": {0: batch}},
    )
    card = model_card("deepfm", args.version, spec, ranked, baseline, args.data, len(y), {
        "epochs": f"{best_epoch} of {args.epochs} (best validation NDCG@{K})",
        "seed": str(args.seed),
        "torch": torch.__version__,
        "model": "DeepFM: 8-dim embeddings, FM + MLP 64-32-1, sigmoid output",
        "export": "serving form: one Gather and one Gemm in place of the field reductions",
    })
    card["factored"] = split_for_serving(args.out)
    (args.out / "model.json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {onnx_path} ({onnx_path.stat().st_size // 1024} KiB) and model.json")


if __name__ == "__main__":
    main()
