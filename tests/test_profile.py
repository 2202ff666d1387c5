from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from earmark.errors import ModelError
from earmark.profile import format_profile, profile_model


class TinyTagger(nn.Module):
    """Stand-in with the earmark model contract: (B, N) waveform -> (B, C) logits."""

    sample_rate = 16000
    clip_seconds = 1.0

    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.conv = nn.Conv1d(1, 8, kernel_size=400, stride=160)
        self.head = nn.Linear(8, num_classes)
        self.register_buffer("scale", torch.ones(1))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = self.conv(wave.unsqueeze(1) * self.scale).relu()  # (B, 8, frames)
        return self.head(x.mean(-1))


class LinearOnly(nn.Module):
    """The waveform goes straight into one Linear: FLOPs are exactly 2 * in * out * batch."""

    sample_rate = 100
    clip_seconds = 0.64

    def __init__(self, out_features: int = 10):
        super().__init__()
        self.linear = nn.Linear(64, out_features)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.linear(wave)


class Attention(nn.Module):
    sample_rate = 100
    clip_seconds = 1.28  # 128 samples = 2 heads x 4 tokens x 16 dims

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = wave.reshape(wave.shape[0], 2, 4, 16)  # (B, heads, L, E)
        return F.scaled_dot_product_attention(x, x, x).flatten(1)


def test_params_equal_sum_of_numel():
    model = TinyTagger()
    model.head.weight.requires_grad_(False)
    result = profile_model(model, repeats=3, warmup=1)
    assert result["params"] == sum(p.numel() for p in model.parameters())
    assert result["trainable_params"] == result["params"] - model.head.weight.numel()
    # Weights and the buffer, float32.
    expected_bytes = 4 * (result["params"] + 1)
    assert result["model_memory_mb"] == pytest.approx(expected_bytes / 2**20)


def test_linear_flops_are_two_in_out_batch():
    result = profile_model(LinearOnly(10), batch=3, repeats=3, warmup=1)
    assert result["flops"] == 2 * 64 * 10 * 3
    assert result["gflops_per_clip"] == pytest.approx(2 * 64 * 10 / 1e9)
    assert result["output_shape"] == [3, 10]


def test_flops_scale_with_batch_and_seconds():
    one = profile_model(TinyTagger(), batch=1, repeats=3, warmup=1)
    four = profile_model(TinyTagger(), batch=4, repeats=3, warmup=1)
    assert one["flops"] > 0
    assert four["flops"] == 4 * one["flops"]
    assert four["gflops_per_clip"] == pytest.approx(one["gflops_per_clip"])
    longer = profile_model(TinyTagger(), seconds=2.0, repeats=3, warmup=1)
    assert longer["num_samples"] == 32000
    assert longer["flops"] > 1.9 * one["flops"]


def test_attention_flops_counted_on_cpu():
    # PyTorch's counter has no formula for the CPU attention kernel; ours must count
    # q k^T and attn @ v: 2 * B*heads * L * S * (E + Ev).
    result = profile_model(Attention(), batch=2, repeats=3, warmup=1)
    assert result["flops"] == 2 * (2 * 2) * 4 * 4 * (16 + 16)


def test_latency_and_real_time_factor():
    result = profile_model(TinyTagger(), seconds=0.5, batch=2, repeats=3, warmup=1)
    latency = result["latency_ms"]
    assert 0 < latency["min"] <= latency["median"] <= latency["p95"]
    assert result["real_time_factor"] == pytest.approx(latency["median"] / 1e3 / (0.5 * 2))
    assert result["seconds"] == 0.5 and result["batch"] == 2
    assert result["sample_rate"] == 16000 and result["device"] == "cpu"


def test_peak_memory_counts_activations():
    # During the conv both the scaled waveform (B, N) and the conv output (B, 8, 98), float32,
    # are alive; allocator workspaces only add to that.
    for batch in (1, 16):
        result = profile_model(TinyTagger(), batch=batch, repeats=3, warmup=1)
        lower_bound = 4 * batch * (16000 + 8 * 98)
        assert lower_bound <= result["peak_memory_mb"] * 2**20 < 4 * lower_bound
        assert result["input_memory_mb"] * 2**20 == 4 * batch * 16000


def test_defaults_to_clip_seconds_and_restores_model_state():
    model = TinyTagger().train()
    threads = torch.get_num_threads()
    result = profile_model(model, repeats=3, warmup=1, threads=1)
    assert result["seconds"] == 1.0 and result["num_samples"] == 16000
    assert result["threads"] == 1
    assert torch.get_num_threads() == threads
    assert model.training


def test_result_is_json_and_formats():
    result = profile_model(TinyTagger(), repeats=3, warmup=1)
    again = json.loads(json.dumps(result, allow_nan=False))
    assert again["params"] == result["params"]
    assert again["torch_version"] == torch.__version__
    text = format_profile(result)
    assert "TinyTagger" in text
    assert "real-time factor" in text and "faster than real time" in text
    assert f"{result['latency_ms']['median']:.2f} ms" in text


def test_refuses_a_module_without_the_contract():
    with pytest.raises(ModelError, match="Linear has no `sample_rate`"):
        profile_model(nn.Linear(4, 2), repeats=3)
    with pytest.raises(ValueError, match="batch >= 1"):
        profile_model(TinyTagger(), batch=0)


def test_profile_prints_no_profiler_chatter(capfd):
    from earmark.cli import main

    assert main(["profile", "vit-tiny", "--seconds", "0.5", "--repeats", "1",
                 "--model-arg", "depth=1"]) == 0
    out, err = capfd.readouterr()  # file descriptors 1 and 2, where the C++ side writes
    assert "peak activations" in out
    assert "profiler_start" not in err and "USDT" not in err, err


def test_profile_reports_the_machines_matmul_ceiling_in_the_same_run():
    import earmark
    from earmark.profile import format_profile, profile_model

    model = earmark.create_model("vit-tiny", 3, depth=1, embed_dim=32, num_heads=2)
    result = profile_model(model, seconds=0.5, repeats=2, threads=1)
    assert result["matmul_gflops"] > 0
    achieved = result["flops"] / (result["latency_ms"]["median"] / 1e3) / 1e9
    assert result["achieved_gflops"] == pytest.approx(achieved)
    assert result["fraction_of_matmul"] == pytest.approx(achieved / result["matmul_gflops"])
    assert "of this machine's fp32 matmul" in format_profile(result)


def test_profile_lists_where_the_time_goes_by_operator(capsys):
    import earmark
    from earmark.cli import main
    from earmark.profile import format_profile, profile_model

    model = earmark.create_model("vit-tiny", 3, depth=1, embed_dim=32, num_heads=2)
    # a model this small spends about as long in its patch convolution, FFT, bmm and GELU as
    # in its linear layers: which come first in the top 4 varies from run to run
    result = profile_model(model, seconds=0.5, repeats=2, threads=1, operators=12)
    ops = result["operators"]
    assert 0 < len(ops) <= 12
    assert [o["self_ms"] for o in ops] == sorted((o["self_ms"] for o in ops), reverse=True)
    assert 0 < sum(o["share"] for o in ops) <= 1 + 1e-9
    assert any("addmm" in o["name"] or "linear" in o["name"] for o in ops)
    text = format_profile(result)
    assert "self CPU time of one forward" in text and ops[0]["name"][:20] in text
    assert "operators" not in profile_model(model, seconds=0.5, repeats=1, threads=1)
    assert main(["profile", "vit-tiny", "--seconds", "0.5", "--repeats", "1",
                 "--operators", "3", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["operators"]) == 3
