#!/usr/bin/env python3
"""Cross-entropy (nats per token) of n-gram baselines on a prepared directory's val split, with counts
from its train split: add-1/2 unigram, and bigram interpolated with it, P(b | a) = w·c(a, b)/c(a) +
(1 − w)·P_uni(b). The reference points of docs/experiments.md ("The experiment preset").

    python3 docs/results/ngram_baselines.py data/cache/shakespeare-closed

Reads train.bin / val.bin (flat little-endian uint16) and meta.json's vocab_size (else 50257); standard
library only.
"""
import array
import json
import math
import os
import sys
from collections import Counter


def tokens(path):
    a = array.array("H")
    with open(path, "rb") as f:
        a.frombytes(f.read())
    if sys.byteorder != "little":
        a.byteswap()
    return a


def main(d):
    train, val = tokens(os.path.join(d, "train.bin")), tokens(os.path.join(d, "val.bin"))
    try:
        vocab = json.load(open(os.path.join(d, "meta.json")))["vocab_size"] or 50257
    except (OSError, KeyError):
        vocab = 50257
    uni = Counter(train)
    total = len(train) + 0.5 * vocab
    p_uni = lambda t: (uni[t] + 0.5) / total
    print(f"{d}: {len(train):,} train / {len(val):,} val tokens, vocabulary {vocab:,}")
    print(f"unigram (add-1/2): {sum(-math.log(p_uni(t)) for t in val) / len(val):.4f}")
    big = Counter(zip(train[:-1], train[1:]))
    prev = Counter(train[:-1])
    for w in (0.5, 0.7, 0.8, 0.9):
        s = 0.0
        for a, b in zip(val[:-1], val[1:]):
            p_big = big[(a, b)] / prev[a] if prev[a] else 0.0
            s -= math.log(w * p_big + (1 - w) * p_uni(b))
        print(f"bigram interpolated, w = {w}: {s / (len(val) - 1):.4f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "data/cache/shakespeare-closed")
