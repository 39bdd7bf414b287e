"""Near-duplicate detection: kubetune's MinHash LSH against datatrove's and datasketch's, on one corpus.

A seeded synthetic corpus (default 100,000 documents of 100-400 words, Zipfian word frequencies over a
generated vocabulary of 40,000 words, sentences with capitals and punctuation) holds planted near duplicates:
pairs of a source document and a copy with a known share of its words edited (0 % = exact copy, 1, 2, 3, 5,
10, 20, 30 %; an edit substitutes, inserts or deletes one word), and groups of three "template siblings",
distinct documents that share a boilerplate block of 35-65 % of their words (Jaccard 0.2-0.5: related texts,
not copies). Everything is shuffled.

Each method runs in its own process pinned to one CPU, one after the other:

* kubetune: ``find_near_duplicates(texts, NearDedupSpec())`` (its defaults; ``--variant`` adds rows with other
  fields), on the texts already in memory; run ``--repeats`` times, the median wall time is reported (memory
  from the first run).
* datatrove: MinhashDedupSignature -> MinhashDedupBuckets -> MinhashDedupCluster -> MinhashDedupFilter with
  ``MinhashConfig()`` defaults, each a LocalPipelineExecutor with 1 worker (the buckets stage needs 14
  tasks, run one after the other by that worker), reading the corpus JSONL.
* datasketch: ``MinHash.generator`` (num_perm=112, update on 5-word shingles of ``\\w+`` words) and
  ``MinHashLSH(num_perm=112, params=(14, 8))``; a document is dropped when ``query`` returns a kept one,
  otherwise it is inserted (first come is kept).

Measured per method: wall time of the dedup work only (loading the texts for kubetune and datasketch is
timed apart), documents/second on one core, resident memory (``VmHWM`` after the work, its growth over the
resident set just before the work, with the high-water mark reset there; and ``ru_maxrss``), and precision
and recall against the planted pairs: a pair is found when exactly one of its two documents is dropped (and,
where the method says which document it matched, it matched the other one); precision = found / dropped.

    .cache/bench-dedup-venv/bin/python bench/dedup/run.py            # see bench/dedup/README.md
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RATES = (0.0, 0.01, 0.02, 0.03, 0.05, 0.10, 0.20, 0.30)
KIND_ORIGINAL, KIND_SOURCE, KIND_COPY, KIND_SIBLING = 0, 1, 2, 3
_WORD = re.compile(r"\w+")


# -- the corpus ----------------------------------------------------------------------------------------------


def _vocabulary(rng: np.random.Generator, size: int) -> np.ndarray:
    """`size` distinct pronounceable words of 1-4 syllables."""
    onsets = ["", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z"]
    onsets += ["br", "ch", "cl", "dr", "fl", "gr", "pl", "pr", "sh", "st", "th", "tr"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ee", "ou", "oo", "y"]
    codas = ["", "", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ng", "ck"]
    seen: set[str] = set()
    while len(seen) < size:
        n = int(rng.choice([1, 2, 2, 3, 3, 4]))
        seen.add("".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(n)))
    words = np.array(sorted(seen))
    rng.shuffle(words)  # rank (frequency) independent of spelling
    return words


class Writer:
    """Zipfian words rendered as sentences: a capital first word, a full stop, now and then a comma."""

    def __init__(self, rng: np.random.Generator, vocabulary: int = 40_000):
        self.rng = rng
        self.words = _vocabulary(rng, vocabulary)
        p = 1.0 / (np.arange(1, vocabulary + 1) + 2.7)
        self.cdf = np.cumsum(p / p.sum())

    def draw(self, n: int) -> list[str]:
        return self.words[np.searchsorted(self.cdf, self.rng.random(n))].tolist()

    def tokens(self, n: int) -> list[str]:
        toks = self.draw(n)
        i = 0
        while i < n:
            end = min(n, i + int(self.rng.integers(6, 25)))
            toks[i] = toks[i].capitalize()
            toks[end - 1] += "."
            for j in range(i, end - 1):
                if self.rng.random() < 0.05:
                    toks[j] += ","
            i = end
        return toks

    def edit(self, toks: list[str], rate: float) -> list[str]:
        """`toks` with round(rate * len) words substituted, inserted or deleted (1:1/2:1/2), at random places."""
        out = list(toks)
        n_edits = round(rate * len(toks))
        for pos in sorted(self.rng.choice(len(toks), size=n_edits, replace=False).tolist(), reverse=True):
            op = self.rng.random()
            if op < 0.5:
                out[pos] = self.draw(1)[0]
            elif op < 0.75:
                out.insert(pos, self.draw(1)[0])
            else:
                del out[pos]
        return out


def _shingles(text: str, k: int = 5) -> set[tuple[str, ...]]:
    ws = _WORD.findall(text.casefold())
    if len(ws) < k:
        return {tuple(ws)} if ws else set()
    return {tuple(ws[i : i + k]) for i in range(len(ws) - k + 1)}


def _jaccard(a: str, b: str) -> float:
    sa, sb = _shingles(a), _shingles(b)
    return len(sa & sb) / len(sa | sb)


def build_corpus(n_docs: int, seed: int, folder: Path, pairs_per_rate: int, sibling_groups: int) -> None:
    """corpus/corpus.jsonl ({"id", "text"} per line) and truth.npz (kind, partner, rate, group, jaccard)."""
    rng = np.random.default_rng(seed)
    writer = Writer(rng)
    n_pairs = pairs_per_rate * len(RATES)
    n_siblings = 3 * sibling_groups
    n_originals = n_docs - n_pairs - n_siblings
    assert n_originals >= n_pairs, "too few documents for the planted pairs"
    texts: list[str] = []
    kind, partner, rate, group = [], [], [], []
    sources: list[list[str]] = []
    for i in range(n_originals):
        toks = writer.tokens(int(rng.integers(100, 401)))
        texts.append(" ".join(toks))
        is_source = i < n_pairs
        kind.append(KIND_SOURCE if is_source else KIND_ORIGINAL)
        partner.append(-1)
        rate.append(-1.0)
        group.append(-1)
        if is_source:
            sources.append(toks)
    for p, toks in enumerate(sources):  # the copies
        r = RATES[p // pairs_per_rate]
        texts.append(" ".join(writer.edit(toks, r)))
        kind.append(KIND_COPY)
        partner.append(p)
        rate[p] = r
        partner[p] = len(texts) - 1
        rate.append(r)
        group.append(-1)
    for g in range(sibling_groups):  # template siblings: a shared block, as a header or a footer
        length = int(rng.integers(150, 351))
        share = rng.uniform(0.35, 0.65)
        block = writer.tokens(round(share * length))
        header = rng.random() < 0.5
        for _ in range(3):
            own = writer.tokens(length - len(block))
            texts.append(" ".join(block + own if header else own + block))
            kind.append(KIND_SIBLING)
            partner.append(-1)
            rate.append(-1.0)
            group.append(g)

    order = rng.permutation(len(texts))  # shuffled: a copy may come before its source
    where = np.empty_like(order)
    where[order] = np.arange(len(order))
    kind_a = np.array(kind, dtype=np.int8)[order]
    partner_a = np.array(partner, dtype=np.int64)[order]
    partner_a = np.where(partner_a >= 0, where[np.maximum(partner_a, 0)], -1)
    rate_a = np.array(rate, dtype=np.float64)[order]
    group_a = np.array(group, dtype=np.int64)[order]
    texts = [texts[i] for i in order]
    jaccard = np.full(len(texts), np.nan)
    for i in np.flatnonzero(kind_a == KIND_COPY):
        jaccard[i] = jaccard[partner_a[i]] = _jaccard(texts[i], texts[partner_a[i]])
    sib_j = []
    for g in range(sibling_groups):
        a, b, c = (texts[i] for i in np.flatnonzero(group_a == g))
        sib_j += [_jaccard(a, b), _jaccard(a, c), _jaccard(b, c)]

    (folder / "corpus").mkdir(parents=True, exist_ok=True)
    with open(folder / "corpus" / "corpus.jsonl", "w") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"id": str(i), "text": text}) + "\n")
    np.savez(
        folder / "truth.npz",
        kind=kind_a,
        partner=partner_a,
        rate=rate_a,
        group=group_a,
        jaccard=jaccard,
        sibling_jaccard=np.array(sib_j),
    )


def load_texts(folder: Path) -> list[str]:
    with open(folder / "corpus" / "corpus.jsonl") as f:
        return [json.loads(line)["text"] for line in f]


# -- the workers (one process each) --------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class Meter:
    """Wall time and resident memory of the work between start() and stop()."""

    def start(self) -> None:
        import gc

        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        self.rss_before = _status_kib("VmRSS")
        self.t0 = time.perf_counter()

    def stop(self) -> dict:
        seconds = time.perf_counter() - self.t0
        hwm = _status_kib("VmHWM")
        return {
            "seconds": seconds,
            "rss_before_mib": self.rss_before / 1024,
            "peak_rss_mib": hwm / 1024,
            "peak_growth_mib": (hwm - self.rss_before) / 1024,
            "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }


def work_kubetune(folder: Path, repeats: int, spec_args: dict) -> tuple[dict, np.ndarray, np.ndarray]:
    from kubetune.api.v1alpha1.datasetbuild import NearDedupSpec
    from kubetune.datagen.minhash import find_near_duplicates

    spec = NearDedupSpec(**spec_args)
    t0 = time.perf_counter()
    texts = load_texts(folder)
    load_s = time.perf_counter() - t0
    find_near_duplicates(texts[:2000], spec)  # warm-up: imports, first allocations
    meter = Meter()
    meter.start()
    matches = find_near_duplicates(texts, spec)
    measured = meter.stop()
    times = [measured["seconds"]]
    for _ in range(repeats - 1):
        t0 = time.perf_counter()
        again = find_near_duplicates(texts, spec)
        times.append(time.perf_counter() - t0)
        assert again == matches, "not deterministic"
    measured |= {"seconds": statistics.median(times), "all_seconds": times, "load_seconds": load_s}
    measured["spec"] = spec.model_dump()
    match = np.array([-1 if m is None else m for m in matches], dtype=np.int64)
    return measured, match >= 0, match


def work_datasketch(folder: Path) -> tuple[dict, np.ndarray, np.ndarray]:
    from datasketch import MinHash, MinHashLSH

    t0 = time.perf_counter()
    texts = load_texts(folder)
    load_s = time.perf_counter() - t0

    def shingles(text: str) -> list[bytes]:
        return [" ".join(s).encode() for s in _shingles(text)]

    meter = Meter()
    meter.start()
    lsh = MinHashLSH(num_perm=112, params=(14, 8))
    match = np.full(len(texts), -1, dtype=np.int64)
    for i, m in enumerate(MinHash.generator((shingles(t) for t in texts), num_perm=112, seed=1)):
        found = lsh.query(m)
        if found:
            match[i] = min(found)
        else:
            lsh.insert(i, m, check_duplication=False)
    measured = meter.stop() | {"load_seconds": load_s}
    return measured, match >= 0, match


def work_datatrove(folder: Path) -> tuple[dict, np.ndarray, np.ndarray]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.readers import JsonlReader

    base = folder / "datatrove"
    shutil.rmtree(base, ignore_errors=True)
    corpus = str(folder / "corpus")
    config = MinhashConfig()
    stages = {
        "1 signatures": ([JsonlReader(corpus), MinhashDedupSignature(f"{base}/signatures", config=config)], 1),
        "2 buckets": ([MinhashDedupBuckets(f"{base}/signatures", f"{base}/buckets", config=config)], 14),
        "3 cluster": ([MinhashDedupCluster(f"{base}/buckets", f"{base}/remove_ids", config=config)], 1),
        "4 filter": ([JsonlReader(corpus), MinhashDedupFilter(f"{base}/remove_ids")], 1),
    }
    meter = Meter()
    meter.start()
    stage_seconds = {}
    for name, (pipeline, tasks) in stages.items():
        t0 = time.perf_counter()
        logs = f"{base}/logs/{name.replace(' ', '_')}"
        LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=1, logging_dir=logs).run()
        stage_seconds[name] = time.perf_counter() - t0
    measured = meter.stop() | {"stage_seconds": stage_seconds, "config": str(config)}
    with open(folder / "corpus" / "corpus.jsonl") as f:
        n = sum(1 for _ in f)
    dropped = np.zeros(n, dtype=bool)
    removed = base / "remove_ids" / "000000.remove"
    if removed.exists():
        dropped[np.fromfile(removed, dtype="<u4")] = True
    return measured, dropped, np.full(n, -1, dtype=np.int64)  # datatrove does not say which document matched


def worker(method: str, folder: Path, repeats: int, out: Path, cpu: int, spec_args: dict) -> None:
    os.sched_setaffinity(0, {cpu})
    if method.startswith("kubetune"):
        measured, dropped, match = work_kubetune(folder, repeats, spec_args)
    elif method == "datasketch":
        measured, dropped, match = work_datasketch(folder)
    elif method == "datatrove":
        measured, dropped, match = work_datatrove(folder)
    else:
        raise ValueError(method)
    measured["cpu"] = cpu
    np.savez(out.with_suffix(".npz"), dropped=dropped, match=match)
    out.write_text(json.dumps(measured, indent=1))


# -- scoring and the report ----------------------------------------------------------------------------------


def score(truth: dict, dropped: np.ndarray, match: np.ndarray) -> dict:
    kind, partner, rate, jaccard = truth["kind"], truth["partner"], truth["rate"], truth["jaccard"]
    copies = np.flatnonzero(kind == KIND_COPY)
    sources = partner[copies]
    one = dropped[copies] ^ dropped[sources]
    which = np.where(dropped[copies], copies, sources)  # the dropped one of the pair
    other = np.where(dropped[copies], sources, copies)
    attributed = match[which]
    found = one & ((attributed < 0) | (attributed == other))
    n_dropped = int(dropped.sum())
    by_rate = {f"{r:.2f}": float(found[rate[copies] == r].mean()) for r in RATES}
    bins = [0.0, 0.3, 0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 1.0001]
    pair_j = jaccard[copies]
    by_j = {}
    for lo, hi in itertools.pairwise(bins):
        sel = (pair_j >= lo) & (pair_j < hi)
        if sel.any():
            by_j[f"[{lo:.2f},{min(hi, 1.0):.2f}{')' if hi < 1 else ']'}"] = [float(found[sel].mean()), int(sel.sum())]
    return {
        "dropped": n_dropped,
        "pairs": len(copies),
        "found": int(found.sum()),
        "recall": float(found.mean()),
        "precision": float(found.sum() / n_dropped) if n_dropped else 1.0,
        "recall_by_edit_rate": by_rate,
        "recall_by_jaccard": by_j,
        "false_drops": {
            "template_siblings": int(dropped[kind == KIND_SIBLING].sum()),
            "unrelated_originals": int(dropped[kind == KIND_ORIGINAL].sum()),
            "both_of_a_pair": int((dropped[copies] & dropped[sources]).sum()),
            "matched_outside_its_pair": int((one & ~found).sum()),
        },
    }


def _label(name: str, r: dict) -> str:
    if "spec" not in r:
        return name
    sp = r["spec"]
    return f"{name} ({sp['bands']}x{sp['rows']}, threshold {sp['threshold']})"


def report(results: dict, meta: dict) -> str:
    n = meta["docs"]
    results = {_label(name, r): r for name, r in results.items()}
    rows = [
        "| method | wall s | docs/s (1 core) | vs datatrove | peak RSS MiB | growth MiB | precision | recall "
        + "| "
        + " | ".join(f"recall {round(r * 100)} %" for r in RATES)
        + " |",
        "|" + "---|" * (8 + len(RATES)),
    ]
    base = results.get("datatrove", {}).get("seconds")
    for name, r in results.items():
        speed = n / r["seconds"]
        ratio = f"{base / r['seconds']:.0f}x" if base else "-"
        s = r["score"]
        rows.append(
            f"| {name} | {r['seconds']:.1f} | {speed:,.0f} | {ratio} | {r['peak_rss_mib']:.0f} | "
            f"{r['peak_growth_mib']:.0f} | {s['precision']:.4f} | {s['recall']:.4f} | "
            + " | ".join(f"{s['recall_by_edit_rate'][f'{x:.2f}']:.3f}" for x in RATES)
            + " |"
        )
    lines = [
        f"{n:,} documents ({meta['pairs']:,} planted pairs, {meta['pairs_per_rate']:,} per edit rate; "
        f"{meta['siblings']:,} template siblings), seed {meta['seed']}, each method in its own process on 1 CPU.",
        "",
        *rows,
        "",
        "Mean 5-shingle Jaccard of the planted pairs per edit rate: "
        + ", ".join(f"{round(float(r) * 100)} %: {j:.2f}" for r, j in meta["pair_jaccard_by_rate"].items())
        + f"; template siblings: mean {meta['sibling_jaccard_mean']:.2f}, max {meta['sibling_jaccard_max']:.2f}.",
        "",
        "| method | false drops: template siblings | unrelated | both of a pair | matched outside its pair |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        f = r["score"]["false_drops"]
        lines.append(
            f"| {name} | {f['template_siblings']} | {f['unrelated_originals']} | {f['both_of_a_pair']} | "
            f"{f['matched_outside_its_pair']} |"
        )
    bins = list(next(iter(results.values()))["score"]["recall_by_jaccard"])
    lines += [
        "",
        "Recall by the pair's true 5-shingle Jaccard (pairs in the bin in the header):",
        "",
        "| method | "
        + " | ".join(f"J {b} ({next(iter(results.values()))['score']['recall_by_jaccard'][b][1]})" for b in bins)
        + " |",
        "|" + "---|" * (1 + len(bins)),
    ]
    for name, r in results.items():
        by_j = r["score"]["recall_by_jaccard"]
        lines.append(f"| {name} | " + " | ".join(f"{by_j[b][0]:.3f}" if b in by_j else "-" for b in bins) + " |")
    if "datatrove" in results:
        st = results["datatrove"]["stage_seconds"]
        lines += ["", "datatrove stages (s): " + ", ".join(f"{k}: {v:.1f}" for k, v in st.items())]
    for name, r in results.items():
        if "load_seconds" in r:
            lines.append(f"{name}: reading the JSONL into a list took {r['load_seconds']:.1f} s (not in wall s).")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pairs-per-rate", type=int, default=1250)
    ap.add_argument("--sibling-groups", type=int, default=1000)
    ap.add_argument("--methods", default="kubetune,datatrove,datasketch")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="an extra kubetune row with other NearDedupSpec fields, e.g. 't0.6={\"threshold\": 0.6}'",
    )
    ap.add_argument("--repeats", type=int, default=3, help="kubetune runs (median wall time)")
    ap.add_argument("--reuse", action="store_true", help="keep the results of methods already run on this corpus")
    ap.add_argument("--cpu", type=int, default=max(os.sched_getaffinity(0)), help="the CPU each method runs on")
    ap.add_argument("--work", type=Path, default=ROOT / ".cache" / "bench-dedup")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--spec", default="{}", help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()

    folder = args.work / f"docs{args.docs}-seed{args.seed}-p{args.pairs_per_rate}-s{args.sibling_groups}"
    if args.worker:
        worker(args.worker, folder, args.repeats, args.result, args.cpu, json.loads(args.spec))
        return

    if not (folder / "truth.npz").exists():
        t0 = time.perf_counter()
        build_corpus(args.docs, args.seed, folder, args.pairs_per_rate, args.sibling_groups)
        print(f"corpus built in {time.perf_counter() - t0:.0f} s: {folder}", flush=True)
    truth = dict(np.load(folder / "truth.npz"))

    runs = [(m, "{}") for m in args.methods.split(",") if m]
    for v in args.variant:
        name, spec = v.split("=", 1)
        runs.append((f"kubetune {name}", spec))
    results = {}
    env = os.environ | {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "services"), env.get("PYTHONPATH", "")])
    for name, spec in runs:
        method = "kubetune" if name.startswith("kubetune") else name
        result = folder / f"result-{name.replace(' ', '_')}.json"
        log = folder / f"log-{name.replace(' ', '_')}.txt"
        cmd = [sys.executable, __file__, "--worker", method, "--docs", str(args.docs), "--seed", str(args.seed)]
        cmd += ["--pairs-per-rate", str(args.pairs_per_rate), "--sibling-groups", str(args.sibling_groups)]
        cmd += ["--work", str(args.work), "--repeats", str(args.repeats), "--cpu", str(args.cpu)]
        cmd += ["--result", str(result), "--spec", spec]
        if not (args.reuse and result.exists()):
            print(f"running {name} ...", flush=True)
            with open(log, "w") as f:
                subprocess.run(cmd, check=True, env=env, stdout=f, stderr=subprocess.STDOUT)
        measured = json.loads(result.read_text())
        arrays = np.load(result.with_suffix(".npz"))
        measured["score"] = score(truth, arrays["dropped"], arrays["match"])
        results[name] = measured
        print(f"  {measured['seconds']:.1f} s, {args.docs / measured['seconds']:,.0f} docs/s", flush=True)

    copies = truth["kind"] == KIND_COPY
    meta = {
        "docs": args.docs,
        "seed": args.seed,
        "pairs": int(copies.sum()),
        "pairs_per_rate": args.pairs_per_rate,
        "siblings": int((truth["kind"] == KIND_SIBLING).sum()),
        "pair_jaccard_by_rate": {
            str(r): float(np.mean(truth["jaccard"][copies & (truth["rate"] == r)])) for r in RATES
        },
        "sibling_jaccard_mean": float(truth["sibling_jaccard"].mean()),
        "sibling_jaccard_max": float(truth["sibling_jaccard"].max()),
        "cpu": args.cpu,
        "machine": f"{os.cpu_count()} CPUs, {os.uname().machine}",
        "python": sys.version.split()[0],
    }
    table = report(results, meta)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    (args.out / "results.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
