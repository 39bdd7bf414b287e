"""Check a held-out set (heldout/heldout.jsonl, heldout2/heldout2.jsonl): JSON lines, fields, ids in file order,
labels, sources verbatim in their package's METADATA, passage lengths, duplicates, and the rows of each kind.

Usage: python bench/quality/check_heldout.py ROWS.jsonl [SITE_PACKAGES]
SITE_PACKAGES defaults to the repository's .venv/lib/python3.11/site-packages. Standard library only.
"""

import collections
import email.parser
import glob
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SP = os.path.join(HERE, "..", "..", ".venv", "lib", "python3.11", "site-packages")
FIELDS = ["id", "label", "kind", "instruction", "answer", "source", "source_id", "package", "duplicate_of"]
KINDS = {
    "good",
    "contradiction",
    "word_salad",
    "wrong_source",
    "refusal",
    "truncated",
    "context_reference",
    "paraphrase_duplicate",
}


def metadata_by_name(sp):
    out = {}
    for path in glob.glob(os.path.join(sp, "*.dist-info", "METADATA")):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        name = email.parser.Parser().parsestr(text, headersonly=True)["Name"]
        if name:
            out[name.lower()] = text
    return out


def check(rows, meta, sp):
    errors = []
    seen, pos, passages = set(), {}, {}
    prefix = rows[0]["id"].rstrip("0123456789") if rows else ""
    for i, r in enumerate(rows):
        rid = r.get("id")
        if list(r) != FIELDS:
            errors.append(f"{rid}: fields {list(r)}")
            continue
        if rid in seen:
            errors.append(f"{rid}: duplicate id")
        if rid != f"{prefix}{i + 1:03d}":
            errors.append(f"{rid}: expected id {prefix}{i + 1:03d}")
        seen.add(rid)
        pos[rid] = i
        if r["kind"] not in KINDS:
            errors.append(f"{rid}: unknown kind {r['kind']}")
        if (r["label"] == "good") != (r["kind"] == "good") or r["label"] not in ("good", "bad"):
            errors.append(f"{rid}: label {r['label']} does not fit kind {r['kind']}")
        text = meta.get(r["package"].lower())
        if text is None:
            errors.append(f"{rid}: package {r['package']} not installed in {sp}")
        elif r["source"] not in text:
            errors.append(f"{rid}: source is not a verbatim substring of {r['package']} METADATA")
        if not 400 <= len(r["source"]) <= 1500:
            errors.append(f"{rid}: source length {len(r['source'])}")
        if passages.setdefault(r["source_id"], (r["package"], r["source"])) != (r["package"], r["source"]):
            errors.append(f"{rid}: source_id {r['source_id']} used with a different passage")
        if not r["instruction"].strip() or not r["answer"].strip():
            errors.append(f"{rid}: empty instruction or answer")
        if r["kind"] == "truncated" and r["answer"].rstrip()[-1] in ".!?)\"'":
            errors.append(f"{rid}: truncated answer ends with punctuation")
    for r in rows:
        d = r.get("duplicate_of")
        if r.get("kind") == "paraphrase_duplicate":
            if d not in pos:
                errors.append(f"{r['id']}: duplicate_of {d} not found")
            elif rows[pos[d]]["kind"] != "good" or pos[d] >= pos[r["id"]]:
                errors.append(f"{r['id']}: duplicate_of {d} is not an earlier good row")
        elif d is not None:
            errors.append(f"{r.get('id')}: duplicate_of set on a {r.get('kind')} row")
    return errors, passages


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sp = sys.argv[2] if len(sys.argv) > 2 else DEFAULT_SP
    errors, rows = [], []
    with open(sys.argv[1], encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                rows.append(json.loads(line))
            except ValueError as e:
                errors.append(f"line {n}: invalid JSON ({e})")
    found, passages = check(rows, metadata_by_name(sp), sp)
    errors += found
    kinds = collections.Counter(r.get("kind") for r in rows)
    pkgs = collections.Counter(r.get("package") for r in rows)
    print(f"{len(rows)} rows, {len(passages)} passages, {len(pkgs)} packages")
    for k, c in sorted(kinds.items(), key=lambda x: -x[1]):
        print(f"  {k:22s} {c}")
    for e in errors:
        print("ERROR", e)
    print("OK" if not errors else f"{len(errors)} errors")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
