"""ZeroGPU's GPU call asks for the card the loaded model needs (spaces 0.51.3: `size="large"`, half an RTX Pro
6000, 48 GB, the default; `"xlarge"`, the whole card, 96 GB, at twice the quota), through the installed
package's own signature; `--model auto` there takes Qwen3-Omni when the Space asks for the whole card."""

from __future__ import annotations

import inspect
import typing

import pytest
import torch

from model import constants as C
from omni_demo import gpu


def qwen25_7b():
    from transformers import AutoConfig, Qwen2_5OmniForConditionalGeneration

    return Qwen2_5OmniForConditionalGeneration(AutoConfig.from_pretrained(C.REFERENCE_7B_CONFIG.parent))


def qwen3_30b():
    from model.families.qwen3_omni import tiny as Q3

    return Q3.meta_model(Q3.released_config())


@pytest.mark.parametrize("build, size", [(qwen25_7b, "large"), (qwen3_30b, "xlarge")])
def test_the_call_asks_for_the_card_the_released_model_needs(build, size):
    with torch.device("meta"):
        model = build().to(torch.bfloat16)  # the app's thinker and talker dtype on a GPU
    assert gpu.gpu_size(model) == size


def test_the_call_is_made_with_that_size_through_the_packages_signature(loaded, monkeypatch):
    import spaces

    real, asked = spaces.GPU, []
    sizes = typing.get_args(typing.get_args(inspect.signature(real).parameters["size"].annotation)[0])

    def recording(task=None, **kwargs):
        inspect.signature(real).bind(task, **kwargs)  # what the installed package accepts
        asked.append(kwargs)
        return real(task, **kwargs)  # a no-op off ZeroGPU, as here

    monkeypatch.setattr(spaces, "GPU", recording)
    gpu.serve(loaded)
    assert asked == [{"duration": gpu.turn_seconds, "size": "large"}] and "large" in sizes and "xlarge" in sizes
    assert gpu.run_turn is gpu.answer_turn


def test_auto_on_zero_gpu_takes_qwen3_omni_when_the_space_asks_for_the_whole_card(monkeypatch):
    from model.families.qwen3_omni import loading as Q3
    from model.loading import ZERO_GPU_SIZE_VARIABLE, choose_model

    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.delenv(ZERO_GPU_SIZE_VARIABLE, raising=False)
    assert choose_model("auto", torch.device("cuda")) == C.HUB_7B
    monkeypatch.setenv(ZERO_GPU_SIZE_VARIABLE, "xlarge")
    assert choose_model("auto", torch.device("cuda")) == Q3.HUB_ID
