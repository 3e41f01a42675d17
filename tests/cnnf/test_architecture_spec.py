"""Every registered architecture's layer sequence, pinned to the spec's text.

The expected lists below are written by hand from ../shared/docs/cnnf-spec.md
(sections "Layers", "Residual block feedback", "Inference" and
"Architectures"), with the spec line quoted beside each; they are NOT taken
from the code's output. The actual sequence is recorded by tracing what
executes: the tied conv / linear layers (`cnnf.layers.TiedConv2d`,
`TiedLinear`: forward and `.feedback`) and the `cnnf.functional` (CF)
functions the models call, each wrapped with pytest's monkeypatch and called
through to the original.

Tokens:
    ("Conv", in, out, k, stride, padding)   TiedConv2d.forward
    ("ConvT", in, out, k, stride, padding)  TiedConv2d.feedback (the layer's forward in/out)
    ("FC", in, out)                         TiedLinear.forward
    ("FCT", in, out)                        TiedLinear.feedback (the layer's forward in/out)
    "IN"                                    CF.l2_instance_norm (InstanceNormBias calls it too)
    "IN", "AdaReLU"                         CF.norm_ada_relu (the fused IN + bias + AdaReLU)
    "AdaReLU"                               CF.ada_relu
    "AdaPool"                               CF.ada_pool
    "mask"                                  CF.ada_relu_feedback (AdaReLU in the feedback direction)
    "Unpool"                                CF.ada_pool_feedback (AdaPool in the feedback direction)
    ("AvgPool", k)                          a mean over H and W of a k x k map (Tensor.mean /
                                            torch.mean over dims 2, 3), F.avg_pool2d(k) or
                                            F.adaptive_avg_pool2d(1); the WRN head's avgpool(8)
                                            is a plain `.mean` over HW, not a CF call
    ("Upsample", factor, mode)              F.interpolate (the WRN head's feedback)

Only top-level calls are recorded: a traced function called from inside
another traced one (norm_ada_relu's eager path calls l2_instance_norm and
ada_relu, ada_pool uses F.interpolate) is not recorded twice.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
from typing import Any, Callable, Iterator, Optional, Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from cnnf import functional as CF
from cnnf.layers import TiedConv2d, TiedLinear
from cnnf.models import create_model, model_entry, model_names

Token = Any  # a str or a tuple, see the module docstring
Segments = list[list[Token]]  # segment k: the forward from feedback level k to level k + 1 (the last: to the logits)

IN, ADARELU, ADAPOOL, MASK, UNPOOL = "IN", "AdaReLU", "AdaPool", "mask", "Unpool"


def conv(cin: int, cout: int, k: int = 3, stride: int = 1, padding: int = 0) -> Token:
    return ("Conv", cin, cout, k, stride, padding)


def conv_t(cin: int, cout: int, k: int = 3, stride: int = 1, padding: int = 0) -> Token:
    """The transpose of conv(cin, cout, ...): maps cout channels back to cin."""
    return ("ConvT", cin, cout, k, stride, padding)


def fc(n_in: int, n_out: int) -> Token:
    return ("FC", n_in, n_out)


def fc_t(n_in: int, n_out: int) -> Token:
    """The transpose of fc(n_in, n_out): maps n_out features back to n_in."""
    return ("FCT", n_in, n_out)


def avgpool(k: int) -> Token:
    return ("AvgPool", k)


def upsample(factor: int, mode: str = "nearest") -> Token:
    return ("Upsample", factor, mode)


# ---------------------------------------------------------------------------
# Expected sequences, from the spec's text
# ---------------------------------------------------------------------------


def b1_forward(widths: tuple[int, int, int] = (32, 64, 128)) -> Segments:
    """Paper B.1, segments at the spec's levels 0 = image, 1 = after relu1,
    2 = after the second conv's IN (the spec's "after relu2", but B.1 has no
    relu2, see below)."""
    c1, c2, n_fc = widths
    # Unpadded 3x3 convs, 28 -> 26 -> 24 -> AdaPool 12, so FC(128) sees 64 * 12 * 12
    # (the layout of the classic PyTorch MNIST network that the paper's list matches;
    # the spec names no padding, cnnf/models/fmnist.py's docstring gives this one).
    return [
        # "Conv(32, 3x3) IN AdaReLU,"
        [conv(1, c1, 3, 1, 0), IN, ADARELU],
        # "Conv(64, 3x3) IN AdaPool,"
        # "After the second convolution the AdaPool is the nonlinearity: there is no
        #  AdaReLU between its instance norm and the pool."
        [conv(c1, c2, 3, 1, 0), IN],
        # "FC(128) AdaReLU, FC(10)."
        [ADAPOOL, fc(c2 * 12 * 12, n_fc), ADARELU, fc(n_fc, 10)],
    ]


def b2_forward() -> Segments:
    """Paper B.2 (the reference model), segments at levels 0 = image,
    1 = after relu1, 2 = after relu2 ("Inference": `ind` semantics)."""
    return [
        # "Conv 1->16, 16->32, 32->32 (each 3x3, pad 1, IN, bias, AdaReLU),"
        [conv(1, 16, 3, 1, 1), IN, ADARELU],
        [conv(16, 32, 3, 1, 1), IN, ADARELU],
        [
            conv(32, 32, 3, 1, 1), IN, ADARELU,
            # "AdaPool 2x2, Conv 32->64 (IN, bias, AdaReLU), AdaPool 2x2, flatten 3136,"
            ADAPOOL, conv(32, 64, 3, 1, 1), IN, ADARELU, ADAPOOL,
            # "FC 1000 AdaReLU, FC 128 AdaReLU, FC 10."
            fc(3136, 1000), ADARELU, fc(1000, 128), ADARELU, fc(128, 10),
        ],
    ]  # fmt: skip


# "CIFAR-10: WRN-40-2 (6 pre-activation basic blocks per group, widths
#  16/32/64/128, strides 1/2/2), every BatchNorm replaced by IN + bias,
#  head IN-bias-AdaReLU-avgpool(8)-FC."
WRN_WIDTHS = (16, 32, 64, 128)  # stem, group 1, 2, 3
WRN_STRIDES = (1, 2, 2)
WRN_BLOCKS_PER_GROUP = 6


def wrn_blocks() -> list[tuple[int, int, int]]:
    """(in, out, stride) of the 18 blocks in forward order."""
    blocks = []
    for g, stride in enumerate(WRN_STRIDES):
        cin, cout = WRN_WIDTHS[g], WRN_WIDTHS[g + 1]
        blocks += [(cin if j == 0 else cout, cout, stride if j == 0 else 1) for j in range(WRN_BLOCKS_PER_GROUP)]
    return blocks


def _projection(cin: int, cout: int, stride: int) -> bool:
    # Standard WRN: a 1x1 conv shortcut where the width or the stride changes
    # (the first block of each group here; "projection blocks" in the spec).
    return cin != cout or stride != 1


def wrn_block_forward(cin: int, cout: int, stride: int) -> list[Token]:
    """Pre-activation basic block: IN AdaReLU conv3x3 IN AdaReLU conv3x3 (+ shortcut).

    The 1x1 shortcut conv runs on the relu1 output, in parallel with conv1 ->
    conv2; the spec fixes no order between the branches, so the position of its
    token only reflects call order. cnnf/models/wrn.py's PreActBlock.forward calls
    it after conv2 (`shortcut = ... self.shortcut(a)` before the sum), so it is
    listed last here; a change of that call order moves the token and this
    generator has to follow (the layer list itself would be unchanged).
    """
    tokens = [IN, ADARELU, conv(cin, cout, 3, stride, 1), IN, ADARELU, conv(cout, cout, 3, 1, 1)]
    if _projection(cin, cout, stride):
        tokens.append(conv(cin, cout, 1, stride, 0))
    return tokens


def wrn_forward() -> Segments:
    """Segments at levels 0 = image, k in 1..6 = output of block k of group 1
    ("Inference": "groups 2 and 3 always run in full")."""
    blocks = wrn_blocks()
    n1 = WRN_BLOCKS_PER_GROUP
    stem = conv(3, WRN_WIDTHS[0], 3, 1, 1)  # the 3x3 stem conv 3 -> 16 (pad 1: CIFAR 32x32 stays 32x32)
    segments = [[stem, *wrn_block_forward(*blocks[0])]]
    segments += [wrn_block_forward(*b) for b in blocks[1:n1]]
    rest = [t for b in blocks[n1:] for t in wrn_block_forward(*b)]
    # head "IN-bias-AdaReLU-avgpool(8)-FC": 128 x 8 x 8 -> 128 -> 10
    rest += [IN, ADARELU, avgpool(8), fc(WRN_WIDTHS[-1], 10)]
    segments.append(rest)
    return segments


def wrn_block_feedback(cin: int, cout: int, stride: int) -> list[Token]:
    """"Residual block feedback (WRN)": u = IN(conv2^T(x)); u = relu2.feedback(u);
    v = IN(conv1^T(u)); projection blocks add conv_sc^T(x) (no IN) before
    relu1.feedback(v); identity blocks add x after relu1.feedback(v).

    conv_sc^T(x) depends on x only; it is listed where the spec's text adds it
    (after the IN of conv1^T, before relu1's mask), which is where
    cnnf/models/wrn.py's PreActBlock.feedback calls it.
    """
    tokens = [conv_t(cout, cout, 3, 1, 1), IN, MASK, conv_t(cin, cout, 3, stride, 1), IN]
    if _projection(cin, cout, stride):
        tokens.append(conv_t(cin, cout, 1, stride, 0))
    return tokens + [MASK]


def wrn_feedback(ind: int) -> list[Token]:
    # "Feedback through the head. Starts from the raw logits (no softmax, no one-hot).
    #  For the WRN: fc^T, reshape to C x 1 x 1, nearest upsample x8, instance norm,
    #  then the top AdaReLU mask."
    tokens = [fc_t(WRN_WIDTHS[-1], 10), upsample(8, "nearest"), IN, MASK]
    # level ind = output of block ind of group 1: the feedback runs through blocks ind + 1 .. 18
    for b in reversed(wrn_blocks()[ind:]):
        tokens += wrn_block_feedback(*b)
    if ind == 0:
        # stem^T, the pixel reconstruction: "not on the final reconstruction" (no IN)
        tokens.append(conv_t(3, WRN_WIDTHS[0], 3, 1, 1))
    return tokens


# Every registered name -> its spec layer list. A new architecture must be added here.
SPEC_FORWARD: dict[str, Callable[[], Segments]] = {
    "cnnf_fmnist_std": b1_forward,
    "cnn_fmnist_std": b1_forward,
    # Not in the spec: the B.1 layout at the widths 8 / 16 / 64 (cnnf/models/mnist.py,
    # "The B.1 layout with a quarter of the width"), so B.1's rules apply to it too.
    "cnnf_mnist_small": functools.partial(b1_forward, (8, 16, 64)),
    "cnn_mnist_small": functools.partial(b1_forward, (8, 16, 64)),
    "cnnf_fmnist_adv": b2_forward,
    "cnn_fmnist_adv": b2_forward,
    "cnnf_wrn40_2": wrn_forward,
    "cnn_wrn40_2": wrn_forward,
}


# The feedback chain of one cycle, from the raw logits down to level `ind`.
# Rules ("Layers"): "Forward: conv (no bias). Feedback: transposed conv with the
# *same* weight parameter"; "Linear: feedback is `z @ W` with the same `W`";
# AdaReLU "Feedback direction: ... return it masked by the most recent forward
# mask"; AdaPool "Feedback direction: unpool to the positions selected by the
# most recent forward pass"; "Starts from the raw logits"; "Instance norm is
# applied in the feedback after every transposed conv and after the first FC^T
# that becomes a feature map (Fashion model: after fc1^T), not after
# fc2^T/fc3^T, not on a 1x1 shortcut^T, and not on the final reconstruction."
def b1_feedback(widths: tuple[int, int, int] = (32, 64, 128)) -> list[Token]:
    """B.1 at ind 0 (the paper's pixel-level reconstruction)."""
    c1, c2, n_fc = widths
    return [
        fc_t(n_fc, 10),  # FC(10)^T on the raw logits
        MASK,  # AdaReLU of FC(128)
        fc_t(c2 * 12 * 12, n_fc),  # FC(128)^T, reshaped to 64 x 12 x 12: the first FC^T that becomes a map
        IN,
        UNPOOL,  # AdaPool
        # no mask here: the second conv has no AdaReLU ("the AdaPool is the nonlinearity")
        conv_t(c1, c2, 3, 1, 0),  # Conv(64)^T
        IN,  # "after every transposed conv"
        MASK,  # AdaReLU 1
        conv_t(1, c1, 3, 1, 0),  # Conv(32)^T: the final reconstruction (ind 0), no IN
    ]


def b2_feedback(ind: int) -> list[Token]:
    """B.2 at ind 0 or 2 (released: "ind=2")."""
    tokens = [
        fc_t(128, 10),  # FC 10^T on the raw logits
        MASK, fc_t(1000, 128),  # AdaReLU of FC 128, FC 128^T ("not after fc2^T/fc3^T")
        MASK, fc_t(3136, 1000),  # AdaReLU of FC 1000, FC 1000^T -> 64 x 7 x 7
        IN,  # "after the first FC^T that becomes a feature map (Fashion model: after fc1^T)"
        UNPOOL,  # AdaPool 2
        MASK, conv_t(32, 64, 3, 1, 1), IN,  # AdaReLU 4, Conv 32->64 ^T
        UNPOOL,  # AdaPool 1
        MASK, conv_t(32, 32, 3, 1, 1),  # AdaReLU 3, Conv 32->32 ^T: reaches level 2
    ]  # fmt: skip
    if ind == 2:
        return tokens  # the final reconstruction (level 2): no IN
    assert ind == 0
    return tokens + [
        IN,
        MASK, conv_t(16, 32, 3, 1, 1), IN,  # AdaReLU 2, Conv 16->32 ^T
        MASK, conv_t(1, 16, 3, 1, 1),  # AdaReLU 1, Conv 1->16 ^T: the image, no IN
    ]  # fmt: skip


SPEC_FEEDBACK: dict[tuple[str, int], Callable[[], list[Token]]] = {
    ("cnnf_fmnist_std", 0): b1_feedback,
    ("cnnf_mnist_small", 0): functools.partial(b1_feedback, (8, 16, 64)),
    ("cnnf_fmnist_adv", 0): functools.partial(b2_feedback, 0),
    ("cnnf_fmnist_adv", 2): functools.partial(b2_feedback, 2),
    ("cnnf_wrn40_2", 0): functools.partial(wrn_feedback, 0),
    ("cnnf_wrn40_2", 5): functools.partial(wrn_feedback, 5),
}


# ---------------------------------------------------------------------------
# The tracer
# ---------------------------------------------------------------------------


def _scalar(v: Any) -> Any:
    """2 for 2 and for (2, 2): conv strides / paddings may be stored either way."""
    if isinstance(v, (tuple, list)) and len(set(v)) == 1:
        return v[0]
    return v


def _conv_token(kind: str, layer: TiedConv2d) -> Token:
    cout, cin, k, _ = layer.weight.shape
    return (kind, cin, cout, k, _scalar(layer.stride), _scalar(layer.padding))


def _fc_token(kind: str, layer: TiedLinear) -> Token:
    n_out, n_in = layer.weight.shape
    return (kind, n_in, n_out)


def _hw_dims(x: Any, dim: Any) -> bool:
    """Whether a reduction over `dim` of x is one over H and W of an (N, C, H, W) map."""
    if not isinstance(x, Tensor) or x.dim() != 4 or dim is None:
        return False
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    return sorted(d % 4 for d in dims) == [2, 3]


class Tracer:
    """Records the tokens of the traced calls made while `recording()` is active."""

    def __init__(self) -> None:
        self.tokens: list[Token] = []
        self.in_bias: list[bool] = []  # per recorded "IN": whether a bias came with it
        self._depth = 0
        self._on = False

    @contextlib.contextmanager
    def recording(self) -> Iterator[list[Token]]:
        self.tokens, self.in_bias, self._on = [], [], True
        try:
            yield self.tokens
        finally:
            self._on = False

    def wrap(self, fn: Callable, tokens: Callable[..., Optional[Sequence[Token]]]) -> Callable:
        """fn, calling through; tokens(result, *args, **kwargs) -> what to record (None: nothing).

        Recorded after the call: a traced call never records from inside another,
        so this is also the order in which the calls began.
        """

        @functools.wraps(fn)
        def traced(*args: Any, **kwargs: Any) -> Any:
            top = self._on and self._depth == 0
            self._depth += 1
            try:
                result = fn(*args, **kwargs)
            finally:
                self._depth -= 1
            if top:
                new = tokens(result, *args, **kwargs)
                if new:
                    self.tokens.extend(new)
            return result

        return traced

    def install(self, mp: pytest.MonkeyPatch) -> None:
        def norm(bias: Any) -> list[Token]:
            self.in_bias.append(bias is not None)
            return [IN]

        def in_tokens(_r: Any, x: Tensor, eps: float = CF.IN_EPS, bias: Any = None) -> list[Token]:
            return norm(bias)

        def norm_ada_relu_tokens(_r: Any, x: Tensor, bias: Any, *a: Any, **k: Any) -> list[Token]:
            return [*norm(bias), ADARELU]

        def mean_tokens(_r: Any, x: Any, dim: Any = None, *a: Any, **k: Any) -> Optional[list[Token]]:
            dim = k.get("dim", dim)
            if _hw_dims(x, dim) and x.shape[-1] == x.shape[-2]:
                return [avgpool(x.shape[-1])]
            return None

        def avg_pool_tokens(_r: Any, x: Tensor, kernel_size: Any, *a: Any, **k: Any) -> list[Token]:
            return [avgpool(_scalar(kernel_size))]

        def adaptive_avg_pool_tokens(r: Tensor, x: Tensor, output_size: Any, *a: Any, **k: Any) -> list[Token]:
            if _scalar(output_size) == 1 and x.shape[-1] == x.shape[-2]:
                return [avgpool(x.shape[-1])]
            return [("AdaptiveAvgPool", tuple(r.shape[-2:]))]

        def interpolate_tokens(r: Tensor, x: Tensor, *a: Any, **k: Any) -> list[Token]:
            factor = r.shape[-1] // x.shape[-1] if r.shape[-1] % x.shape[-1] == 0 else (x.shape[-1], r.shape[-1])
            return [upsample(factor, k.get("mode", a[2] if len(a) > 2 else "nearest"))]

        patches: list[tuple[Any, str, Callable[..., Optional[Sequence[Token]]]]] = [
            (TiedConv2d, "forward", lambda r, layer, *a, **k: [_conv_token("Conv", layer)]),
            (TiedConv2d, "feedback", lambda r, layer, *a, **k: [_conv_token("ConvT", layer)]),
            (TiedLinear, "forward", lambda r, layer, *a, **k: [_fc_token("FC", layer)]),
            (TiedLinear, "feedback", lambda r, layer, *a, **k: [_fc_token("FCT", layer)]),
            (CF, "norm_ada_relu", norm_ada_relu_tokens),
            (CF, "l2_instance_norm", in_tokens),
            (CF, "ada_relu", lambda r, *a, **k: [ADARELU]),
            (CF, "ada_pool", lambda r, *a, **k: [ADAPOOL]),
            (CF, "ada_relu_feedback", lambda r, *a, **k: [MASK]),
            (CF, "ada_pool_feedback", lambda r, *a, **k: [UNPOOL]),
            # the WRN head's avgpool(8), however it is written
            (torch.Tensor, "mean", mean_tokens),
            (torch, "mean", mean_tokens),
            (F, "avg_pool2d", avg_pool_tokens),
            (F, "adaptive_avg_pool2d", adaptive_avg_pool_tokens),
            (F, "interpolate", interpolate_tokens),
        ]
        for target, name, tokens in patches:
            mp.setattr(target, name, self.wrap(getattr(target, name), tokens))


@pytest.fixture
def tracer(monkeypatch: pytest.MonkeyPatch) -> Tracer:
    t = Tracer()
    t.install(monkeypatch)
    return t


def _images(name: str, n: int = 2) -> Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand((n, *model_entry(name).meta.input_shape), generator=g) * 2 - 1


def _trace(tracer: Tracer, name: str, n_iterations: int, **kwargs: Any) -> list[Token]:
    torch.manual_seed(0)
    net = create_model(name, **kwargs).eval()
    x = _images(name)
    with torch.no_grad(), tracer.recording() as tokens:
        net.iterate(x, n_iterations)
    return list(tokens)


def _fmt(t: Token) -> str:
    if isinstance(t, str):
        return t
    kind, *rest = t
    if kind in ("Conv", "ConvT"):
        cin, cout, k, s, p = rest
        return f"{kind}({cin}->{cout}, {k}x{k}, stride {s}, pad {p})"
    if kind in ("FC", "FCT"):
        return f"{kind}({rest[0]}->{rest[1]})"
    return f"{kind}({', '.join(map(str, rest))})"


def _assert_sequence(traced: list[Token], expected: list[Token], what: str) -> None:
    if traced == expected:
        return
    diff = "\n".join(
        difflib.unified_diff([_fmt(t) for t in expected], [_fmt(t) for t in traced], "spec", "traced", lineterm="", n=4)
    )
    pytest.fail(f"{what}: the traced layer sequence differs from the spec's list ({len(traced)} vs {len(expected)} tokens)\n{diff}")


def _flat(segments: Segments) -> list[Token]:
    return [t for seg in segments for t in seg]


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------

NAMES = model_names()
FEEDBACK_NAMES = [n for n in NAMES if model_entry(n).meta.feedback]


def test_every_registered_model_has_a_spec_list() -> None:
    missing = sorted(set(NAMES) - set(SPEC_FORWARD))
    stale = sorted(set(SPEC_FORWARD) - set(NAMES))
    assert not missing, f"registered models without an expected layer list from the spec: {missing}; add them to SPEC_FORWARD"
    assert not stale, f"SPEC_FORWARD lists models that are not registered: {stale}"


def test_every_feedback_model_has_a_feedback_chain() -> None:
    missing = sorted(set(FEEDBACK_NAMES) - {name for name, _ in SPEC_FEEDBACK})
    assert not missing, f"CNN-Fs without an expected feedback chain from the spec: {missing}; add them to SPEC_FEEDBACK"


def test_tracer_records_each_call_once(tracer: Tracer) -> None:
    """The tracer itself: a fused norm_ada_relu is one IN + one AdaReLU whether it
    runs its fused kernels or the eager composition (which calls the traced
    l2_instance_norm and ada_relu from inside)."""
    x = torch.randn(2, 3, 4, 4)
    bias = torch.zeros(3)
    with tracer.recording() as tokens:
        CF.norm_ada_relu(x, bias, None, 0.1)
        CF.ada_relu(CF.l2_instance_norm(x), None, 0.1)
        x.mean(dim=(-2, -1))
        x.mean(dim=1)  # not a spatial average
    assert tokens == [IN, ADARELU, IN, ADARELU, avgpool(4)]
    assert tracer.in_bias == [True, False]


@pytest.mark.parametrize("name", NAMES)
def test_first_pass_follows_the_spec(tracer: Tracer, name: str) -> None:
    """The first forward pass (plain ReLU, max-pool) of every registered model."""
    if name not in SPEC_FORWARD:
        pytest.fail(f"{name} is registered but has no expected layer list from the spec; add it to SPEC_FORWARD")
    expected = _flat(SPEC_FORWARD[name]())
    _assert_sequence(_trace(tracer, name, 0), expected, f"{name} first pass")
    # "L2 instance norm ... It is followed by a learnable per-channel bias": every forward IN carries one
    assert all(tracer.in_bias), f"{name}: a forward instance norm without its bias: {tracer.in_bias}"


@pytest.mark.parametrize("name", FEEDBACK_NAMES)
def test_plain_twin_has_the_same_forward_sequence(tracer: Tracer, name: str) -> None:
    """cnn_X is the backbone of cnnf_X run as a plain CNN: the same layers in the same order."""
    twin = name.replace("cnnf_", "cnn_", 1)
    assert twin in NAMES, f"{name} has no plain twin {twin} registered"
    assert not model_entry(twin).meta.feedback
    _assert_sequence(_trace(tracer, twin, 0), _trace(tracer, name, 0), f"{twin} vs {name} first pass")


@pytest.mark.parametrize("name_ind", sorted(SPEC_FEEDBACK), ids=lambda ni: f"{ni[0]}-ind{ni[1]}")
def test_one_feedback_cycle_follows_the_spec(tracer: Tracer, name_ind: tuple[str, int]) -> None:
    """iterate(x, 1) = first pass, the feedback chain from the logits to `ind`,
    then the forward again from `ind` up ("Inference", Algorithm 1).

    Built with recon_levels=() so that the intermediate reconstruction taps
    (an extra AdaReLU mask at each aux level, for the loss only) do not
    interleave with the chain.
    """
    name, ind = name_ind
    segments = SPEC_FORWARD[name]()
    forward, feedback, forward_from_ind = _flat(segments), SPEC_FEEDBACK[name_ind](), _flat(segments[ind:])
    traced = _trace(tracer, name, 1, ind=ind, recon_levels=())
    _assert_sequence(traced, forward + feedback + forward_from_ind, f"{name} (ind {ind}) one feedback cycle")
    # "The bias is identity in the feedback pass": the feedback's INs carry no bias, the forward's do.
    n_in = [sum(t == IN for t in part) for part in (forward, feedback, forward_from_ind)]
    assert tracer.in_bias == [True] * n_in[0] + [False] * n_in[1] + [True] * n_in[2]
