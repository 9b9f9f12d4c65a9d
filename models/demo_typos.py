"""Typo-like corruptions of Chinese sentences, for training and measuring the demo typo spotter.

Every choice comes from the numpy Generator passed in, so a seed fixes the corruptions. Labels are
per character (every CJK character is one token of the project's vocabulary). Kinds of
replacement (``Corruptor.MIXES`` gives their shares):

* ``non_word``: a character of a word (2-4 characters, cut with the word-frequency list of
  ``demo_text.Lexicon``) replaced by another with the same toneless pinyin such that the word is
  no word of the list any more (天气 -> 天汽, 已经 -> 以经, 谢谢 -> 谢射): the slip of a pinyin
  input method, and the commonest everyday typo;
* ``same_tone`` / ``other_tone``: a character with the same pinyin and tone, or the same syllable
  in another tone, anywhere;
* ``near``: near pinyin (z/zh, c/ch, s/sh, n/l, h/f, r/l, an/ang, en/eng, in/ing);
* ``random``: a random common character.

Besides, in a share of the corrupted sentences that hold a character of a real confusion group
(``CONFUSIONS``: 在/再, 的/得/地, 已/以, ...) one of them is swapped for another of its group.
With ``balance`` set, a swap c -> c' is kept with probability min(1, balance * f(c') / f(c)) (f:
character frequency): without it 的 -> 得 swaps outnumber the correct 得 of the text, and the
model learns to distrust 得, 地 and 已 wherever they stand.

Replacement characters come from the most frequent characters of the training text, weighted by
the square root of their frequency.
"""
from __future__ import annotations

import numpy as np

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

    # kind shares of one replacement; ``confusion``: share of corrupted sentences with a
    # confusion character that get one swapped; ``balance``: see the module's text (None: always kept)
    MIXES = {
        # the realistic mix (training and the held-out measurement)
        "everyday": {"kinds": {"non_word": 0.45, "same_tone": 0.2, "other_tone": 0.1, "near": 0.1, "random": 0.15},
                     "confusion": 0.35, "balance": 0.5},
        # the mix of the first demo (2026-11-30), kept to compare models on the old measurement
        "classic": {"kinds": {"same_tone": 0.45, "other_tone": 0.2, "near": 0.2, "random": 0.15},
                    "confusion": 0.5, "balance": None},
    }

    def __init__(self, chars: list[str], freqs: np.ndarray, char_to_id: dict[str, int], lexicon=None,
                 rate: float = 0.12, mix: str = "everyday"):
        self.rate = rate  # share of a corrupted sentence's characters that are replaced (at least one)
        m = self.MIXES[mix]
        self.kinds = list(m["kinds"])
        p = np.array([m["kinds"][k] for k in self.kinds])
        self.kind_cum = np.cumsum(p / p.sum())
        self.confusion_share, self.balance = m["confusion"], m["balance"]
        self.lexicon = lexicon
        self.char_to_id = char_to_id
        self.id_to_char = {i: c for c, i in char_to_id.items()}
        self.chars = chars
        self.rank = {c: i for i, c in enumerate(chars)}
        self.freq = {c: float(f) for c, f in zip(chars, freqs)}
        w = np.sqrt(np.asarray(freqs, dtype=np.float64))
        self.weights = w / w.sum()
        self.tone = readings(chars)
        self.by_tone: dict[str, list[int]] = {}
        self.by_syl: dict[str, list[int]] = {}
        self.by_fuzz: dict[str, list[int]] = {}
        for i, c in enumerate(chars):
            t = self.tone.get(c)
            if t is None:
                continue
            self.by_tone.setdefault(t, []).append(i)
            self.by_syl.setdefault(t[:-1], []).append(i)
            self.by_fuzz.setdefault(fuzz(t[:-1]), []).append(i)
        self.confusion: dict[str, str] = {}
        for group in CONFUSIONS:
            for c in group:
                self.confusion[c] = self.confusion.get(c, "") + group.replace(c, "")

    def _pick(self, rng, idx: list[int]) -> str | None:
        if not idx:
            return None
        w = self.weights[idx]
        return self.chars[idx[rng.choice(len(idx), p=w / w.sum())]]

    def replacement(self, rng, text: str, k: int, kind: str) -> str | None:
        """A replacement for text[k] of the given kind (None: the kind has no candidate here)."""
        c = text[k]
        t = self.tone.get(c)
        if kind == "random" or t is None:
            return self.chars[rng.choice(len(self.chars), p=self.weights)]
        syl = t[:-1]
        if kind == "non_word":
            if self.lexicon is None:
                return None
            a, b = self.lexicon.span_at(text, k)
            if b - a < 2:
                return None
            word = text[a:b]
            idx = [i for i in self.by_syl[syl] if self.chars[i] != c
                   and not self.lexicon.known(word[: k - a] + self.chars[i] + word[k - a + 1:])]
            return self._pick(rng, idx)
        if kind == "same_tone":
            return self._pick(rng, [i for i in self.by_tone[t] if self.chars[i] != c])
        if kind == "other_tone":
            return self._pick(rng, [i for i in self.by_syl[syl] if self.tone[self.chars[i]] != t])
        if kind == "near":
            return self._pick(rng, [i for i in self.by_fuzz[fuzz(syl)] if self.tone[self.chars[i]][:-1] != syl])
        raise ValueError(kind)

    def corrupt(self, rng, ids: list[int], clean_share: float = 0.2) -> tuple[list[int], list[int]]:
        """Returns (corrupted ids, labels 0/1) for one tokenized sentence ([CLS] ... [SEP])."""
        ids = list(ids)
        labels = [0] * len(ids)
        text = "".join(self.id_to_char.get(t, "\0") for t in ids)  # one character per token
        pos = [i for i in range(1, len(ids) - 1) if text[i] in self.rank]
        if not pos or rng.random() < clean_share:
            return ids, labels
        n = min(len(pos), max(1, int(rng.binomial(len(pos), self.rate))))
        chosen: set[int] = set()
        conf = [i for i in pos if text[i] in self.confusion]
        if conf and rng.random() < self.confusion_share:
            i = conf[rng.integers(len(conf))]
            c = text[i]
            new = self.confusion[c][rng.integers(len(self.confusion[c]))]
            keep = 1.0 if self.balance is None else min(
                1.0, self.balance * self.freq.get(new, 0.0) / max(1.0, self.freq.get(c, 1.0)))
            if new in self.char_to_id and rng.random() < keep:
                ids[i], labels[i] = self.char_to_id[new], 1
                chosen.add(i)
        tries = 0
        while len(chosen) < n and tries < 4 * n:
            tries += 1
            i = pos[rng.integers(len(pos))]
            if i in chosen:
                continue
            chosen.add(i)
            kind = self.kinds[min(len(self.kinds) - 1, int(np.searchsorted(self.kind_cum, rng.random(), side="right")))]
            new = self.replacement(rng, text, i, kind)
            if new is None:
                new = self.replacement(rng, text, i, "same_tone") or self.replacement(rng, text, i, "random")
            if new and new != text[i]:
                ids[i], labels[i] = self.char_to_id[new], 1
        return ids, labels
