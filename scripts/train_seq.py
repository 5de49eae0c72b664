"""Trains the vector channel's sequence model (a two-tower model whose user tower reads the
user's recent items) on `recstack export-sequences` output and exports it for serving.

The model (SASRec-style, Kang & McAuley 2018, with a full softmax):
- item tower: one embedding row per item; an item's vector is its row, L2-normalized;
- user tower: the user's last `seq_len` items (oldest first, left-padded), their rows plus a
  learned position embedding, `blocks` causal self-attention blocks, the newest position's
  output projected and L2-normalized;
- score: cosine of the two over a temperature, trained with cross-entropy over every item to
  predict each next item of every training sequence.

Served as the stack serves it: the recall service gathers the recent items' rows itself (the
ANN index holds the same rows, normalized) and runs the user tower through ONNX Runtime on them,
so the ONNX graph holds only the tower's weights. Written to `--out`:
- `tower.onnx`: input `recent` float [B, seq_len, dim] (the items' rows, oldest first, zeros
  where the history is shorter) and `mask` float [B, seq_len] (1 where an item is), output
  `user` float [B, dim] (unit length);
- `items.f32`: the item rows, little-endian f32, one row of `dim` per item of `items`;
- `model.json`: the card (items, shapes, data, holdout metrics, the training command).

Epochs are chosen on the validation world (the training ratings split again by time); the
served model is then trained on the whole training split for that many epochs and reported on
the real holdout. The validation world's model is written to `--out/validation` too: recall in
the validation world (fusion tuning, the ranker's training data) must not see what it is
judged on.

Usage: python scripts/train_seq.py --data DIR --out DIR [--epochs N] [--seed S]
"""

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

K, RECALL_K = 20, 200


class Tower(nn.Module):
    """The user tower over gathered item rows: what `tower.onnx` computes."""

    def __init__(self, dim, seq_len, blocks, heads, dropout):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.pos = nn.Parameter(torch.randn(seq_len, dim) * 0.02)
        self.blocks = nn.ModuleList(
            nn.ModuleDict({
                "norm1": nn.LayerNorm(dim),
                "qkv": nn.Linear(dim, 3 * dim),
                "out": nn.Linear(dim, dim),
                "norm2": nn.LayerNorm(dim),
                "ff": nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)),
            })
            for _ in range(blocks)
        )
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, dim)
        causal = torch.tril(torch.ones(seq_len, seq_len))
        self.register_buffer("causal", causal)

    def encode(self, recent, mask, newest_only=False):
        """Every position's output [B, L, D] (position t sees positions <= t with an item), or
        with `newest_only` the newest position's alone [B, 1, D]: the last block then queries
        from that position only (the others' outputs would not be read), which is what serving
        runs."""
        b, l, d = recent.shape
        h = d // self.heads
        x = self.drop((recent * math.sqrt(d) + self.pos) * mask.unsqueeze(-1))
        allowed = self.causal.unsqueeze(0) * mask.unsqueeze(1)            # [B, L, L]
        # A padded query position sees itself so softmax stays finite; its output is unused.
        allowed = torch.maximum(allowed, torch.eye(l).unsqueeze(0))
        bias = (1.0 - allowed).unsqueeze(1) * -1e9                         # [B, 1, L, L]
        for n, blk in enumerate(self.blocks):
            q, k, v = blk["qkv"](blk["norm1"](x)).split(d, dim=-1)
            if newest_only and n == len(self.blocks) - 1:
                q, x, bias = q[:, -1:], x[:, -1:], bias[:, :, -1:]
            lq = q.shape[1]
            q = q.reshape(b, lq, self.heads, h).transpose(1, 2)
            k = k.reshape(b, l, self.heads, h).transpose(1, 2)
            v = v.reshape(b, l, self.heads, h).transpose(1, 2)
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(h) + bias, dim=-1)
            x = x + self.drop(blk["out"]((att @ v).transpose(1, 2).reshape(b, lq, d)))
            x = x + self.drop(blk["ff"](blk["norm2"](x)))
        return nn.functional.normalize(self.proj(self.norm(x)), dim=-1)

    def forward(self, recent, mask):
        return self.encode(recent, mask, newest_only=True)[:, -1, :]


