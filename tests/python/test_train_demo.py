"""The demo trainer's training-only correction head (models/train_demo.py: correction_head): it
classifies among the replacement candidates, its classes map back to their token ids, it shares
the word embeddings with the model, and it is not part of what is saved."""
import numpy as np
from conftest import need

from train_demo import correction_head


def tiny():
    torch, transformers = need("torch"), need("transformers")
    torch.manual_seed(0)
    cfg = transformers.ElectraConfig(vocab_size=50, embedding_size=8, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=16)
    return torch, transformers, cfg, transformers.ElectraForPreTraining(cfg)


def test_classes_are_the_candidates_in_order():
    torch, transformers, cfg, model = tiny()
    cand = [7, 3, 42, 11]
    head, index = correction_head(model, cfg, cand)
    assert index.shape == (cfg.vocab_size,)
    assert [int(index[c]) for c in cand] == [0, 1, 2, 3]
    assert int((index >= 0).sum()) == len(cand)
    assert head(torch.zeros(5, cfg.hidden_size)).shape == (5, len(cand))


def test_logits_are_the_tied_embeddings_of_the_candidates():
    torch, transformers, cfg, model = tiny()
    cand = [7, 3, 42, 11]
    head, _ = correction_head(model, cfg, cand)
    h = torch.randn(3, cfg.hidden_size)
    x = head.norm(torch.nn.functional.gelu(head.dense(h)))
    emb = model.electra.embeddings.word_embeddings.weight.detach().numpy()
    want = x.detach().numpy() @ emb[cand].T
    np.testing.assert_allclose(head(h).detach().numpy(), want, rtol=1e-5, atol=1e-6)


def test_gradient_reaches_only_the_candidates_embeddings():
    torch, transformers, cfg, model = tiny()
    cand = [7, 3, 42, 11]
    head, index = correction_head(model, cfg, cand)
    loss = torch.nn.functional.cross_entropy(head(torch.randn(4, cfg.hidden_size)), index[torch.tensor([3, 42, 3, 7])])
    loss.backward()
    g = model.electra.embeddings.word_embeddings.weight.grad.abs().sum(dim=1)
    assert set(np.flatnonzero(g.numpy())) == set(cand)


def test_head_is_not_saved_with_the_model(tmp_path):
    torch, transformers, cfg, model = tiny()
    correction_head(model, cfg, [1, 2])
    model.save_pretrained(str(tmp_path))
    loaded = transformers.ElectraForPreTraining.from_pretrained(str(tmp_path))
    assert {k for k, _ in loaded.named_parameters()} == {k for k, _ in model.named_parameters()}
    assert all(p.shape != (2,) for p in loaded.parameters())  # the head's bias (2 classes)
