from __future__ import annotations

import pytest
import torch

import earmark
from earmark.models.directory import load_model_dir, save_model_dir
from earmark.models.tokenlearner import TokenFuser, TokenLearner, TokenLearnerTransformer
from earmark.profile import profile_model

TASR = [f"tasr-{layers}l-{t}-{h}h" for layers in (4, 8, 10, 12) for t in ("nt", "4t", "8t")
        for h in (8, 12)]
TESC = [f"tesc-{layers}l-{t}-{h}h" for layers in (4, 8, 10, 12) for t in ("nt", "8t")
        for h in (8, 12)]


def flops(name: str, **overrides) -> int:
    model = earmark.create_model(name, 8, **overrides)
    return profile_model(model, seconds=1.0, repeats=1, warmup=0)["flops"]


@pytest.mark.parametrize("variant", ["v1", "v1.1"])
def test_token_learner_is_the_sigmoid_weighted_spatial_mean(variant):
    torch.manual_seed(0)
    tl = TokenLearner(dim=16, num_tokens=4, variant=variant)
    x = torch.randn(2, 12, 16)
    out = tl(x, grid=(3, 4))
    assert out.shape == (2, 4, 16)
    maps = tl.last_maps
    assert maps.shape == (2, 4, 12)
    assert ((maps > 0) & (maps < 1)).all()
    # token s of sample b = mean over positions n of maps[b, s, n] * x[b, n]
    by_hand = torch.stack([torch.stack([(maps[b, s, :, None] * x[b]).mean(0)
                                        for s in range(4)]) for b in range(2)])
    torch.testing.assert_close(out, by_hand)


def test_token_learner_v1_maps_use_the_grid_layout():
    # a 3x3 conv sees neighbours, so the same tokens on another grid give other maps
    torch.manual_seed(0)
    tl = TokenLearner(dim=8, num_tokens=2)
    x = torch.randn(1, 12, 8)
    tl(x, grid=(3, 4))
    a = tl.last_maps
    tl(x, grid=(4, 3))
    assert not torch.allclose(a, tl.last_maps)
    with pytest.raises(ValueError, match="grid"):
        tl(x, grid=(5, 5))


@pytest.mark.parametrize("variant", ["v1", "v1.1"])
def test_gradients_reach_every_token_learner_parameter(variant):
    torch.manual_seed(0)
    tl = TokenLearner(dim=8, num_tokens=3, variant=variant)
    x = torch.randn(2, 16, 8, requires_grad=True)
    tl(x, grid=(4, 4)).square().sum().backward()
    for name, p in tl.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_token_fuser_maps_tokens_back_with_a_residual():
    torch.manual_seed(0)
    fuser = TokenFuser(dim=16, num_tokens=4)
    tokens, original = torch.randn(2, 4, 16), torch.randn(2, 12, 16)
    out = fuser(tokens, original)
    assert out.shape == original.shape
    # the learned part depends on the tokens; removing it leaves the original
    other = fuser(torch.randn(2, 4, 16), original)
    assert not torch.allclose(out, other)
    with torch.no_grad():
        fuser.select[-1].weight.zero_()
        fuser.select[-1].bias.fill_(-1e4)  # sigmoid -> 0: no token is selected
    torch.testing.assert_close(fuser(tokens, original), original)


def test_registry_has_every_row_of_tables_2_and_3():
    names = set(earmark.list_models())
    assert "tokenlearner" in names
    assert set(TASR) | set(TESC) <= names
    assert "tesc-4l-4t-8h" not in names  # table 3 has no 4-token rows


@pytest.mark.parametrize("name", TASR + TESC)
def test_every_preset_tags_one_second_of_audio(name):
    torch.manual_seed(0)
    model = earmark.create_model(name, num_classes=5).eval()
    layers, tokens, heads = name.split("-")[1:]
    assert len(model.blocks) == int(layers[:-1])
    assert model.blocks[0].attn.num_heads == int(heads[:-1])
    assert model.tokens == (0 if tokens == "nt" else int(tokens[:-1]))
    with torch.no_grad():
        scores = model.activation(model(torch.randn(2, 16000)))
    assert scores.shape == (2, 5)
    torch.testing.assert_close(scores.sum(-1), torch.ones(2))


def test_generic_model_token_learner_output_and_mbconv_options():
    torch.manual_seed(0)
    for mbconv in (0, 1, 2):
        model = earmark.create_model("tokenlearner", 3, layers=1, tokens=4, mbconv=mbconv,
                                     embed_dim=32, heads=2).eval()
        assert model.grid == (8, 8)  # 64 tokens before TokenLearner, as paper 000
        with torch.no_grad():
            assert model(torch.randn(1, 16000)).shape == (1, 3)
        assert model.token_learner.last_maps.shape == (1, 4, 64)
    with pytest.raises(ValueError, match="mbconv"):
        earmark.create_model("tokenlearner", 3, mbconv=3)


def test_flops_fall_with_fewer_tokens_and_match_table_2():
    nt, t8, t4 = (flops(f"tasr-10l-{t}-8h") for t in ("nt", "8t", "4t"))
    assert nt > t8 > t4
    # table 2: TASR_10L_NT-8H 123,452,241 vs TASR_10L_8T-8H 45,094,473 FLOPs (2.74x)
    assert nt / t8 >= 123_452_241 / 45_094_473


def test_tesc_baseline_has_100_tokens_and_costs_more():
    model = earmark.create_model("tesc-4l-nt-8h", 50)
    assert model.grid == (10, 10) and model.pos_embed.shape[1] == 100
    assert flops("tesc-4l-nt-8h") / flops("tesc-4l-8t-8h") >= 58_609_593 / 7_968_945  # 7.35x


def test_model_directory_round_trip(tmp_path):
    torch.manual_seed(0)
    model = earmark.create_model("tasr-4l-8t-12h", 3, learner="v1.1").eval()
    with torch.no_grad():  # non-default BatchNorm statistics must travel too
        model.input_norm.running_mean.fill_(0.3)
    save_model_dir(model, tmp_path / "m", labels=["a", "b", "c"])
    loaded, config = load_model_dir(tmp_path / "m")
    assert isinstance(loaded, TokenLearnerTransformer)
    assert config["args"]["learner"] == "v1.1" and config["args"]["tokens"] == 8
    x = torch.randn(2, 16000)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_reset_classifier_changes_the_number_of_outputs():
    model = earmark.create_model("tasr-4l-4t-8h", 8).eval()
    model.reset_classifier(2)
    assert model.num_classes == 2
    with torch.no_grad():
        assert model(torch.randn(1, 16000)).shape == (1, 2)
