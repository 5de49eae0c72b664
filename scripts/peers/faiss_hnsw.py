"""faiss HNSW on the exact vectors and queries the Rust ANN bench exported.

Usage: python faiss_hnsw.py DIR   (DIR written by RECSTACK_BENCH_EXPORT=DIR cargo bench ...)
Prints Markdown rows comparable to the Rust table: recall@10 against the same exact
neighbours, queries/s on one thread, a query per call (as the Rust loop) and all queries in
one call (faiss without Python's per-call overhead).
"""
import sys
import time
from pathlib import Path

import faiss
import numpy as np

d = Path(sys.argv[1])
n_items, n_queries, dim = map(int, (d / "shape.txt").read_text().split())
items = np.fromfile(d / "items.f32", dtype="<f4").reshape(n_items, dim)
queries = np.fromfile(d / "queries.f32", dtype="<f4").reshape(n_queries, dim)
exact = np.fromfile(d / "exact.u32", dtype="<u4").reshape(n_queries, 10)

items64, queries64 = items.astype(np.float64), queries.astype(np.float64)

faiss.omp_set_num_threads(1)
start = time.perf_counter()
index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
index.hnsw.efConstruction = 100
index.add(items)
build = time.perf_counter() - start
for ef in (10, 12, 16, 24, 32, 64, 128, 256):  # as the Rust table (ANN_EF)
    index.hnsw.efSearch = ef
    passes = []
    for _ in range(5):  # the median of 5 passes, as the Rust table (ANN_PASSES)
        start = time.perf_counter()
        for q in queries:  # one query at a time, like the Rust loop
            index.search(q.reshape(1, dim), 10)
        passes.append(n_queries / (time.perf_counter() - start))
    qps = sorted(passes)[len(passes) // 2]
    # faiss at its best on one thread: every query in one call (no Python per query).
    batched = []
    for _ in range(5):
        start = time.perf_counter()
        index.search(queries, 10)
        batched.append(n_queries / (time.perf_counter() - start))
    batch_qps = sorted(batched)[len(batched) // 2]
    _, found = index.search(queries, 10)
    recall = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact)])
    # Tie-aware, as the Rust table: a found item counts when its true (f64) similarity reaches
    # the exact 10th best's, less 1e-5.
    sims = lambda q, ids: items64[ids] @ queries64[q]
    tie_aware = np.mean([
        np.sum(sims(q, f[f >= 0]) >= sims(q, exact[q]).min() - 1e-5) / 10 for q, f in enumerate(found)
    ])
    print(f"| faiss IndexHNSWFlat (M=32) | {ef} | {recall:.3f} | {tie_aware:.3f} | {qps:.0f} | {batch_qps:.0f} | {build:.1f} s |")
