"""Typo-like corruptions of Chinese sentences, for training and measuring the demo typo spotter.

Used by train_demo.py. Every choice comes from the numpy Generator passed in, so a seed fixes the
corruptions. What a replacement can be (weights in ``Corruptor.KINDS``):

* a real confusion of everyday writing (``CONFUSIONS``: 在/再, 的/得/地, 们/门, ...);
* a **word-level homophone**: the sentence is cut into words with a word-frequency list (jieba's
  ``dict.txt``; the maximum-probability cut jieba itself makes, without its HMM), and a word is
  swapped for another word of the list with the same toneless pinyin (必须/必需, 权利/权力), as a
  pinyin input method does when the wrong candidate is picked;
* a **non-word**: a character of a word (of two or more characters, cut as above) replaced by one
  with the same pinyin so that the word is no word of the list any more (天气 -> 天汽, 已经 ->
  以经): the slip of typing or picking a single character;
* a character with the same pinyin and tone, or the same syllable in another tone, anywhere:
  pycorrector's ``same_pinyin.txt`` together with the readings of ``pypinyin``;
* near pinyin (z/zh, c/ch, s/sh, n/l, h/f, r/l, an/ang, en/eng, in/ing);
* a character of similar shape (pycorrector's ``same_stroke.txt``);
* a random common character.

Replacement characters come from the N most frequent characters of the training text, weighted by
the square root of their frequency. A confusion swap c -> c' is kept with probability
min(1, freq(c') / freq(c)), so that a rare character of a group (得, 地) is not wrong far more
often than it is right just because its common partner (的) is everywhere: the model has to read
the context, not learn that a character is suspicious in itself.
"""
from __future__ import annotations

import math
import re

import numpy as np

CJK = re.compile(r"[\u4e00-\u9fff]")

# Real confusions of everyday writing (each group: characters people swap).
CONFUSIONS = [
    "在再", "的得地", "已以", "们门", "快块", "做作", "那哪", "象像", "带戴", "坐座", "到道",
    "进近", "即既", "须需", "帐账", "历厉", "练炼", "部步", "园圆", "题提", "直值", "反返",
]

FUZZY_INITIALS = [("zh", "z"), ("ch", "c"), ("sh", "s"), ("n", "l"), ("h", "f"), ("r", "l")]
FUZZY_FINALS = [("ang", "an"), ("eng", "en"), ("ing", "in"), ("iang", "ian"), ("uang", "uan")]


def fuzz(syl: str) -> str:
    for a, b in FUZZY_INITIALS:
        if syl.startswith(a):
            syl = b + syl[len(a):]
            break
    for a, b in FUZZY_FINALS:
        if syl.endswith(a):
            syl = syl[: -len(a)] + b
            break
    return syl


class Lexicon:
    """A word-frequency list (lines ``word freq [tag]``) and jieba's maximum-probability cut."""

    def __init__(self, text: str, max_len: int = 6):
        self.freq: dict[str, int] = {}
        for line in text.splitlines():
            parts = line.split(" ")
            if len(parts) >= 2 and parts[1].isdigit() and all(CJK.match(c) for c in parts[0]):
                self.freq[parts[0]] = self.freq.get(parts[0], 0) + int(parts[1])
        self.max_len = max_len
        self.log_total = math.log(sum(self.freq.values()))

    def cut(self, s: str) -> list[tuple[int, int]]:
        """Word spans [a, b) of s; characters outside the list are words of one character."""
        n = len(s)
        best = [0.0] * (n + 1)
        nxt = [n] * (n + 1)
        for i in range(n - 1, -1, -1):
            best[i], nxt[i] = math.log(max(1, self.freq.get(s[i], 1))) - self.log_total + best[i + 1], i + 1
            for j in range(i + 2, min(n, i + self.max_len) + 1):
                f = self.freq.get(s[i:j])
                if f:
                    v = math.log(f) - self.log_total + best[j]
                    if v > best[i]:
                        best[i], nxt[i] = v, j
        spans, i = [], 0
        while i < n:
            spans.append((i, nxt[i]))
            i = nxt[i]
        return spans


def readings(chars) -> dict[str, str]:
    """Most common pinyin with tone number (5: neutral) of each character, from pypinyin."""
    from pypinyin import Style, pinyin

    out = {}
    for c in chars:
        py = pinyin(c, style=Style.TONE3, heteronym=False)[0][0]
        if py and py[0].isalpha():
            out[c] = py if py[-1].isdigit() else py + "5"
    return out


