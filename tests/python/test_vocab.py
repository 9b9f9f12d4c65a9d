"""The project's own vocabulary (models/make_vocab.py)."""
import make_vocab


def test_specials_and_no_duplicates():
    vocab = make_vocab.build_vocab()
    assert len(vocab) == len(set(vocab)), "duplicate entries"
    assert vocab[0] == "[PAD]"
    ids = make_vocab.special_ids(vocab)
    assert set(ids) == {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    assert len(set(ids.values())) == 5
    assert all(tok.strip() == tok and tok for tok in vocab), "empty or whitespace entries"


def test_required_ranges():
    vocab = set(make_vocab.build_vocab())
    for c in range(0x4E00, 0xA000):
        assert chr(c) in vocab, f"CJK U+{c:04X} missing"
    for c in range(0xFF01, 0xFF5F):
        assert chr(c) in vocab, f"full-width U+{c:04X} missing"
    for c in range(0x21, 0x7F):
        assert chr(c) in vocab, f"ASCII {chr(c)!r} missing"
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789":
        assert "##" + ch in vocab
    for ch in "。，、；：？！“”‘’（）《》「」『』【】…—·":
        assert ch in vocab, f"punctuation {ch!r} missing"
    for ch in "￥¥€£℃°":
        assert ch in vocab and "##" + ch in vocab
    assert "hello" in vocab and "##ing" in vocab and "2024" in vocab


def test_deterministic_and_written(tmp_path):
    a = make_vocab.build_vocab()
    assert a == make_vocab.build_vocab()
    p = make_vocab.write_vocab(tmp_path / "vocab.txt")
    assert p.read_text(encoding="utf-8").splitlines() == a


def test_not_the_third_party_vocab():
    from conftest import FIXTURES

    ours = make_vocab.build_vocab()
    theirs_path = FIXTURES / "vocab.txt"
    if theirs_path.is_file():
        theirs = theirs_path.read_text(encoding="utf-8").splitlines()
        assert ours != theirs
        # Same convention for the special ids, different content elsewhere.
        assert ours[100:104] == theirs[100:104] == ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
