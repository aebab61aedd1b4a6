"""The image inference copy (`fast_image`): BatchNorm folded, NHWC, against the plain model it replaces.

Tiny timm architectures built from their configs with non-trivial BatchNorm statistics, images generated in
tmp_path. Equality (to 1e-4 in logits, exact in pixels) and fallbacks; no timings.
"""

from __future__ import annotations

import copy
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from image_fixtures import data_cfg, make_folder, model_cfg

from sft_hub import fast_image, fast_predict
from sft_hub.tasks import image, image_data

LABELS = ["ants", "bees", "wasps"]
CONVS = r".*layer\d+\.\d+\.conv\d"  # the residual blocks' convolutions (a regex: the stem's conv1 is a Sequential)


def _net(arch: str = "test_resnet", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = image.build_model(model_cfg(name_or_path=arch), LABELS).model.eval()
    with torch.no_grad():  # statistics far from the identity, so that a wrong fold shows in the logits
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.3, 0.3)
    return net


def _bns(model: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("arch", ["test_resnet", "test_efficientnet", "test_convnext"])
def test_copy_folds_every_batchnorm_and_keeps_the_logits(arch):
    net = _net(arch)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2
    fast = fast_image.inference_copy(net)
    assert fast is not None and _bns(fast) == 0  # resnet: nn.BatchNorm2d; efficientnet: timm's BatchNormAct2d
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in fast.parameters() if p.dim() == 4)
    with torch.inference_mode():
        ref = net(pixel_values=x).logits
        got = fast(pixel_values=x.contiguous(memory_format=torch.channels_last)).logits
    assert ref.abs().max() > 0.01
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-4)
    state = net.state_dict()  # the loaded model itself is untouched: same modules, same weights
    assert state.keys() == before.keys() and all(torch.equal(state[k], v) for k, v in before.items())
    assert _bns(net) == (0 if arch == "test_convnext" else len(fast_image.conv_bn_pairs(net)))


def test_pairs_inside_untraceable_modules_and_shared_outputs_are_left():
    class Block(torch.nn.Module):
        def __init__(self, share: bool):
            super().__init__()
            self.conv, self.bn, self.share = torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.BatchNorm2d(3), share

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y if self.share else self.bn(y)  # shared: the conv output is needed unnormalised too

    class Top(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = Block(share=False), Block(share=True)

        def forward(self, x):
            return self.a(x) if x.sum() > 0 else self.b(x)  # data-dependent: fx cannot trace this level

    top = Top().eval()
    assert fast_image.conv_bn_pairs(top) == [("a.conv", "a.bn")]
    x = torch.randn(2, 3, 8, 8).abs()
    ref = top(x)
    assert fast_image.fold_batchnorm(top) == 1 and isinstance(top.a.bn, torch.nn.Identity)
    torch.testing.assert_close(top(x), ref, rtol=0, atol=1e-5)


def test_a_wrong_copy_is_caught_and_the_plain_model_used(caplog):
    net = _net()
    fast = fast_image.inference_copy(net)
    with torch.no_grad():
        fast.timm_model.fc.bias.add_(1.0)  # a copy that no longer computes what the model does
    run = fast_image.Runner(net, fast)
    x = torch.randn(3, 3, 32, 32)
    with caplog.at_level(logging.WARNING, logger="sft_hub"), torch.inference_mode():
        out = run({"pixel_values": x})
        assert run.fast is None and "using the plain model" in caplog.text
        torch.testing.assert_close(out, net(pixel_values=x).logits, rtol=0, atol=0)


def _loaded(folder, model: torch.nn.Module, **extra) -> SimpleNamespace:
    recipe = SimpleNamespace(task="image_classification", data=data_cfg(folder=str(folder)), model=model_cfg())
    return SimpleNamespace(info=SimpleNamespace(recipe=recipe), task=image, model=model, labels=LABELS,
                           processor=image.load_processor(model_cfg()), **extra)


def _lora(net: torch.nn.Module, name: str, seed: int) -> None:
    with torch.no_grad():  # B starts at zero: make the adapter real
        for n, p in net.named_parameters():
            if "lora_B" in n and f".{name}." in n:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)) * 0.3)


