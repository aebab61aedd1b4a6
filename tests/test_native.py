"""`sft_hub.native.keep_mask`: torch's own dropout draws, compiled. Same masks and generator state as
`bernoulli_`, at any offset in the Mersenne-Twister block; torch's path when off or when it would differ."""

from __future__ import annotations

import shutil

import pytest
import torch

from sft_hub import native


@pytest.fixture()
def fresh(monkeypatch, tmp_path):
    """A process-fresh module state with its own build cache."""
    monkeypatch.setenv("SFT_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "_checked", False)
    monkeypatch.setattr(native, "_lib", None)
    return tmp_path


def _draws(fn, seed: int, words_before: int, shapes, p: float):
    torch.manual_seed(seed)
    if words_before:
        torch.rand(words_before)  # float32 draws use one 32-bit word each: any offset in the 624-word block
    masks = [fn(s, p) for s in shapes]
    return masks, torch.get_rng_state(), torch.rand(3)


@pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="no C compiler on this machine")
def test_compiled_and_the_same_draws_as_torch(fresh):
    assert native.available()
    assert list((fresh / "native").glob("keep_mask-*.so"))
    torch_way = lambda shape, p: torch.empty(shape, dtype=torch.bool).bernoulli_(p)  # noqa: E731
    shapes = [(1,), (623,), (2, 311), (32, 17, 384), (624,), (5, 1536)]
    for seed, offset, p in [(0, 0, 0.9), (1, 1, 0.9), (2, 623, 0.5), (3, 312, 0.001), (4, 7, 0.999999), (5, 2, 1 / 3)]:
        ref, ref_state, ref_next = _draws(torch_way, seed, offset, shapes, p)
        got, got_state, got_next = _draws(native.keep_mask, seed, offset, shapes, p)
        assert all(torch.equal(a, b) for a, b in zip(ref, got)), (seed, offset, p)
        assert torch.equal(ref_state, got_state) and torch.equal(ref_next, got_next)
        assert got[3].dtype == torch.bool and got[3].shape == (32, 17, 384)
    assert abs(got[3].float().mean().item() - 1 / 3) < 0.01  # the last case drew at p = 1/3: a real mask
    assert abs(native.keep_mask((100_000,), 0.25).float().mean().item() - 0.25) < 0.01


def test_off_by_environment_uses_torch(fresh, monkeypatch):
    monkeypatch.setenv("SFT_HUB_NATIVE", "0")
    assert not native.available()
    assert not list(fresh.glob("native/*.so"))  # nothing built
    torch.manual_seed(7)
    a = native.keep_mask((4, 9), 0.8)
    torch.manual_seed(7)
    assert torch.equal(a, torch.empty(4, 9, dtype=torch.bool).bernoulli_(0.8))


def test_a_kernel_that_disagrees_with_torch_is_not_used(fresh, monkeypatch):
    monkeypatch.setattr(native, "_native_mask", lambda lib, shape, p: torch.ones(shape, dtype=torch.bool))
    assert not native.available()  # the self-check found different masks: torch's path for the whole process
    torch.manual_seed(3)
    a = native.keep_mask((1000,), 0.5)
    assert 300 < int(a.sum()) < 700


def test_no_compiler_or_a_failed_build_uses_torch(fresh, monkeypatch):
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(native.shutil, "which", lambda name: None)
    assert not native.available()
    monkeypatch.setattr(native, "_checked", False)
    monkeypatch.setenv("CC", "false")  # a compiler that fails: nothing half-built is left behind
    assert not native.available() and not list(fresh.glob("native/*"))


@pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="no C compiler on this machine")
def test_apply_mask_is_torchs_dropout_product(fresh):
    assert native.available()
    x = torch.randn(3, 5, 77)
    x[0, 0, :4] = torch.tensor([0.0, -0.0, -2.0, 3.0])
    for p in (0.9, 0.5, 1 / 3, 0.999):
        keep = torch.rand(3, 5, 77) < p
        ref, got = x * keep.to(x.dtype).div_(p), native.apply_mask(x, keep, p)
        assert torch.equal(ref, got) and torch.equal(torch.signbit(ref), torch.signbit(got))  # -0.0 where torch has it
    half = x.to(torch.bfloat16)  # not float32: torch's own ops, same numbers
    assert torch.equal(native.apply_mask(half, keep, 0.999), half * keep.to(half.dtype).div_(0.999))
