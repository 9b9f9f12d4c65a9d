"""The demo typo spotter's corruptions (models/demo_typos.py) and word cut (models/demo_text.py),
checked against pypinyin and hand-made word lists; no download, no torch."""
import numpy as np
import pytest
from pypinyin import Style, lazy_pinyin

import make_vocab
from demo_text import Lexicon, sentences_of, split
from demo_typos import Corruptor

VOCAB = make_vocab.build_vocab()
CHAR_TO_ID = {t: i for i, t in enumerate(VOCAB) if len(t) == 1 and "\u4e00" <= t <= "\u9fff"}
CLS, SEP = VOCAB.index("[CLS]"), VOCAB.index("[SEP]")

# a small word list: word -> centibels (0 = every token; known below 600)
CB = {"今天": 350, "天气": 420, "很": 250, "好": 230, "我们": 250, "已经": 300, "吃饭": 430,
      "谢谢": 380, "了": 200, "我": 200, "天": 330, "气": 470, "今": 480}
TEXT = "今天天气很好我们已经吃饭了谢谢的得地在再以"


def enc(s):
    return [CLS] + [CHAR_TO_ID[c] for c in s] + [SEP]


def corruptor(mix="everyday", rate=0.12):
    chars = list(dict.fromkeys(TEXT + "汽器期其起七齐气弃契骑旗妻泣企启天添田甜填舔经精京惊景井静净"
                               "射社设舍涉摄蛇舌赦们门闷吧把爸八拔罢"))
    freqs = np.array([1000.0 if c in "的在了我很好" else 100.0 if c in "得地再以" else 10.0 for c in chars])
    return Corruptor(chars, freqs, CHAR_TO_ID, Lexicon(CB), rate=rate, mix=mix)


def test_cut_takes_the_likeliest_words():
    lex = Lexicon(CB)
    s = "今天天气很好"
    assert [s[a:b] for a, b in sorted({lex.span_at(s, k) for k in range(len(s))})] == ["今天", "天气", "很", "好"]
    assert lex.known("天气") and not lex.known("天汽") and not lex.known("今天天")
    # a rare word (above the known bound) is not cut as one
    assert Lexicon({**CB, "气很": 650}).span_at(s, 3) == (2, 4)


def test_characters_are_those_of_known_words():
    lex = Lexicon({**CB, "說話": 650, "饕": 900})
    chars = lex.characters()
    assert chars == set("".join(CB))
    assert "說" not in chars and "饕" not in chars


def test_labels_mark_exactly_the_replaced_characters_and_a_seed_repeats():
    cor = corruptor()
    ids = enc("今天天气很好，我们已经吃饭了，谢谢。".replace("，", "").replace("。", ""))
    runs = []
    for seed in (1, 1, 2):
        rng = np.random.default_rng(seed)
        runs.append([cor.corrupt(rng, ids) for _ in range(300)])
    assert runs[0] == runs[1] and runs[0] != runs[2]
    clean = 0
    for x, y in runs[0]:
        assert len(x) == len(ids) and x[0] == CLS and x[-1] == SEP
        assert [int(a != b) for a, b in zip(x, ids)] == y
        clean += not any(y)
    # 20% of the sentences stay clean (binomial, 300 draws: well inside 4 sigma)
    assert 0.2 * 300 - 4 * 7 <= clean <= 0.2 * 300 + 4 * 7


def test_non_word_typos_keep_the_sound_and_break_the_word():
    cor = corruptor()
    s = "今天天气很好"
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        new = cor.replacement(rng, "\0" + s + "\0", 4, "non_word")  # 气 of 天气
        assert new is not None and new != "气"
        assert lazy_pinyin(new, style=Style.NORMAL) == lazy_pinyin("气", style=Style.NORMAL), new
        assert not Lexicon(CB).known("天" + new)
        seen.add(new)
    assert len(seen) >= 3  # drawn among the homophones, not one fixed answer
    # a one-character word has no non-word typo
    assert cor.replacement(rng, "\0" + s + "\0", 5, "non_word") is None


def test_confusion_swaps_into_a_rarer_character_are_balanced():
    """With the everyday mix a 的 -> 得 swap (得 ten times rarer here) is kept 0.5 * 0.1 of the
    time, so wrong 得 stay rare; the classic mix keeps every swap."""
    def wrong_de(mix):
        cor = corruptor(mix, rate=0.01)
        rng = np.random.default_rng(3)
        ids = enc("我的天")
        return sum(x[2] == CHAR_TO_ID["得"] for x, _ in (cor.corrupt(rng, ids) for _ in range(4000)))

    classic, everyday = wrong_de("classic"), wrong_de("everyday")
    assert classic > 400  # 0.8 * 0.5 * 1/2 of 4000, give or take
    assert everyday < classic / 5, (everyday, classic)


def test_sentences_and_split():
    s = sentences_of("今天天气很好。我们去公园玩吧！好\n" + "很长的一句话，" * 12)
    assert s[:2] == ["今天天气很好。", "我们去公园玩吧！"]
    assert all(len(x) <= 64 for x in s) and "好" not in s  # too short to keep
    train, dev, held = split([f"句子{i}号" for i in range(3000)])
    assert len(train) + len(dev) + len(held) == 3000
    assert 0.02 * 3000 < len(held) < 0.04 * 3000 and 0.01 * 3000 < len(dev) < 0.03 * 3000
    assert split(held) == ([], [], held)  # by a hash of the sentence: stable
