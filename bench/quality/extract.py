"""Plain prose out of installed packages' long descriptions (``*.dist-info/METADATA``).

``clean_description`` turns a Markdown or reStructuredText README into paragraphs of plain text: code blocks,
HTML, images/badges, tables, directives and link targets go; link texts, inline code and emphasised words stay
as plain words. ``passage`` cuts one passage out of that text between two anchors (see ``passage_specs.json``).

    .venv/bin/python bench/quality/extract.py requests      # print the cleaned text of one package, for authoring
"""

from __future__ import annotations

import email.parser
import re
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

SITE = Path(sysconfig.get_paths()["purelib"])


@dataclass(frozen=True)
class Description:
    package: str  # distribution name as in METADATA ("Name:")
    version: str
    license: str  # License-Expression, else License, else the licence classifier
    content_type: str
    text: str  # cleaned: paragraphs separated by blank lines


def find_dist_info(package: str) -> Path:
    norm = re.sub(r"[-_.]+", "_", package).lower()
    hits = sorted(p for p in SITE.glob("*.dist-info") if p.name.lower().split("-")[0] == norm)
    if len(hits) != 1:
        raise LookupError(f"{package}: expected one dist-info in {SITE}, found {[h.name for h in hits]}")
    return hits[0]


def load_description(package: str) -> Description:
    meta = email.parser.Parser().parsestr((find_dist_info(package) / "METADATA").read_text(encoding="utf-8"))
    body = meta.get_payload() or meta.get("Description", "")
    licence = meta.get("License-Expression") or ""
    if not licence:
        short = (meta.get("License") or "").strip()
        classifiers = [c.split("::")[-1].strip() for c in meta.get_all("Classifier", []) if c.startswith("License")]
        licence = short if short and "\n" not in short and len(short) < 40 else (classifiers[0] if classifiers else "")
    ctype = (meta.get("Description-Content-Type") or "").split(";")[0].strip()
    rst = ctype == "text/x-rst" or (not ctype and not re.search(r"^#{1,6} |^```", body, re.M))
    text = clean_rst(body) if rst else clean_markdown(body)
    return Description(meta["Name"], meta["Version"], licence, ctype or "unknown", text)


# ---------------------------------------------------------------------------------------------------- inline

_MD_INLINE = [
    (re.compile(r"<!--.*?-->", re.S), " "),
    (re.compile(r"!\[[^\]]*\]\([^)]*\)"), " "),  # images, badges
    (re.compile(r"!\[[^\]]*\]\[[^\]]*\]"), " "),
    (re.compile(r"\[!\[[^\]]*\]\([^)]*\)\]\([^)]*\)"), " "),  # linked badge
    (re.compile(r"\[([^\]]+)\]\([^)]*\)"), r"\1"),  # [text](url)
    (re.compile(r"\[([^\]]+)\]\[[^\]]*\]"), r"\1"),  # [text][ref]
    (re.compile(r"<(https?://[^>]+)>"), " "),  # autolinks
    (re.compile(r"</?(a|em|strong|b|i|code|span|sup|sub|kbd|tt)\b[^>]*>", re.I), ""),  # inline HTML tags
    (re.compile(r"</?[A-Za-z][^>]*>"), " "),  # other HTML tags
    (re.compile(r"`+([^`]+?)`+"), r"\1"),  # inline code
    (re.compile(r"(\*\*|__)(.+?)\1"), r"\2"),
    (re.compile(r"(?<![\w*])\*(?!\s)([^*]+?)(?<!\s)\*(?![\w*])"), r"\1"),
    (re.compile(r"(?<![\w])_(?!\s)([^_]+?)(?<!\s)_(?![\w])"), r"\1"),
    (re.compile(r"\[!(TIP|NOTE|WARNING|IMPORTANT|CAUTION)\]\s*", re.I), ""),  # GitHub admonitions
    (re.compile(r"&nbsp;"), " "),
    (re.compile(r"&mdash;"), "—"),
    (re.compile(r"&amp;"), "&"),
    (re.compile(r"&lt;"), "<"),
    (re.compile(r"&gt;"), ">"),
    (re.compile(r"\\([\\`*_{}\[\]()#+\-.!|])"), r"\1"),
]

_RST_INLINE = [
    (re.compile(r"`([^`<]+?)\s*<[^>]+>`__?"), r"\1"),  # `text <url>`_
    (re.compile(r"`<[^>]+>`__?"), " "),
    (re.compile(r":(rfc|pep):`(\d+)`", re.I), lambda m: f"{m.group(1).upper()} {m.group(2)}"),
    (re.compile(r":[a-z:]+:`~?([^`<]+?)(\s*<[^>]+>)?`"), r"\1"),  # :role:`x` / :role:`text <target>`
    (re.compile(r"``(.+?)``"), r"\1"),
    (re.compile(r"`([^`]+)`_{0,2}"), r"\1"),
    (re.compile(r"\|[\w -]+\|_?"), " "),  # substitutions
    (re.compile(r"(\*\*)(.+?)\1"), r"\2"),
    (re.compile(r"(?<![\w*])\*(?!\s)([^*]+?)(?<!\s)\*(?![\w*])"), r"\1"),
    (re.compile(r"\b(\w+)_\b(?!\w)"), r"\1"),  # reference_
]


def _inline(text: str, rules) -> str:
    for pattern, repl in rules:
        text = pattern.sub(repl, text)
    text = re.sub(r"\(\s*<?https?://[^)\s]*>?\s*\)", " ", text)  # "(https://...)"
    text = re.sub(r"https?://\S+", " ", text)
    text = re.sub(r"\(\s*\)|\[\s*\]", " ", text)
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r" ([,.;:!?])(?=[\s\])}]|$)", r"\1", text)
    return text.strip()