def _plain_rows(folder, rows, model: torch.nn.Module) -> np.ndarray:
    """The reference: the unmerged model, unfolded, NCHW, one row at a time through the eval transform."""
    proc = image.load_processor(model_cfg())
    mean, std = (torch.tensor(proc.data_config[k]).view(1, -1, 1, 1) * 255 for k in ("mean", "std"))
    tf = proc.transform()
    with torch.inference_mode():
        return np.concatenate([model(pixel_values=(tf(image_data.open_rgb(item))[None].float() - mean) / std).logits.numpy()
                               for item in rows["image"]])


def test_predict_with_a_merged_lora_runs_the_copy(tmp_path, caplog):
    folder = make_folder(tmp_path / "data")
    rows = image_data.list_inputs([str(folder / "val")], None)
    net = get_peft_model(_net(), LoraConfig(r=4, target_modules=CONVS, modules_to_save=["fc"]))
    _lora(net, "default", 3)
    expected = _plain_rows(folder, rows, net.eval())
    loaded = _loaded(folder, net)
    with caplog.at_level(logging.INFO, logger="sft_hub"):
        got = fast_predict.logits(loaded, rows, batch_size=5)
    assert "BatchNorm layers folded" in caplog.text and "plain model" not in caplog.text  # the copy passed its check
    first = loaded._fast_image[1]
    assert first.fast is not None and _bns(first.fast) == 0  # the copy ran
    assert _bns(loaded.model) > 0  # the merged model of the run still has its BatchNorm (export saves it)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    again = fast_predict.logits(loaded, rows, batch_size=4)  # eval of a second split: the same copy, reused
    np.testing.assert_allclose(again, got, rtol=0, atol=1e-5)
    assert loaded._fast_image[1] is first and first.checked  # not rebuilt, not checked again


def test_adapter_views_keep_their_adapters_apart(tmp_path, caplog):
    folder = make_folder(tmp_path / "data")
    rows = image_data.list_inputs([str(folder / "val")], None)
    base = _net()
    net = get_peft_model(base, LoraConfig(r=4, target_modules=CONVS, modules_to_save=["fc"]), adapter_name="one")
    net.add_adapter("two", LoraConfig(r=4, target_modules=CONVS, modules_to_save=["fc"]))
    _lora(net, "one", 3), _lora(net, "two", 4)
    net.eval()
    expected = {}
    for name in ("one", "two"):
        net.set_adapter(name)
        expected[name] = _plain_rows(folder, rows, net)
    assert np.abs(expected["one"] - expected["two"]).max() > 1e-2
    for name in ("two", "one", "two"):
        view = _loaded(folder, net, adapter_name=name)
        view.activate = lambda v=view: net.set_adapter(v.adapter_name)  # what inference.AdapterView does
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="sft_hub"):
            np.testing.assert_allclose(fast_predict.logits(view, rows, batch_size=5), expected[name], rtol=0, atol=1e-4)
        assert "BatchNorm layers folded" in caplog.text and "plain model" not in caplog.text  # this adapter's copy ran
    assert isinstance(net, PeftModel) and set(net.peft_config) == {"one", "two"} and _bns(net) > 0  # shared model untouched


def test_channels_last_batches_have_the_same_pixels(tmp_path):
    folder = make_folder(tmp_path / "data")
    rows = image_data.list_inputs([str(folder / "val")], None)
    proc = image.load_processor(model_cfg())
    feats = image.encode(image_data.DatasetDict({"rows": rows}), proc, data_cfg(folder=str(folder)), model_cfg(), None)["rows"]
    items = [feats[i] for i in range(len(feats))]
    plain = image_data.Collator(proc.data_config["mean"], proc.data_config["std"], False)(items)["pixel_values"]
    nhwc = image_data.Collator(proc.data_config["mean"], proc.data_config["std"], True)(items)["pixel_values"]
    mean, std = (torch.tensor(proc.data_config[k]).view(1, -1, 1, 1) * 255 for k in ("mean", "std"))
    before = torch.stack([copy.deepcopy(f["pixel_values"]) for f in items]).float().sub_(mean).div_(std)  # the collator as it was
    assert nhwc.is_contiguous(memory_format=torch.channels_last) and not plain.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(nhwc, before) and torch.equal(plain, before)