class Corruptor:
    """Replaces characters of a tokenized sentence by typo-like ones (labels 1 where replaced)."""

    # kind, share of the first attempt (a kind that has no candidate falls through to the next)
    KINDS = [("confusion", 0.2), ("word", 0.05), ("non_word", 0.35), ("same_tone", 0.15),
             ("other_tone", 0.08), ("near_pinyin", 0.05), ("shape", 0.07), ("random", 0.05)]

    def __init__(self, chars: list[str], freqs: np.ndarray, char_to_id: dict[str, int], lexicon: Lexicon,
                 same_pinyin: str, same_stroke: str, rate: float = 0.12, min_word_freq: int = 20):
        self.rate = rate  # share of a corrupted sentence's characters that are replaced (at least one)
        self.char_to_id = char_to_id
        self.id_to_char = {i: c for c, i in char_to_id.items()}
        self.chars = chars
        self.rank = {c: i for i, c in enumerate(chars)}
        self.freq = {c: float(f) for c, f in zip(chars, freqs)}
        self.sqrt_w = np.sqrt(np.asarray(freqs, dtype=np.float64))
        self.all_cum = np.cumsum(self.sqrt_w / self.sqrt_w.sum())
        self.lexicon = lexicon
        self.tone = readings(chars)
        self.cands: dict[tuple[str, str], tuple[list[str], np.ndarray] | None] = {}
        # character sets
        sets: dict[str, dict[str, set[str]]] = {k: {} for k, _ in self.KINDS}
        for group in CONFUSIONS:
            for c in group:
                sets["confusion"].setdefault(c, set()).update(group.replace(c, ""))
        for line in same_pinyin.splitlines():
            if line.startswith("#"):
                continue
            cols = line.split("\t")
            if len(cols) >= 2 and len(cols[0]) == 1:
                sets["same_tone"].setdefault(cols[0], set()).update(cols[1])
                if len(cols) >= 3:
                    sets["other_tone"].setdefault(cols[0], set()).update(cols[2])
        for line in same_stroke.splitlines():
            group = [c for c in line.split("\t") if len(c) == 1]
            for c in group:
                sets["shape"].setdefault(c, set()).update(x for x in group if x != c)
        by_tone: dict[str, set[str]] = {}
        by_syl: dict[str, set[str]] = {}
        by_fuzz: dict[str, set[str]] = {}
        for c, t in self.tone.items():
            by_tone.setdefault(t, set()).add(c)
            by_syl.setdefault(t[:-1], set()).add(c)
            by_fuzz.setdefault(fuzz(t[:-1]), set()).add(c)
        for c, t in self.tone.items():
            sets["same_tone"].setdefault(c, set()).update(by_tone[t])
            sets["other_tone"].setdefault(c, set()).update(x for x in by_syl[t[:-1]] if self.tone[x] != t)
            sets["near_pinyin"][c] = {x for x in by_fuzz[fuzz(t[:-1])] if self.tone[x][:-1] != t[:-1]}
        self.sets = sets
        # words by toneless pinyin: the homophones an input method offers
        words: dict[tuple[str, ...], list[tuple[str, int]]] = {}
        for w, f in lexicon.freq.items():
            if 2 <= len(w) <= 4 and f >= min_word_freq and all(c in self.tone for c in w):
                words.setdefault(tuple(self.tone[c][:-1] for c in w), []).append((w, f))
        self.homophones = {k: v for k, v in words.items() if len(v) > 1}

    # -------------------------------------------------------------------------------- choices
    def _candidates(self, kind: str, c: str):
        key = (kind, c)
        if key not in self.cands:
            alts = sorted(x for x in self.sets[kind].get(c, ()) if x != c and x in self.rank)
            if alts:
                w = np.array([self.sqrt_w[self.rank[x]] for x in alts])
                self.cands[key] = (alts, np.cumsum(w / w.sum()))
            else:
                self.cands[key] = None
        return self.cands[key]

    @staticmethod
    def _draw(rng, cum: np.ndarray) -> int:
        return min(int(np.searchsorted(cum, rng.random(), side="right")), len(cum) - 1)

    def _word_swap(self, rng, text: str, spans, i: int) -> dict[int, str] | None:
        for a, b in spans:
            if a <= i < b:
                break
        else:
            return None
        w = text[a:b]
        if b - a < 2 or any(c not in self.tone for c in w):
            return None
        others = [(x, f) for x, f in self.homophones.get(tuple(self.tone[c][:-1] for c in w), ()) if x != w
                  and all(y in self.rank for y in x)]
        if not others:
            return None
        cum = np.cumsum(np.sqrt([f for _, f in others]))
        new = others[self._draw(rng, cum / cum[-1])][0]
        return {a + k: y for k, (x, y) in enumerate(zip(w, new)) if x != y}

    def _non_word(self, rng, text: str, spans, i: int) -> dict[int, str] | None:
        """A character of a word of two or more characters replaced by one with the same pinyin
        (same tone 70%, other tone 30%) so that the word is no word any more: 天气 -> 天汽."""
        for a, b in spans:
            if a <= i < b:
                break
        else:
            return None
        if b - a < 2:
            return None
        kind = "same_tone" if rng.random() < 0.7 else "other_tone"
        for kind in (kind, "other_tone" if kind == "same_tone" else "same_tone"):
            cand = self._candidates(kind, text[i])
            if cand is None:
                continue
            for _ in range(3):
                new = cand[0][self._draw(rng, cand[1])]
                if text[a:i] + new + text[i + 1:b] not in self.lexicon.freq:
                    return {i: new}
        return None

    def propose(self, rng, text: str, spans, i: int) -> dict[int, str]:
        """Replacements {position: character} for a typo at position i of text."""
        c = text[i]
        r, acc, start = rng.random(), 0.0, len(self.KINDS) - 1
        for k, (_, share) in enumerate(self.KINDS):
            acc += share
            if r < acc:
                start = k
                break
        for kind, _ in self.KINDS[start:]:
            if kind == "random":
                break
            if kind == "word":
                out = self._word_swap(rng, text, spans, i)
                if out:
                    return out
                continue
            if kind == "non_word":
                out = self._non_word(rng, text, spans, i)
                if out:
                    return out
                continue
            cand = self._candidates(kind, c)
            if cand is None:
                continue
            new = cand[0][self._draw(rng, cand[1])]
            if kind == "confusion" and rng.random() >= min(1.0, self.freq[new] / self.freq[c]):
                continue
            return {i: new}
        while True:
            new = self.chars[self._draw(rng, self.all_cum)]
            if new != c:
                return {i: new}

    # ------------------------------------------------------------------------------ sentences
    def text_of(self, ids: list[int]) -> str:
        """One character per token: the token's character if it is a CJK character, else a
        placeholder that no word contains."""
        return "".join(self.id_to_char.get(t, "\u3000") for t in ids)

    def spans(self, ids: list[int]):
        return self.lexicon.cut(self.text_of(ids))

    def corrupt(self, rng, ids: list[int], spans=None, clean_share: float = 0.2) -> tuple[list[int], list[int]]:
        """Returns (corrupted ids, labels 0/1) for one tokenized sentence ([CLS] ... [SEP])."""
        ids = list(ids)
        labels = [0] * len(ids)
        text = self.text_of(ids)
        pos = [i for i in range(1, len(ids) - 1) if text[i] in self.rank]
        if not pos or rng.random() < clean_share:
            return ids, labels
        if spans is None:
            spans = self.lexicon.cut(text)
        n = min(len(pos), max(1, int(rng.binomial(len(pos), self.rate))))
        done, tries = 0, 0
        while done < n and tries < 4 * n:
            tries += 1
            i = pos[rng.integers(len(pos))]
            if labels[i]:
                continue
            change = self.propose(rng, text, spans, i)
            if any(labels[j] or j not in range(1, len(ids) - 1) for j in change):
                continue
            for j, new in change.items():
                ids[j], labels[j] = self.char_to_id[new], 1
                done += 1
        return ids, labels


class WordSalad:
    """Sequences of words drawn independently from the word-frequency list (weight freq ** power).
    Corrupted like sentences, they show the model many more words than the training text holds
    (which characters make a word is what a typo inside a word breaks); clean, they teach that
    an unusual neighbour across a word boundary is no typo."""

    def __init__(self, lexicon: Lexicon, allowed, min_freq: int = 3, power: float = 0.75):
        self.words = sorted(w for w, f in lexicon.freq.items() if f >= min_freq and all(c in allowed for c in w))
        w = np.array([lexicon.freq[x] for x in self.words], dtype=np.float64) ** power
        self.cum = np.cumsum(w / w.sum())

    def make(self, rng, n_chars: int) -> tuple[str, list[tuple[int, int]]]:
        """About n_chars characters (never more) of whole words, and their spans."""
        s, spans = "", []
        while True:
            w = self.words[min(int(np.searchsorted(self.cum, rng.random(), side="right")), len(self.words) - 1)]
            if len(s) + len(w) > n_chars:
                if s:
                    return s, spans
                continue
            spans.append((len(s), len(s) + len(w)))
            s += w