class SeqModel(nn.Module):
    def __init__(self, n_items, dim, seq_len, blocks, heads, dropout):
        super().__init__()
        self.items = nn.Embedding(n_items, dim)
        nn.init.normal_(self.items.weight, std=0.1)
        self.tower = Tower(dim, seq_len, blocks, heads, dropout)

    def rows(self, seq):
        """Item rows for a batch of left-padded id windows (-1 = no item) and the mask."""
        mask = (seq >= 0).float()
        return self.items(seq.clamp(min=0)) * mask.unsqueeze(-1), mask

    def item_vectors(self):
        return nn.functional.normalize(self.items.weight, dim=-1)


def windows(seqs, seq_len):
    """Training windows: each sequence cut into pieces of seq_len + 1 from its newest end,
    left-padded with -1; input = all but the last, target = all but the first."""
    out = []
    for s in seqs:
        end = len(s)
        while end >= 2:
            piece = s[max(0, end - seq_len - 1):end]
            out.append([-1] * (seq_len + 1 - len(piece)) + piece)
            end -= seq_len
    return torch.tensor(out, dtype=torch.int64)


def last_window(s, seq_len):
    piece = s[-seq_len:]
    return [-1] * (seq_len - len(piece)) + piece


def train_epochs(model, seqs, epochs, args, report=None):
    data = windows(seqs, args.seq_len)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(args.seed)
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        started, total, n = time.time(), 0.0, 0
        for batch in data[torch.randperm(len(data), generator=g)].split(args.batch):
            inp, tgt = batch[:, :-1], batch[:, 1:]
            rows, mask = model.rows(inp)
            out = model.tower.encode(rows, mask)                         # [B, L, D]
            logits = out @ model.item_vectors().T / args.temperature     # [B, L, N]
            keep = tgt >= 0
            loss = nn.functional.cross_entropy(logits[keep], tgt[keep])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, n = total + loss.item() * int(keep.sum()), n + int(keep.sum())
        line = f"epoch {epoch}/{epochs}: loss {total / max(n, 1):.4f} ({time.time() - started:.1f}s)"
        if report is not None:
            m = report(model)
            m["state"] = copy.deepcopy(model.state_dict())
            history.append(m)
            line += f"; validation NDCG@{K} {m['ndcg']:.4f}, recall@{K} {m['recall20']:.4f}, recall@{RECALL_K} {m['recall200']:.4f}"
        print(line, flush=True)
    return history


def evaluate(model, world, seq_len):
    """The channel as recall serves it: each judged user's top RECALL_K by cosine to the
    tower's vector, the user's training items left out."""
    users = [u for u, h in enumerate(world["holdout"]) if h and world["train"][u]]
    model.eval()
    ndcg, r20, r200 = [], [], []
    with torch.no_grad():
        vectors = model.item_vectors()
        for chunk in range(0, len(users), 512):
            us = users[chunk:chunk + 512]
            seq = torch.tensor([last_window(world["train"][u], seq_len) for u in us])
            q = model.tower(*model.rows(seq))
            scores = q @ vectors.T
            for row, u in enumerate(us):
                scores[row, world["train"][u]] = -math.inf
            top = scores.topk(RECALL_K, dim=1).indices.numpy()
            for row, u in enumerate(us):
                truth = set(world["holdout"][u])
                hits = [int(i) in truth for i in top[row]]
                dcg = sum(1 / math.log2(r + 2) for r, h in enumerate(hits[:K]) if h)
                ideal = sum(1 / math.log2(r + 2) for r in range(min(len(truth), K)))
                ndcg.append(dcg / ideal)
                r20.append(sum(hits[:K]) / len(truth))
                r200.append(sum(hits) / len(truth))
    return {"ndcg": float(np.mean(ndcg)), "recall20": float(np.mean(r20)),
            "recall200": float(np.mean(r200)), "users": len(users)}


