"""The speed paths give the numbers of the paths they replace: the LoRA step (`lora_fast`) against peft's
own forward, sorted and merged prediction (`fast_predict`) against plain per-row inference in input
order, and libsndfile decoding of 16-bit PCM against FFmpeg's. Equality only; no timings.
"""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
from datasets import Dataset

from conftest import POSITIVE, FILLER, write_tiny_bert
from sft_hub import fast_predict, lora_fast
from sft_hub.strategies import parse_strategy
from sft_hub.tasks import audio_data, text

LORA = {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["query", "key", "value", "dense"]}


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("fast") / "bert")


def _lora_model(bert_dir: Path, fast: bool, alpha: int = 8):
    torch.manual_seed(0)
    built = text.build_model(text.ModelConfig(str(bert_dir)), ["neg", "pos"])
    model = parse_strategy({**LORA, "alpha": alpha}).apply(built.model, built.info)
    with torch.no_grad():  # B starts at zero, which would hide every gradient of A
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.1)
    if not fast:
        assert lora_fast.uninstall(model) > 0
    return model.train()


def _batch(bert_dir: Path) -> dict:
    tok = text.load_processor(text.ModelConfig(str(bert_dir)))
    enc = tok(["the movie was good", "a plot so bad it is dreadful really", "nice"], padding=True, return_tensors="pt")
    return {**enc, "labels": torch.tensor([1, 0, 1])}


@pytest.mark.parametrize("alpha", [8, 12])  # scaling alpha / r: 2 (every float the same) and 3 (equal to rounding)
def test_lora_fast_step_equals_peft(bert_dir: Path, alpha: int) -> None:
    ref, fast = _lora_model(bert_dir, fast=False, alpha=alpha), _lora_model(bert_dir, fast=True, alpha=alpha)
    assert sum(getattr(m.forward, "__func__", None) is lora_fast._forward for m in fast.modules()) == 2 * 6 + 1  # 2 layers x 6 + pooler
    batch, results = _batch(bert_dir), {}
    for name, model in (("ref", ref), ("fast", fast)):
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        torch.manual_seed(123)  # the same dropout draws for both
        out = model(**batch)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        opt.step()
        second = model(**batch).logits.detach()  # after one optimizer step, with fresh dropout draws
        results[name] = out.logits.detach(), grads, second, torch.get_rng_state()
    (lg_r, g_r, s_r, rng_r), (lg_f, g_f, s_f, rng_f) = results["ref"], results["fast"]
    if alpha == 8:
        assert torch.equal(lg_r, lg_f)  # the forward pass is bit-identical, dropout mask included
    torch.testing.assert_close(lg_f, lg_r, rtol=0, atol=1e-6)
    assert torch.equal(rng_r, rng_f)  # and it consumes the generator exactly as peft's dropout does
    assert g_r.keys() == g_f.keys() and any("lora_A" in n for n in g_r)
    for n in g_r:
        torch.testing.assert_close(g_f[n], g_r[n], rtol=0, atol=1e-6, msg=n)
    torch.testing.assert_close(s_f, s_r, rtol=0, atol=1e-6)


def test_lora_fast_keeps_eval_save_load_and_merge(bert_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel

    fast = _lora_model(bert_dir, fast=True).eval()
    ref = _lora_model(bert_dir, fast=False).eval()
    batch = _batch(bert_dir)
    batch.pop("labels")
    with torch.no_grad():
        expected = ref(**batch).logits
        assert torch.equal(fast(**batch).logits, expected)  # no dropout in eval mode: the same ops, the same bits
    fast.save_pretrained(tmp_path / "adapter")
    base = text.build_model(text.ModelConfig(str(bert_dir)), ["neg", "pos"]).model
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    merged = copy.deepcopy(fast).merge_and_unload()
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, expected)
        torch.testing.assert_close(merged(**batch).logits, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_lora_fast_conv_step_is_bit_identical(dropout: float) -> None:
    from peft import LoraConfig, get_peft_model

    def conv_net(fast: bool):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3))
        model = get_peft_model(net, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["0", "2"]))
        with torch.no_grad():  # B starts at zero, which would hide every gradient of A
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
        if fast:  # get_peft_model alone leaves peft's forward: the reference
            assert lora_fast.install(model) == 2
        return model.train()

    ref, fast = conv_net(False), conv_net(True)
    assert sum(getattr(m.forward, "__func__", None) is lora_fast._conv_forward for m in fast.modules()) == 2
    assert not any(getattr(m.forward, "__func__", None) is lora_fast._conv_forward for m in ref.modules())
    x = torch.randn(2, 3, 9, 9)
    outs = {}
    for name, model in (("ref", ref), ("fast", fast)):
        torch.manual_seed(7)  # the same dropout draws for both
        y = model(x)
        (y.square().sum()).backward()
        outs[name] = y.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    (y_r, g_r), (y_f, g_f) = outs["ref"], outs["fast"]
    assert torch.equal(y_r, y_f)  # peft's ops; only the scaling and the sum are done in place
    assert g_r.keys() == g_f.keys() and len(g_r) == 4
    for n in g_r:
        assert torch.equal(g_r[n], g_f[n]), n


