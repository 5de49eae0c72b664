"""faiss HNSW on the exact vectors and queries the Rust ANN bench exported.

Usage: python faiss_hnsw.py DIR   (DIR written by RECSTACK_BENCH_EXPORT=DIR cargo bench ...)
Prints Markdown rows comparable to the Rust table: recall@10 against the same exact
neighbours, queries/s on one thread.
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

faiss.omp_set_num_threads(1)
start = time.perf_counter()
index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
index.hnsw.efConstruction = 100
index.add(items)
build = time.perf_counter() - start
for ef in (16, 32, 64, 128, 256):
    index.hnsw.efSearch = ef
    start = time.perf_counter()
    for q in queries:  # one query at a time, like the Rust loop
        index.search(q.reshape(1, dim), 10)
    qps = n_queries / (time.perf_counter() - start)
    _, found = index.search(queries, 10)
    recall = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact)])
    print(f"| faiss IndexHNSWFlat (M=32) | {ef} | {recall:.3f} | {qps:.0f} | {build:.1f} s |")
