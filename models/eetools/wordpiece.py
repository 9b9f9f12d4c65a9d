"""A pure-Python BertTokenizer (WordPiece) reading tokenizer.json, so that CI needs no `tokenizers`."""
from __future__ import annotations

import json
import unicodedata
from pathlib import Path

from .common import ExportError


def _is_chinese_char(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B920 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    if ch in "\t\n\r":
        return False
    return unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn")


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


class WordPieceTokenizer:
    """BertNormalizer + BertPreTokenizer + WordPiece + [CLS] A [SEP], as in tokenizer.json."""

    def __init__(self, tokenizer_json: Path):
        try:
            spec = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))
            model = spec["model"]
            if model.get("type") != "WordPiece":
                raise ExportError(f"{tokenizer_json}: model type {model.get('type')!r}, expected WordPiece")
            self.vocab: dict[str, int] = model["vocab"]
            self.unk = model.get("unk_token", "[UNK]")
            self.prefix = model.get("continuing_subword_prefix", "##")
            self.max_chars = int(model.get("max_input_chars_per_word", 100))
            norm = spec.get("normalizer") or {}
            self.lowercase = bool(norm.get("lowercase", True))
            strip = norm.get("strip_accents")
            self.strip_accents = self.lowercase if strip is None else bool(strip)
            self.clean_text = bool(norm.get("clean_text", True))
            self.chinese_chars = bool(norm.get("handle_chinese_chars", True))
            trunc = spec.get("truncation") or {}
            self.max_length = int(trunc.get("max_length", 512))
            self.cls_id = self.vocab["[CLS]"]
            self.sep_id = self.vocab["[SEP]"]
            self.unk_id = self.vocab[self.unk]
        except ExportError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ExportError(f"cannot read tokenizer {tokenizer_json}: {e}") from None

    def normalize(self, text: str) -> str:
        out = []
        for ch in text:
            if self.clean_text:
                if ch in ("\0", "\ufffd") or _is_control(ch):
                    continue
                if _is_whitespace(ch):
                    ch = " "
            if self.chinese_chars and _is_chinese_char(ord(ch)):
                out.append(" " + ch + " ")
            else:
                out.append(ch)
        s = "".join(out)
        if self.strip_accents:
            s = "".join(c for c in unicodedata.normalize("NFD", s) if unicodedata.category(c) != "Mn")
        if self.lowercase:
            s = s.lower()
        return s

    @staticmethod
    def pre_tokenize(text: str) -> list[str]:
        words: list[str] = []
        cur: list[str] = []
        for ch in text:
            if ch.isspace():
                if cur:
                    words.append("".join(cur))
                    cur = []
            elif _is_punctuation(ch):
                if cur:
                    words.append("".join(cur))
                    cur = []
                words.append(ch)
            else:
                cur.append(ch)
        if cur:
            words.append("".join(cur))
        return words

    def wordpiece(self, word: str) -> list[int]:
        if len(word) > self.max_chars:
            return [self.unk_id]
        ids = []
        start = 0
        while start < len(word):
            end = len(word)
            found = None
            while start < end:
                piece = word[start:end]
                if start > 0:
                    piece = self.prefix + piece
                if piece in self.vocab:
                    found = self.vocab[piece]
                    break
                end -= 1
            if found is None:
                return [self.unk_id]
            ids.append(found)
            start = end
        return ids

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for w in self.pre_tokenize(self.normalize(text)):
            ids.extend(self.wordpiece(w))
        ids = ids[: self.max_length - 2]
        return [self.cls_id] + ids + [self.sep_id]
