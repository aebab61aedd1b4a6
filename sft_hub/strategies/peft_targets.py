"""Default peft options per model family (and per modality, for families not listed), and what cannot work.

Text: `target_modules` None, i.e. peft's own table by model_type (for BERT-family models LoRA, LoHa, LoKr,
AdaLoRA, VeRA, OFT and BOFT adapt `query` and `value`; IA3 scales `key`, `value` and the feed-forward output).
Images (timm, through TimmWrapper): the layers inside the blocks: ResNet's block convs, ViT / ConvNeXt
attention and MLP linears, EfficientNet's pointwise / SE convs; stems, downsample paths and depthwise convs stay
frozen, the classifier is the new head (saved whole). Audio: the attention projections (q/k/v_proj in
wav2vec2, HuBERT, Whisper and AST in transformers 5; query/key/value in older BERT-style encoders). WavLM is
the exception: its attention hands the projections' weights straight to F.multi_head_attention_forward and never
calls the modules, so an adapter there would get no gradient (transformers#48773); for WavLM the feed-forward
layers are adapted.

Layer types, checked in peft 0.21's tuners: LoRA, LoHa, LoKr, AdaLoRA, IA3 and BOFT adapt Linear and Conv2d;
VeRA adapts Linear only (`vera/model.py`); OFT's Conv2d path rotates unfolded input patches without the conv's
padding and folds them back by summing overlaps, so even untrained it does not reproduce the conv (measured:
logits differ by 3e-3 from the base at initialisation) and it fails on feature maps smaller than the kernel. So
VeRA and OFT adapt the linears of ViT / ConvNeXt, and are refused for the conv-only families (UNSUPPORTED).
"""

from __future__ import annotations

from typing import Any

TIMM_BLOCK_LAYERS = (r"timm_model\.(layer\d+\.\d+\.conv[123]"
                     r"|(stages\.\d+\.)?blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc[12])"
                     r"|blocks\.\d+\.\d+\.(conv_pw|conv_pwl|conv_exp|se\.conv_reduce|se\.conv_expand)|conv_head)")
TIMM_LINEAR_LAYERS = r"timm_model\.(stages\.\d+\.)?blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc[12])"
TIMM_FEED_FORWARD = r"timm_model\.(stages\.\d+\.)?blocks\.\d+\.mlp\.fc2"
AUDIO_ATTENTION = r".*\.(q_proj|k_proj|v_proj|query|key|value)"
AUDIO_IA3 = r".*\.(k_proj|v_proj|key|value|feed_forward\.output_dense|mlp\.fc2)"  # IA3's keys, values, FF outputs
AUDIO_FEED_FORWARD = r".*\.(feed_forward\.output_dense|mlp\.fc2)"
WAVLM_FEED_FORWARD = r"wavlm\..*\.feed_forward\.(intermediate_dense|output_dense)"
WAVLM_FF_OUTPUT = r"wavlm\..*\.feed_forward\.output_dense"

IMAGE_FAMILIES = ("resnet", "convnext", "efficientnet", "vit")


def _targets(image: str, audio: str = AUDIO_ATTENTION, wavlm: str = WAVLM_FEED_FORWARD) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {family: {"target_modules": image} for family in IMAGE_FAMILIES}
    return table | {"wavlm": {"target_modules": wavlm}, "text": {"target_modules": None}, "image": {"target_modules": image},
                    "audio": {"target_modules": audio}}


ADAPT_LINEAR_AND_CONV = _targets(TIMM_BLOCK_LAYERS)
ADAPT_LINEAR = _targets(TIMM_LINEAR_LAYERS)
IA3_DEFAULTS: dict[str, dict[str, Any]] = {
    **{family: {"target_modules": TIMM_BLOCK_LAYERS, "feedforward_modules": TIMM_FEED_FORWARD} for family in IMAGE_FAMILIES},
    "wavlm": {"target_modules": WAVLM_FEED_FORWARD, "feedforward_modules": WAVLM_FF_OUTPUT},
    "text": {"target_modules": None},  # peft's IA3 tables give targets and feedforward_modules together
    "image": {"target_modules": TIMM_BLOCK_LAYERS, "feedforward_modules": TIMM_FEED_FORWARD},
    "audio": {"target_modules": AUDIO_IA3, "feedforward_modules": AUDIO_FEED_FORWARD},
}

CONV_ONLY = {"resnet": "ResNet's blocks are all Conv2d", "efficientnet": "EfficientNet's blocks are all Conv2d"}
UNSUPPORTED: dict[str, dict[str, str]] = {
    "vera": {f: f"peft 0.21's VeRA adapts only nn.Linear layers and {why}" for f, why in CONV_ONLY.items()},
    "oft": {f: f"peft 0.21's OFT on Conv2d does not reproduce the conv (it rotates unfolded patches without the "
               f"conv's padding) and {why}" for f, why in CONV_ONLY.items()},
}


def defaults_for(table: dict[str, dict[str, Any]], family: str, modality: str) -> dict[str, Any]:
    """The default options for `family`, else for its modality, else none (peft's own defaults)."""
    return dict(table.get(family, table.get(modality, {})))