def _paragraphs(blocks: list[list[str]], rules) -> str:
    out = []
    for block in blocks:
        if block and all(re.match(r"\s*([-*+]|\d+[.)])\s+", ln) for ln in block[:1]):
            items, cur = [], []
            for ln in block:
                if re.match(r"\s*([-*+]|\d+[.)])\s+", ln) and cur:
                    items.append(" ".join(cur))
                    cur = []
                cur.append(re.sub(r"^\s*([-*+]|\d+[.)])\s+", "", ln).strip())
            items.append(" ".join(cur))
            lines = [_inline(i, rules) for i in items]
            para = "\n".join(ln for ln in lines if ln)
        else:
            para = _inline(" ".join(ln.strip() for ln in block), rules)
        if re.search(r"[A-Za-z]{2}", para):
            out.append(para)
    return "\n\n".join(out)


# ---------------------------------------------------------------------------------------------------- markdown


def clean_markdown(src: str) -> str:
    src = re.sub(r"<!--.*?-->", "\n", src, flags=re.S)
    src = re.sub(r"<(table|pre|picture|details|script|style)\b.*?</\1>", "\n", src, flags=re.S | re.I)
    lines = src.splitlines()
    blocks: list[list[str]] = []
    cur: list[str] = []
    fence = None
    prev_blank = True

    def flush():
        nonlocal cur
        if cur:
            blocks.append(cur)
        cur = []

    for line in lines:
        m = re.match(r"\s*(`{3,}|~{3,})", line)
        if fence:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = None
            continue
        if m:
            flush()
            fence = m.group(1)
            continue
        if not line.strip():
            flush()
            prev_blank = True
            continue
        if prev_blank and re.match(r"( {4}|\t)", line) and not cur:
            continue  # indented code block
        if cur and re.match(r"( {4}|\t)", line) and not cur[-1].strip().endswith(("-", ",")) and not cur:
            continue
        prev_blank = False
        s = line.strip()
        if re.match(r"#{1,6}\s", s):  # heading: its own paragraph, ending in a full stop-free line
            flush()
            blocks.append([re.sub(r"^#+\s*|\s*#+$", "", s)])
            continue
        if re.match(r"^(-{3,}|\*{3,}|_{3,}|={3,})$", s):  # rule or setext underline
            if cur and re.match(r"^[=-]+$", s):
                heading = cur
                cur = []
                blocks.append(heading)
            else:
                flush()
            continue
        if s.startswith("|") or re.match(r"^\[[^\]]+\]:\s*\S+", s) or re.match(r"^(>>>|\$ )", s):
            flush()
            continue
        if s.startswith(">"):
            s = s.lstrip("> ")
        if re.match(r"([-*+]|\d+[.)])\s+", s) and cur and not re.match(r"\s*([-*+]|\d+[.)])\s+", cur[0]):
            flush()
        cur.append(s)
    flush()
    return _paragraphs(blocks, _MD_INLINE)


# ---------------------------------------------------------------------------------------------------- rst


def clean_rst(src: str) -> str:
    lines = src.expandtabs(4).splitlines()
    blocks: list[list[str]] = []
    cur: list[str] = []
    skip_indent: int | None = None  # skipping an indented body (directive, literal block) deeper than this
    literal_next = False

    def flush():
        nonlocal cur
        if cur:
            blocks.append(cur)
        cur = []

    def indent(ln: str) -> int:
        return len(ln) - len(ln.lstrip())

    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if skip_indent is not None:
            if not line.strip() or indent(line) > skip_indent:
                continue
            skip_indent = None
        if not line.strip():
            flush()
            continue
        s = line.strip()
        base = indent(line)
        if literal_next and not cur and base > 0:
            skip_indent = base - 1
            literal_next = False
            continue
        if s.startswith(".. ") or s == "..":  # directive, comment, target, substitution definition
            flush()
            skip_indent = base
            continue
        if re.match(r"^([=\-~^\"'`#*+:.])\1{2,}$", s):  # heading under/overline
            if cur:
                blocks.append(cur)
                cur = []
            continue
        if s.startswith(">>>") or s.startswith("$ "):
            flush()
            skip_indent = base - 1 if base else None
            if base == 0:
                while i < len(lines) and lines[i].strip():
                    i += 1
            continue
        if s.startswith("+--") or s.startswith("+=="):  # grid table
            flush()
            while i < len(lines) and lines[i].strip():
                i += 1
            continue
        literal_next = False
        if s.endswith("::"):
            s = s[:-2].rstrip()
            s = s + ":" if s else s
            literal_next = True
            if s:
                cur.append(s)
            flush()
            continue
        if re.match(r"([-*+]|\d+[.)]|#\.)\s+", s) and cur and not re.match(r"\s*([-*+]|\d+[.)])\s+", cur[0]):
            flush()
        cur.append(re.sub(r"^#\.\s+", "1. ", s))
    flush()
    return _paragraphs(blocks, _RST_INLINE)


# ---------------------------------------------------------------------------------------------------- passages


def passage(text: str, start: str, end: str) -> str:
    """The text from the first occurrence of ``start`` through the first ``end`` after it (both inclusive)."""
    a = text.find(start)
    if a < 0:
        raise LookupError(f"start anchor not found: {start!r}")
    b = text.find(end, a)
    if b < 0:
        raise LookupError(f"end anchor not found after start: {end!r}")
    return text[a : b + len(end)]


if __name__ == "__main__":
    for name in sys.argv[1:]:
        d = load_description(name)
        print(f"===== {d.package} {d.version} [{d.license}] ({d.content_type}) {len(d.text)} chars")
        print(d.text)