def export(model, out, items, args, card_extra):
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    tower = model.tower
    seq = torch.tensor([last_window(list(range(i, i + 7)), args.seq_len) for i in range(4)])
    rows, mask = model.rows(seq)
    onnx_path = out / "tower.onnx"
    batch = torch.export.Dim("batch")
    torch.onnx.export(
        tower, (rows, mask), str(onnx_path), dynamo=True, external_data=False,
        input_names=["recent", "mask"], output_names=["user"],
        dynamic_shapes={"recent": {0: batch}, "mask": {0: batch}},
    )
    weights = model.items.weight.detach().numpy().astype("<f4")
    (out / "items.f32").write_bytes(weights.tobytes())
    card = {
        "name": "seq",
        "version": args.version,
        "dim": args.dim,
        "seq_len": args.seq_len,
        "input": "recent",
        "mask_input": "mask",
        "output": "user",
        "items": items,
        **card_extra,
    }
    (out / "model.json").write_text(json.dumps(card, indent=1) + "\n")
    print(f"wrote {onnx_path} ({onnx_path.stat().st_size // 1024} KiB), items.f32 "
          f"({weights.nbytes // 1024} KiB) and model.json to {out}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=20)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--dropout", type=float, default=0.3)
    ap.add_argument("--temperature", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--version", default="seq-1")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = json.loads((args.data / "sequences.json").read_text())
    items, valid, test = data["items"], data["validation"], data["test"]
    print(f"{len(items)} items; validation world {sum(map(len, valid['train']))} training ratings, "
          f"real split {sum(map(len, test['train']))}", flush=True)

    def fresh():
        torch.manual_seed(args.seed)
        return SeqModel(len(items), args.dim, args.seq_len, args.blocks, args.heads, args.dropout)

    model = fresh()
    history = train_epochs(model, valid["train"], args.epochs, args,
                           report=lambda m: evaluate(m, valid, args.seq_len))
    best = max(range(len(history)), key=lambda e: history[e]["ndcg"]) + 1
    print(f"best validation NDCG@{K} at epoch {best}", flush=True)

    # The validation world's model: the same recipe, stopped at the chosen epoch.
    val_model = fresh()
    val_model.load_state_dict(history[best - 1]["state"])
    v = evaluate(val_model, valid, args.seq_len)
    served = fresh()
    train_epochs(served, test["train"], best, args)
    t = evaluate(served, test, args.seq_len)
    print(f"holdout: NDCG@{K} {t['ndcg']:.4f}, recall@{K} {t['recall20']:.4f}, "
          f"recall@{RECALL_K} {t['recall200']:.4f} over {t['users']} users", flush=True)

    def metrics(prefix, m):
        return {f"{prefix}_ndcg@{K}": round(m["ndcg"], 4), f"{prefix}_recall@{K}": round(m["recall20"], 4),
                f"{prefix}_recall@{RECALL_K}": round(m["recall200"], 4), f"{prefix}_users": m["users"]}

    training = {
        "data": "MovieTweetings 100K (MIT), per-user time split, last 20% held out; the training "
                "ratings split again the same way (the validation world)",
        "command": "scripts/train-seq",
        "model": f"SASRec-style: {args.dim}-dim item rows, {args.blocks} causal self-attention blocks "
                 f"({args.heads} heads, dropout {args.dropout}) over the last {args.seq_len} items, cosine / {args.temperature}, "
                 "full-softmax cross-entropy on every next item",
        "epochs": f"{best} of {args.epochs} (best validation NDCG@{K})",
        "metrics": f"the channel alone: each judged user's top {RECALL_K} by cosine, training items "
                   "left out, against every held-out item",
        "seed": str(args.seed),
        "torch": torch.__version__,
    }
    export(served, args.out, items, args, {"metrics": {**metrics("validation", history[best - 1]),
                                                       **metrics("holdout", t)},
                                           "training": {**training, "trained_on": "the real training split"}})
    export(val_model, args.out / "validation", items, args,
           {"metrics": metrics("validation", v),
            "training": {**training, "trained_on": "the validation world's training ratings"}})


if __name__ == "__main__":
    main()
