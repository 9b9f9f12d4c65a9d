"""The typo-like corruptions the demo discriminator is trained and measured on (models/typos.py)."""
import numpy as np

from conftest import need
from typos import Corruptor, Lexicon, WordSalad

# word frequency list in jieba's format: word, count, part of speech
DICT = "\n".join([
    "我 1000 r", "们 50 k", "我们 800 r", "今天 300 t", "今 20 tg", "天 400 n", "天气 200 n",
    "天汽 1 n", "去 500 v", "学校 150 n", "学 300 v", "校 40 ng", "必须 100 d", "必需 60 v",
    "权利 40 n", "权力 50 n", "气 100 n", "汽 30 ng",
])


def test_cut_is_the_most_probable_path():
    lex = Lexicon(DICT)
    s = "我们今天去学校"
    assert [s[a:b] for a, b in lex.cut(s)] == ["我们", "今天", "去", "学校"]
    # characters outside the list are words of one character; placeholders cut words apart
    s = "天气好\u3000天气"
    assert [s[a:b] for a, b in lex.cut(s)] == ["天气", "好", "\u3000", "天气"]
    # 天天气: two words 天 + 天气 (400 * 200 / total^2) beat three 天 + 天 + 气 (400 * 400 * 100 / total^3)
    s = "天天气"
    assert [s[a:b] for a, b in lex.cut(s)] == ["天", "天气"]


def _corruptor(rate=0.5):
    need("pypinyin")
    chars = list("我们今天去学校的得地气汽必须需权利力再在门块快")
    freqs = np.array([1000, 800, 300, 400, 500, 300, 40, 5000, 300, 300, 100, 30, 100, 100, 60,
                      40, 40, 50, 200, 900, 60, 100, 300], dtype=np.float64)
    char_to_id = {c: 100 + i for i, c in enumerate(chars)}
    return Corruptor(chars, freqs, char_to_id, Lexicon(DICT), "#\n气\t汽器\t起\n", "门\t们\t闷\n", rate=rate)


def test_corruptions_are_seeded_and_labelled():
    cor = _corruptor()
    ids = [1] + [cor.char_to_id[c] for c in "我们今天去学校"] + [2]
    runs = []
    for _ in range(2):
        rng = np.random.default_rng(7)
        runs.append([cor.corrupt(rng, ids, clean_share=0.0) for _ in range(50)])
    assert runs[0] == runs[1]
    for x, y in runs[0]:
        assert x[0] == 1 and x[-1] == 2 and y[0] == 0 and y[-1] == 0
        assert [int(a != b) for a, b in zip(x, ids)] == y  # a label exactly where a character changed
        assert 1 <= sum(y) <= len(ids) - 2


def test_word_homophones_and_confusion_balance():
    cor = _corruptor()
    # 必须 and 必需 share the toneless pinyin bi xu; 权利 / 权力 quan li
    assert {w for w, _ in cor.homophones[("bi", "xu")]} == {"必须", "必需"}
    rng = np.random.default_rng(0)
    text = "\u3000必须\u3000"
    got = {tuple(sorted(cor._word_swap(rng, text, cor.lexicon.cut(text), 1).items())) for _ in range(5)}
    assert got == {((2, "需"),)}
    # confusions only: 的 (5000) -> 得 (300) is kept with probability 300 / 5000, 的 -> 地 60 / 5000
    # (else a random character, 得 or 地 in ~1/8 of the draws); 得 -> 的 always (or 地, 60 / 300)
    cor.KINDS = [("confusion", 1.0), ("random", 0.0)]
    kept = sum(cor.propose(rng, "的", [(0, 1)], 0) in ({0: "得"}, {0: "地"}) for _ in range(4000))
    to_de = sum(cor.propose(rng, "得", [(0, 1)], 0) == {0: "的"} for _ in range(4000))
    assert kept < 0.25 * 4000 and to_de > 0.75 * 4000, (to_de, kept)


def test_word_salad_is_whole_words():
    lex = Lexicon(DICT)
    salad = WordSalad(lex, set("我们今天气去学校"), min_freq=10)
    assert salad.words == sorted(["我", "我们", "今天", "天", "天气", "去", "学校", "学", "校", "气", "们", "今"])
    rng = np.random.default_rng(3)
    for n in (1, 2, 7, 30):
        s, spans = salad.make(rng, n)
        assert 0 < len(s) <= n and spans[0][0] == 0 and spans[-1][1] == len(s)
        assert all(a == b for (_, a), (b, _) in zip(spans, spans[1:]))  # contiguous
        assert all(s[a:b] in salad.words for a, b in spans)
