#!/usr/bin/env python3
"""Generate electra-edge's own WordPiece vocabulary (no third-party vocab is copied).

Layout (ids are positions in the list, one token per line in vocab.txt):

* 0 ``[PAD]``, 1..99 ``[unused1]``..``[unused99]``, 100 ``[UNK]``, 101 ``[CLS]``,
  102 ``[SEP]``, 103 ``[MASK]``: the special ids follow the usual BERT convention so that code
  written for Chinese BERT vocabularies keeps working, but the runtime must read them from
  ``tokenizer.json`` (they are recorded there as added tokens).
* every printable ASCII character (U+0021..U+007E) as a word-initial piece;
* ``##`` continuations for ASCII letters and digits;
* a small hand-written list of lowercase English words, word pieces and digit groups;
* the full-width forms U+FF01..U+FF5E, with ``##`` continuations for the full-width letters and
  digits (the Bert normalizer does not fold full-width to ASCII);
* common CJK and general punctuation (U+3000..U+303F, curly quotes, dashes, ellipsis, middle dot,
  CJK compatibility forms), and common symbols (currency incl. the full-width U+FFE0..U+FFE6,
  degrees, arithmetic, arrows) with ``##`` forms;
* Hiragana and Katakana;
* the whole CJK Unified Ideographs block U+4E00..U+9FFF, one piece per ideograph (the
  BertNormalizer puts spaces around every ideograph, so no ``##`` forms are needed).

Only the standard library is used.  ``python models/make_vocab.py OUT.txt`` writes the file.
"""
from __future__ import annotations

import argparse
import sys
import unicodedata
from pathlib import Path

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
N_UNUSED = 99  # [unused1]..[unused99] keep [UNK]/[CLS]/[SEP]/[MASK] at 100..103

# Hand-written, deliberately short: frequent English words, web/tech words and suffixes that
# show up in Chinese text.  Anything else still tokenizes through single-character pieces.
WORDS = """
the of and to in is for on with as at by it be this that from or an are was not you we
can all new more one my your our about will has have do if but up out so no yes ok
hello world hi thanks please good bad love like time day today year news home
ai app api web http https www com cn org net html json css js url id ip cpu gpu usb
ios android iphone ipad mac windows linux google apple microsoft wechat qq taobao
email online video music game shop store data model test user login password wifi
pm am vs etc mr ms dr co ltd inc
""".split()
SUFFIXES = "s es ed ing er ers ly tion tions ment able al ic ist ive ness ful less est".split()
DIGIT_GROUPS = [f"{i:02d}" for i in range(100)] + [str(y) for y in range(1990, 2031)] + [
    "000",
    "100",
    "200",
    "500",
    "1000",
]

CJK_PUNCT_EXTRA = "“”‘’…—–·•‧﹏︰︱︳︴︵︶︷︸︹︺︻︼︽︾︿﹀﹁﹂﹃﹄"
# Symbols are not punctuation for the BertPreTokenizer, so they stick to neighbouring letters
# and digits ("￥128", "30℃"): they get "##" forms too.
SYMBOLS = "¥€£¢°±×÷§©®™←↑→↓√∞≈≠≤≥℃‰№★☆○●◎◇◆□■△▲※" + "".join(chr(c) for c in range(0xFFE0, 0xFFE7))


def build_vocab() -> list[str]:
    vocab: list[str] = [PAD]
    vocab += [f"[unused{i}]" for i in range(1, N_UNUSED + 1)]
    vocab += [UNK, CLS, SEP, MASK]

    ascii_printable = [chr(c) for c in range(0x21, 0x7F)]
    vocab += ascii_printable
    vocab += ["##" + c for c in ascii_printable if c.isalnum()]

    vocab += WORDS
    vocab += ["##" + s for s in SUFFIXES]
    vocab += DIGIT_GROUPS
    vocab += ["##" + d for d in DIGIT_GROUPS]

    fullwidth = [chr(c) for c in range(0xFF01, 0xFF5F)]
    vocab += fullwidth
    vocab += ["##" + c for c in fullwidth if c.isalnum()]

    vocab += [chr(c) for c in range(0x3000 + 1, 0x3040)]  # CJK symbols & punctuation (no U+3000 space)
    vocab += list(CJK_PUNCT_EXTRA)
    vocab += list(SYMBOLS)
    vocab += ["##" + c for c in SYMBOLS]
    vocab += [chr(c) for c in range(0x3041, 0x3097)]  # Hiragana
    vocab += [chr(c) for c in range(0x30A1, 0x30FB)]  # Katakana
    vocab += [chr(c) for c in range(0x4E00, 0xA000)]  # CJK Unified Ideographs

    # Drop duplicates (a word list entry may equal a single character) keeping first position,
    # and anything the BertNormalizer would never let through (controls, whitespace).
    seen: set[str] = set()
    out: list[str] = []
    for tok in vocab:
        if tok in seen:
            continue
        if not tok.startswith("[") and any(
            unicodedata.category(ch).startswith(("C", "Z")) for ch in tok
        ):
            continue
        seen.add(tok)
        out.append(tok)
    return out


def special_ids(vocab: list[str]) -> dict[str, int]:
    return {tok: vocab.index(tok) for tok in SPECIAL_TOKENS}


def write_vocab(path: Path, vocab: list[str] | None = None) -> Path:
    vocab = build_vocab() if vocab is None else vocab
    path = Path(path)
    path.write_text("".join(tok + "\n" for tok in vocab), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="vocab.txt to write")
    args = ap.parse_args(argv)
    vocab = build_vocab()
    write_vocab(Path(args.out), vocab)
    ids = special_ids(vocab)
    print(f"wrote {args.out}: {len(vocab)} entries, specials {ids}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