def _loaded(bert_dir: Path, model: torch.nn.Module) -> SimpleNamespace:
    data = text.DataConfig(builtin="sentiment", max_length=32)
    recipe = SimpleNamespace(task="text_classification", data=data, model=text.ModelConfig(str(bert_dir)))
    return SimpleNamespace(info=SimpleNamespace(recipe=recipe, manifest={"labels": ["neg", "pos"]}), task=text,
                           model=model, processor=text.load_processor(text.ModelConfig(str(bert_dir))), labels=["neg", "pos"])


def test_sorted_merged_prediction_returns_input_order(bert_dir: Path) -> None:
    model = _lora_model(bert_dir, fast=True).eval()
    rng = np.random.default_rng(0)
    sentences = [" ".join(rng.choice(FILLER + POSITIVE, size=int(n))) for n in rng.integers(1, 20, size=23)]
    tok = text.load_processor(text.ModelConfig(str(bert_dir)))
    with torch.no_grad():  # the reference: the unmerged adapter, one unpadded row at a time, in input order
        expected = np.concatenate([model(**tok(s, return_tensors="pt")).logits.numpy() for s in sentences])
    loaded = _loaded(bert_dir, model)
    got = fast_predict.logits(loaded, Dataset.from_dict({"text_a": sentences}), batch_size=4)
    assert not hasattr(loaded.model, "peft_config")  # the lone adapter was merged in memory
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert (got.argmax(-1) == expected.argmax(-1)).all()


def test_adapter_views_are_not_merged(bert_dir: Path) -> None:
    model = _lora_model(bert_dir, fast=True).eval()
    view = _loaded(bert_dir, model)
    view.activate = lambda: None  # what inference.AdapterView provides: several adapters share this model
    assert fast_predict.inference_model(view) is model and hasattr(view.model, "peft_config")


@pytest.mark.parametrize("channels", [1, 2])
def test_pcm16_decoding_equals_ffmpeg(tmp_path: Path, channels: int) -> None:
    rng = np.random.default_rng(channels)
    wave = (0.3 * rng.standard_normal((4000, channels))).clip(-1, 1).astype(np.float32)
    path = tmp_path / "clip.wav"
    sf.write(path, wave, 8000, subtype="PCM_16")
    fast = audio_data._decode_pcm16({"path": str(path), "bytes": None}, 8000)
    assert fast is not None
    audio_data._decoder_class()  # FFmpeg's decoding through datasets.Audio: the path that ran before
    from datasets import Audio

    y = Audio(sampling_rate=8000).decode_example({"path": str(path), "bytes": None})["array"]
    assert fast[1] == 8000 and fast[0].dtype == np.float32 and np.array_equal(fast[0], np.asarray(y, dtype=np.float32))
    from_bytes = audio_data._decode_pcm16({"path": None, "bytes": path.read_bytes()}, 8000)
    assert from_bytes is not None and np.array_equal(from_bytes[0], fast[0])
    assert audio_data._decode_pcm16({"path": str(path), "bytes": None}, 16000) is None  # resampling stays FFmpeg's


def test_lora_fast_bf16_base_with_float32_adapter_equals_peft() -> None:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    ref = get_peft_model(torch.nn.Sequential(torch.nn.Linear(16, 16)).to(torch.bfloat16),
                         LoraConfig(r=4, lora_alpha=8, target_modules=["0"], lora_dropout=0.1, init_lora_weights=False))
    fast = copy.deepcopy(ref)
    assert lora_fast.install(fast) == 1  # the adapter stays float32 (peft's default), the base output is bf16
    x, out = torch.randn(3, 16, dtype=torch.bfloat16), {}
    for name, model in (("ref", ref), ("fast", fast)):
        torch.manual_seed(1)
        y = model(x)
        y.float().sum().backward()
        out[name] = y.detach(), [p.grad for p in model.parameters() if p.requires_grad]
    assert out["fast"][0].dtype == torch.bfloat16 and torch.equal(out["ref"][0], out["fast"][0])
    for a, b in zip(out["ref"][1], out["fast"][1]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
