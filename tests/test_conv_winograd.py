"""Winograd F(2x2, 3x3) (cpp/src/conv/winograd.h): the packed NHWC entry's dense 3x3 stride-1
forward pass with 32+ channels on both sides (2048+ output pixels), the input gradient that is its adjoint's forward, and
(K*C up to 128 x 128) the weight gradient; NCHW arrays through the same passes between transposes.

Every case first asserts that the dispatcher takes the Winograd path for it (cnnkit.ops.conv's
_winograd, from the compiled predicate), so a change of the rule cannot leave these tests checking
another kernel. Checked against the float64 references of test_conv / test_fusion at every ISA
level, 1 and 2 threads (bitwise the same), on shapes around the vector width (channel counts with
remainders of 16), odd and even planes (cropped tiles), every padding from 0 to 2 on each side,
and with every fused prologue and epilogue.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnkit.ops import fused as F
from cnnkit.ops.conv import _winograd

from conftest import ISA_LEVELS, assert_bitwise, isa_level, num_threads
from test_conv import Geo, check_backward, check_forward, make_case
from test_fusion import _check_case

CHANNELS = (32, 33, 47, 64, 80)


def _takes(geo: Geo, layout: str, pass_: str) -> bool:
    return _winograd(geo.x_shape(layout), geo.weight_shape, 1, geo.padding, 1, 1, layout, pass_)


@st.composite
def geometries(draw):
    ci, co = draw(st.sampled_from(CHANNELS)), draw(st.sampled_from(CHANNELS))
    h, w = draw(st.integers(2, 13)), draw(st.integers(2, 13))
    pad = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    # outputs of 2+ rows and columns (the rule's bound)
    h, w = max(h, 4 - 2 * pad[0]), max(w, 4 - 2 * pad[1])
    ho, wo = h + 2 * pad[0] - 2, w + 2 * pad[1] - 2
    # 2048+ output pixels over the batch (the rule's bound) in the forward pass and in the input
    # gradient's (the adjoint's forward: H x W outputs), and up to one image more
    return Geo(-(-2048 // min(ho * wo, h * w)) + draw(st.integers(0, 1)), ci, co, h, w, 3, 3, 1, pad)


@settings(max_examples=30, deadline=None)
@given(geo=geometries(), layout=st.sampled_from(("NHWC", "NCHW")), isa=st.sampled_from(ISA_LEVELS),
       seed=st.integers(0, 2**32 - 1))
def test_winograd_matches_the_reference(geo, layout, isa, seed):
    """Forward and input gradient (weight and bias gradients on their own kernels alongside)
    against float64, at 1 and 2 threads with the same bits."""
    assert all(_takes(geo, layout, p) for p in ("forward", "input", "weight")), f"{geo} {layout}"
    c = make_case(np.random.default_rng(seed), geo, layout, np.float32, bias=bool(seed % 2))
    outs = []
    with isa_level(isa):
        for n in (1, 2):
            with num_threads(n):
                outs.append((check_forward(c), check_backward(c, needs=("input", "weight", "bias"))))
    assert_bitwise(outs[1][0], outs[0][0], f"y at 2 threads vs 1 ({isa}, {geo})")
    for i, name in enumerate(("grad_x", "grad_w", "grad_b")):
        assert_bitwise(outs[1][1][i], outs[0][1][i], f"{name} at 2 threads vs 1 ({isa}, {geo})")


@pytest.mark.parametrize("isa", ISA_LEVELS)
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("geo", [Geo(6, 64, 64, 19, 21, 3, 3, 1, 1), Geo(12, 33, 70, 27, 8, 3, 3, 1, (2, 0)),
                                 Geo(8, 128, 32, 16, 16, 3, 3, 1, 1), Geo(5, 32, 48, 30, 33, 3, 3, 1, 1)], ids=str)
def test_winograd_bands(isa, layout, geo):
    """Planes cut into several bands of tile rows (the last one cropped at an odd height), and
    the weight gradient's pieces of several bands each."""
    assert all(_takes(geo, layout, p) for p in ("forward", "input", "weight"))
    c = make_case(np.random.default_rng(7), geo, layout, np.float32)
    with isa_level(isa):
        check_forward(c)
        check_backward(c)


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("epi", ["none", "stats", "res", "relu", "res_relu"])
@pytest.mark.parametrize("prologue", [True, False])
def test_winograd_fused(layout, epi, prologue):
    """conv2d_fused's prologue (scale, shift, ReLU: the padding stays 0) and epilogues, and the
    fused backward (the gradient epilogue on the Winograd input gradient; without a prologue the
    weight gradient is the plain pass, by Winograd in NHWC), against float64."""
    for seed, (C, K, H) in enumerate(((32, 40, 9), (47, 64, 19))):
        N = -(-2048 // (H * (H - 2)))  # (2048+ output pixels)
        geo = Geo(N, C, K, H, H - 2, 3, 3, 1, 1)
        assert _takes(geo, layout, "forward") and _takes(geo, layout, "input")
        _check_case(dict(N=N, C=C, K=K, H=H, W=H - 2, kh=3, kw=3, groups=1, stride=1, padding=1, dilation=1,
                         layout=layout, bias=True, scale=prologue, shift=prologue and bool(seed),
                         pre_relu=prologue, epi=epi, dtype=np.float32, seed=seed))


def test_winograd_fused_same_bits_at_one_and_two_threads():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((10, 14, 15, 48)).astype(np.float32)
    w = rng.standard_normal((40, 48, 3, 3)).astype(np.float32)
    s, t = rng.uniform(0.5, 2, 48).astype(np.float32), rng.standard_normal(48).astype(np.float32)
    assert _winograd(x.shape, w.shape, 1, 1, 1, 1, "NHWC")
    outs = []
    for n in (1, 2):
        with num_threads(n):
            outs.append(F.conv2d_fused(x, w, None, pre_scale=s, pre_shift=t, pre_relu=True, stats=True,
                                       stride=1, padding=1, layout="NHWC"))
    for a, b, name in zip(outs[0], outs[1], ("y", "mean", "var")):
        assert_bitwise(b, a, name)


def test_winograd_rule():
    """Where the path applies: dense 3x3, stride and dilation 1, 32+ channels on both sides,
    2048+ output pixels over the batch."""
    x = (6, 20, 20, 64)
    assert not _winograd((5, 20, 20, 64), (64, 64, 3, 3), 1, 1, 1, 1, "NHWC")  # 2000 pixels
    assert _winograd(x, (64, 64, 3, 3), 1, 1, 1, 1, "NHWC")
    assert _winograd(x, (64, 64, 3, 3), 1, 1, 1, 1, "NHWC", pass_="weight")
    big = (6, 20, 20, 256)  # (the weight gradient: K*C at most 128 x 128)
    assert _winograd(big, (256, 256, 3, 3), 1, 1, 1, 1, "NHWC")
    assert not _winograd(big, (256, 256, 3, 3), 1, 1, 1, 1, "NHWC", pass_="weight")
    assert not _winograd(x, (64, 64, 3, 3), 2, 1, 1, 1, "NHWC")   # stride
    assert not _winograd(x, (64, 64, 3, 3), 1, 2, 2, 1, "NHWC")   # dilation
    assert not _winograd(x, (64, 32, 3, 3), 1, 1, 1, 2, "NHWC")   # groups
    assert not _winograd(x, (16, 64, 3, 3), 1, 1, 1, 1, "NHWC")   # 16 output channels
    assert not _winograd(x, (64, 64, 5, 5), 1, 2, 1, 1, "NHWC")   # 5x5
    # NCHW: the NHWC passes between transposes, at any plane size
    for hw in (9, 20, 60):
        n = -(-2048 // (hw * hw))
        assert _winograd((n, 64, hw, hw), (64, 64, 3, 3), 1, 1, 1, 1, "NCHW")
        assert _winograd((n, 64, hw, hw), (64, 64, 3, 3), 1, 1, 1, 1, "NCHW", pass_="weight")
    assert not _winograd((6, 64, 20, 20), (64, 64, 3, 3), 2, 1, 1, 1, "NCHW")
