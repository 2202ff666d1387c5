"""The compiled SAT chunk step freezes its own weights without changing inductor's settings
for the rest of the process."""

import warnings

import pytest
import torch

import earmark


@pytest.mark.filterwarnings("ignore:dynamo_pgo force disabled")
def test_compiled_chunk_step_freezes_only_itself_and_keeps_the_eager_scores(monkeypatch):
    with warnings.catch_warnings():  # inductor's first import uses torch.jit's deprecated API
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch._inductor import config as inductor_config
        from torch._inductor import freezing

    frozen_with = []
    freeze = freezing.freeze

    def spy(*args, **kwargs):  # inductor calls it while compiling a graph with freezing on
        frozen_with.append(inductor_config.freezing)
        return freeze(*args, **kwargs)

    monkeypatch.setattr(freezing, "freeze", spy)
    # a graph another test compiled would come from inductor's caches, without freezing again
    monkeypatch.setattr(inductor_config, "force_disable_caches", True)
    torch._dynamo.reset()
    before = inductor_config.freezing
    torch.manual_seed(0)
    m = earmark.create_model("sat-tiny", 5, depth=1, embed_dim=48, num_heads=3,
                             chunk_seconds=1.0).eval()
    wave = torch.randn(1, 16000)
    cache = m.prime_cache(1)

    step = m.traced_chunk_step(wave, cache, compile=True)

    assert frozen_with and all(frozen_with)  # the step was compiled with frozen weights
    assert inductor_config.freezing == before  # and the process's setting is as it was
    with torch.no_grad():
        eager, eager_cache = m.forward_chunk(wave, cache)
    compiled, compiled_cache = step(wave, cache)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=0)
    torch.testing.assert_close(compiled_cache.keys, eager_cache.keys, atol=1e-5, rtol=0)
