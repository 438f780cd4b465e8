"""Parameter shapes of the models the benchmarks stand in for, written out by hand.

No model library is imported (torchvision and transformers are not dependencies): the shapes are
derived from the published architectures, in the order ``model.parameters()`` yields them, and the
tensor counts and totals are asserted against the well-known figures:

* ``resnet50_shapes()``: torchvision's ``resnet50()`` (Bottleneck blocks [3, 4, 6, 3], expansion 4,
  stride on the 3x3 conv, 1000 classes): 161 tensors, 25,557,032 parameters.
* ``gpt2_small_shapes()``: Hugging Face's ``GPT2LMHeadModel`` "gpt2" (12 layers, d=768, vocab 50257,
  context 1024, Conv1D weights stored (in, out)); ``lm_head`` is tied to ``wte`` and counted once:
  148 tensors, 124,439,808 parameters.
* ``many_small(n, size)``: ``n`` flat tensors of ``size`` elements (per-tensor overhead dominates).
* ``one_large(numel)``: one flat tensor (bandwidth dominates).

``PARAM_SETS`` names the sets of ``compare_sgd.py`` (1,000 x 1,024 and 2**24 there).
``make_params(shapes)`` (from ``harness.params``) turns shapes into fp32 tensors with random gradients.
"""

from __future__ import annotations

from harness.params import Shape, make_params, numel

__all__ = [
    "RESNET50_TENSORS",
    "RESNET50_NUMEL",
    "GPT2_SMALL_TENSORS",
    "GPT2_SMALL_NUMEL",
    "resnet50_shapes",
    "gpt2_small_shapes",
    "many_small",
    "one_large",
    "numel",
    "make_params",
    "PARAM_SETS",
]

RESNET50_TENSORS = 161
RESNET50_NUMEL = 25_557_032
GPT2_SMALL_TENSORS = 148
GPT2_SMALL_NUMEL = 124_439_808


def _bn(c: int) -> list[Shape]:
    # BatchNorm2d: weight, bias (running_mean/var are buffers, not parameters).
    return [(c,), (c,)]


def resnet50_shapes() -> list[Shape]:
    """torchvision ``resnet50()`` parameter shapes, in ``parameters()`` order (161 tensors, 25.6M)."""
    shapes: list[Shape] = [(64, 3, 7, 7), *_bn(64)]  # conv1 (no bias), bn1
    inplanes = 64
    for planes, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):  # layer1..layer4
        for b in range(blocks):
            out = planes * 4  # Bottleneck.expansion
            shapes += [(planes, inplanes, 1, 1), *_bn(planes)]  # conv1 1x1, bn1
            shapes += [(planes, planes, 3, 3), *_bn(planes)]  # conv2 3x3 (stride here), bn2
            shapes += [(out, planes, 1, 1), *_bn(out)]  # conv3 1x1, bn3
            if b == 0:  # downsample: 1x1 conv + bn on the first block of every layer
                shapes += [(out, inplanes, 1, 1), *_bn(out)]
            inplanes = out
    shapes += [(1000, 2048), (1000,)]  # fc
    assert len(shapes) == RESNET50_TENSORS, len(shapes)
    assert numel(shapes) == RESNET50_NUMEL, numel(shapes)
    return shapes


def gpt2_small_shapes() -> list[Shape]:
    """GPT-2 small (124M) parameter shapes; the tied ``lm_head`` is ``wte``, listed once (148 tensors)."""
    d, vocab, ctx, layers = 768, 50257, 1024, 12
    shapes: list[Shape] = [(vocab, d), (ctx, d)]  # wte, wpe
    for _ in range(layers):
        shapes += [(d,), (d,)]  # ln_1 weight, bias
        shapes += [(d, 3 * d), (3 * d,)]  # attn.c_attn (Conv1D: in, out), bias
        shapes += [(d, d), (d,)]  # attn.c_proj
        shapes += [(d,), (d,)]  # ln_2
        shapes += [(d, 4 * d), (4 * d,)]  # mlp.c_fc
        shapes += [(4 * d, d), (d,)]  # mlp.c_proj
    shapes += [(d,), (d,)]  # ln_f
    assert len(shapes) == GPT2_SMALL_TENSORS, len(shapes)
    assert numel(shapes) == GPT2_SMALL_NUMEL, numel(shapes)
    return shapes


def many_small(n: int = 200, size: int = 1000) -> list[Shape]:
    """``n`` flat tensors of ``size`` elements each."""
    return [(size,)] * n


def one_large(n: int = 2**24) -> list[Shape]:
    """One flat tensor of ``n`` elements."""
    return [(n,)]


# The sets of benchmarks/compare_sgd.py (and its result files), by name.
PARAM_SETS = {
    "resnet50": resnet50_shapes,
    "gpt2_small": gpt2_small_shapes,
    "many_small": lambda: many_small(1000, 1024),
    "one_large": lambda: one_large(2**24),
}
