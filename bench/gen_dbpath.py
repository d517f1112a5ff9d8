#!/usr/bin/env python3
"""Make a MongoDB-like dbPath for benchmarks, or rewrite a share of its 4 KiB pages in place.

  gen_dbpath.py make DIR SIZE_MIB [--seed N]    WiredTiger-like files of 4 KiB pages, about
                                                half incompressible (compressed leaf pages),
                                                half compressible (BSON-ish text)
  gen_dbpath.py rewrite DIR PERCENT [--seed N]  rewrite PERCENT % of all 4 KiB pages, scattered
                                                across the files, in place (as WiredTiger does)
"""
import argparse
import os
import random

PAGE = 4096


def page(rng, i):
    if rng.random() < 0.5:
        return rng.randbytes(PAGE)
    # BSON-ish documents: field names repeat, values vary: zstd gets roughly 3-5x.
    parts = []
    n = 0
    while n < PAGE:
        doc = '{"_id":{"$oid":"%024x"},"user":"user%06d","score":%d,"tags":["a","b"],"ts":%d}' % (
            rng.getrandbits(96), rng.randrange(10**6), rng.randrange(10**4), 1700000000 + i)
        parts.append(doc)
        n += len(doc)
    return "".join(parts).encode()[:PAGE]


def layout(total_pages):
    """File names and page counts shaped like a dbPath: a few big collections, indexes,
    catalog, journal."""
    files = []
    big = int(total_pages * 0.70)
    for i, share in enumerate([0.4, 0.3, 0.2, 0.1]):
        files.append((f"collection-{i}-5830917.wt", max(1, int(big * share))))
    idx = int(total_pages * 0.20)
    for i in range(6):
        files.append((f"index-{i}-5830917.wt", max(1, idx // 6)))
    files.append(("journal/WiredTigerLog.0000000001", max(1, int(total_pages * 0.05))))
    rest = max(1, total_pages - sum(n for _, n in files))
    for name in ["WiredTiger.wt", "_mdb_catalog.wt", "sizeStorer.wt", "WiredTigerHS.wt"]:
        files.append((name, max(1, rest // 4)))
    return files


def make(root, size_mib, seed):
    rng = random.Random(seed)
    total = size_mib * 1024 * 1024 // PAGE
    for name, pages in layout(total):
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            for i in range(pages):
                f.write(page(rng, i))
    for name, text in [("WiredTiger", "WiredTiger\nWiredTiger 11.2.0\n"), ("mongod.lock", ""),
                       ("storage.bson", "x" * 114), ("WiredTiger.turtle", "turtle\n" * 20)]:
        with open(os.path.join(root, name), "w") as f:
            f.write(text)
    os.makedirs(os.path.join(root, "diagnostic.data"), exist_ok=True)


def rewrite(root, percent, seed):
    rng = random.Random(seed)
    files = []
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            pages = os.path.getsize(p) // PAGE
            if pages:
                files.append((p, pages))
    total = sum(p for _, p in files)
    want = max(1, int(total * percent / 100))
    picks = rng.sample(range(total), want)
    picks.sort()
    bounds = []
    acc = 0
    for p, n in files:
        bounds.append((acc, acc + n, p))
        acc += n
    handles = {}
    for g in picks:
        for lo, hi, p in bounds:
            if lo <= g < hi:
                f = handles.get(p) or open(p, "r+b")
                handles[p] = f
                f.seek((g - lo) * PAGE)
                f.write(page(rng, g))
                break
    for f in handles.values():
        f.close()
    print(f"rewrote {want} of {total} pages in {len(handles)} files")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["make", "rewrite"])
    ap.add_argument("dir")
    ap.add_argument("amount", type=float)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if a.cmd == "make":
        make(a.dir, int(a.amount), a.seed)
    else:
        rewrite(a.dir, a.amount, a.seed)
