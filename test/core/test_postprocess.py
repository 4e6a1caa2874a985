"""resized_labels / labels_and_confidence == argmax (and max softmax) of F.interpolate of the whole
volume, exactly: the compiled CPU kernel and the PyTorch path (strips of rows), near ties settled
by PyTorch's reproduced arithmetic or by F.interpolate itself; the settling helpers' contracts."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import sdcpc_core.postprocess as post
from sdcpc_core.ops import label_kernel
from sdcpc_core.postprocess import labels_and_confidence, resized_labels

PATHS = ["kernel", "strips"]


@pytest.fixture
def path(request, monkeypatch):
    """Select one implementation: the numba kernel, or the PyTorch path (strips)."""
    name = request.param
    if name == "kernel" and not label_kernel.available():
        pytest.skip("numba is not installed (an install requirement: pip install numba)")
    monkeypatch.setattr(post, "USE_KERNEL", name == "kernel")
    return name

SIZES = [(480, 480), (97, 131), (61, 45), (20, 13), (30, 37), (31, 38), (120, 50)]


def reference(logits, size):
    return F.interpolate(logits.float()[None], size=size, mode="bilinear", align_corners=False)[0].argmax(0)


def kinds(k=9, h=30, w=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    smooth = F.interpolate(torch.randn(1, k, 6, 7, generator=g) * 4, size=(h, w), mode="bilinear")[0]
    noise = torch.randn(k, h, w, generator=g)
    ties = torch.randint(0, 3, (k, h, w), generator=g).float()  # exact ties everywhere
    return {"smooth": smooth, "noise": noise, "ties": ties}


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("size", SIZES)
def test_equal_to_argmax_of_the_resized_volume(size, path):
    """Upsampling, downsampling, non-integer factors; every path."""
    for name, logits in kinds().items():
        got = resized_labels(logits, size)
        assert got.dtype == torch.long and got.shape == size
        assert torch.equal(got, reference(logits, size)), name


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("k", [1, 2, 3, 4, 300])
def test_class_counts(k, path):
    """K=1 (all zeros), small K, and K > 255."""
    for logits in kinds(k=k, h=17, w=11, seed=k).values():
        for size in [(68, 44), (40, 29), (9, 5)]:
            assert torch.equal(resized_labels(logits, size), reference(logits, size))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes_resize_in_float32(dtype):
    for logits in kinds(k=12, seed=3).values():
        logits = logits.to(dtype)
        for size in [(120, 148), (50, 61)]:
            assert torch.equal(resized_labels(logits, size), reference(logits, size))


@pytest.mark.parametrize("reproduced", [True, False], ids=["reproduced", "interpolated"])
@pytest.mark.parametrize("path", PATHS, indirect=True)
def test_near_ties_are_settled_by_the_reference_values(path, reproduced, monkeypatch):
    """A duplicated class (exact ties: the lower index wins) and a class one ulp above another
    (a tie our own rounding cannot decide): settled by PyTorch's arithmetic reproduced, or, where
    it is not (``_REPRODUCED = [False]``), by F.interpolate of the contenders."""
    monkeypatch.setattr(post, "_REPRODUCED", [reproduced])
    calls = []
    exact = post._exact_labels
    monkeypatch.setattr(post, "_exact_labels", lambda *a: calls.append(a[2].numel()) or exact(*a))
    constant = torch.zeros(4, 9, 11)  # every class tied everywhere, a margin of zero
    for size in [(90, 70), (64, 65)]:
        assert torch.equal(resized_labels(constant, size), reference(constant, size))
    for magnitude in (1.0, 1000.0):  # the margin scales with the logits
        base = kinds(k=6, seed=5)["smooth"] * magnitude
        for twin in (base[4].clone(), torch.nextafter(base[4], torch.tensor(float("inf"))),
                     torch.nextafter(base[4], torch.tensor(float("-inf")))):
            for logits in (torch.cat([base[:2], twin[None], base[2:]]),  # class 2 ~ class 5
                           torch.cat([base, twin[None]])):  # class 6 ~ class 4
                for size in [(120, 148), (77, 53)]:
                    assert torch.equal(resized_labels(logits, size), reference(logits, size))
    if reproduced:
        assert not calls  # every tie settled without interpolating
    else:
        assert calls and min(calls) > 0


def test_pytorch_arithmetic_is_reproduced_bit_for_bit():
    """The check behind the reproduced settlement holds on this build, and fails for arithmetic
    that is not PyTorch's (plain float32 lerps)."""
    post._REPRODUCED.clear()
    assert post._arithmetic_reproduced()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 21, 16, generator=g) * 30
    size = (83, 129)
    ref = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
    ys, xs = (t.reshape(-1) for t in torch.meshgrid(torch.arange(size[0]), torch.arange(size[1]), indexing="ij"))
    values, unsure = post._pytorch_bilinear(x.permute(1, 2, 0).reshape(-1, 7), 16, ys, xs,
                                            post.source_coordinates(21, size[0]), post.source_coordinates(16, size[1]))
    assert not unsure.any()
    assert torch.equal(values, ref[:, ys, xs].T)
    # a plain multiply-add (two roundings) is not PyTorch's: the check must notice
    try:
        post._REPRODUCED.clear()
        plain = (lambda a, b, c: (a * b + c, torch.zeros_like(a, dtype=torch.bool)))
        original, post._fma = post._fma, plain
        assert not post._arithmetic_reproduced()
    finally:
        post._fma = original
        post._REPRODUCED.clear()


def test_fma_flags_double_rounding():
    """A float64 sum rounded onto a float32 halfway point is flagged; an exact halfway is not."""
    a = torch.tensor([1.0 + 2.0 ** -12])  # a * a = 1 + 2^-11 + 2^-24: halfway between two floats
    value, unsure = post._fma(a, a, torch.tensor([0.0]))
    assert value.item() == 1.0 + 2.0 ** -11 and not unsure.item()  # exact: ties to even
    # + 2^-80: the true sum lies just above halfway (an fma rounds up), float64 drops 2^-80
    value, unsure = post._fma(a, a, torch.tensor([2.0 ** -80]))
    assert unsure.item()
    value, unsure = post._fma(a, a, torch.tensor([2.0 ** -30]))  # kept by float64: not unsure
    assert value.item() == 1.0 + 2.0 ** -11 + 2.0 ** -23 and not unsure.item()
    # an exact halfway reached through a non-zero addend: 1 + 2^-22 + 2^-24, not flagged
    value, unsure = post._fma(torch.tensor([1.0]), torch.tensor([1.0 + 2.0 ** -22]), torch.tensor([2.0 ** -24]))
    assert value.item() == 1.0 + 2.0 ** -22 and not unsure.item()  # ties to even
    # a small product below a large addend: 1 + 2^-24 - 2^-70, which float64 rounds onto halfway
    a, b = torch.tensor([2.0 ** -12 * (1 + 2.0 ** -23)]), torch.tensor([2.0 ** -12 * (1 - 2.0 ** -23)])
    value, unsure = post._fma(a, b, torch.tensor([1.0]))
    assert value.item() == 1.0 and unsure.item()
    # the same onto a halfway point above an odd float32 (1 + 2^-23 + 2^-24)
    value, unsure = post._fma(a, b, torch.tensor([1.0 + 2.0 ** -23]))
    assert unsure.item()
    # float32 subnormal sums (coarser float32 rounding) are flagged whenever float64 rounded
    tiny = torch.tensor([2.0 ** -100])  # its square, 2^-200, is lost next to the addend
    for addend, flagged in [(2.0 ** -130, True), (1.5 * 2.0 ** -127, True), (2.0 ** -126, False)]:
        value, unsure = post._fma(tiny, tiny, torch.tensor([addend]))
        assert unsure.item() == flagged, addend


def test_a_pixel_is_unsure_when_any_of_its_three_multiply_adds_is(monkeypatch):
    """``_pytorch_bilinear``: top row, bottom row, then the column mix; each may flag a class."""
    x = torch.randn(5, 6, 7)
    pixels = x.permute(1, 2, 0).reshape(-1, 5)
    ys, xs = torch.tensor([3, 10, 20]), torch.tensor([4, 9, 2])
    sources = post.source_coordinates(6, 24), post.source_coordinates(7, 13)
    fma = post._fma
    for flagged_call in range(3):
        calls = []

        def flagging(a, b, c, calls=calls, flagged_call=flagged_call):
            value, _ = fma(a, b, c)
            unsure = torch.zeros_like(value, dtype=torch.bool)
            if len(calls) == flagged_call:
                unsure[1, 3] = True  # the second pixel, one class
            calls.append(1)
            return value, unsure

        monkeypatch.setattr(post, "_fma", flagging)
        values, unsure = post._pytorch_bilinear(pixels, 7, ys, xs, *sources)
        assert len(calls) == 3 and values.shape == (3, 5)
        assert unsure.tolist() == [False, True, False]


def test_contenders_are_the_classes_within_twice_the_margin_of_the_best():
    """The kernel path's contenders at unsure pixels: within twice the margin of the best, the
    margin from the largest |logit| among the four corners of each pixel."""
    h, w, k = 4, 5, 5
    pixels = torch.zeros(h * w, k)
    ys, xs = torch.tensor([1, 2]), torch.tensor([1, 3])  # identity resize: weights 0, corners (y, x)..(y+1, x+1)
    sources = post.source_coordinates(h, h), post.source_coordinates(w, w)
    margin = post.MARGIN * 8  # a corner of each pixel has |logit| 8
    for corner in range(4):
        scale = torch.ones(h * w)
        for y, x in zip(ys.tolist(), xs.tolist()):
            pixels[y * w + x] = torch.tensor([1.0, 1 - 2 * margin, 1 - 2.5 * margin, 1 - 2.05 * margin, 0.5])
            dy, dx = divmod(corner, 2)
            scale[(y + dy) * w + x + dx] = 8.0
        classes, member = post._contenders(pixels, w, ys, xs, *sources, scale.numpy())
        assert classes.tolist() == [list(range(k))] * 2
        assert member.tolist() == [[True, True, False, False, False]] * 2, f"large corner {corner}"
    scale = torch.ones(h * w)
    scale[2 * w + 3] = 8.0  # only the second pixel has a large corner
    member = post._contenders(pixels, w, ys, xs, *sources, scale.numpy())[1]
    assert member.tolist() == [[True, False, False, False, False], [True, True, False, False, False]]


@pytest.mark.parametrize("k, contending", [(4, [0, 1, 2]), (4, [1, 2, 3]), (9, [2, 5, 7]), (9, [0, 3, 4, 8])])
def test_exact_labels_interpolates_the_contenders_never_exactly_three_channels(k, contending, monkeypatch):
    """F.interpolate may take another CPU kernel for 3 channels (other rounding): a fourth, spare
    class is added, which never wins."""
    g = torch.Generator().manual_seed(k)
    x = torch.randn(k, 9, 11, generator=g)
    size = (31, 40)
    ys, xs = torch.tensor([0, 7, 30, 12]), torch.tensor([0, 39, 5, 21])
    members = torch.zeros(4, k, dtype=torch.bool)
    members[:, contending] = True
    members[1, contending[0]] = False  # pixel 1: one class fewer
    seen = []
    interpolate = F.interpolate
    monkeypatch.setattr(post.F, "interpolate", lambda t, **kw: seen.append(t[0].clone()) or interpolate(t, **kw))
    labels = post._exact_labels(x, size, ys, xs, (torch.arange(k).expand(4, k), members))
    assert len(seen) == 1 and seen[0].shape[0] == (4 if len(contending) == 3 else len(contending))
    used = [c for c in range(k) if any(torch.equal(seen[0][i], x[c]) for i in range(seen[0].shape[0]))]
    assert len(used) == seen[0].shape[0] and set(contending) <= set(used)  # distinct classes
    full = interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0][:, ys, xs]
    want = full.masked_fill(~members.T, float("-inf")).argmax(0)
    assert labels.tolist() == want.tolist()


@pytest.mark.parametrize("path", PATHS, indirect=True)
def test_nan_and_inf_give_the_definition(path, monkeypatch):
    """Non-finite logits (the engine refuses them): the whole volume is resized, as defined."""
    logits = kinds(k=5, seed=7)["smooth"]
    logits[2, 3, 4] = float("nan")
    logits[1, 10, 10] = float("inf")
    logits[0, 20, 5] = float("-inf")
    for size in [(120, 148), (61, 45)]:
        assert torch.equal(resized_labels(logits, size), reference(logits, size))


@pytest.mark.parametrize("path", PATHS, indirect=True)
def test_a_single_source_or_output_row_or_column(path):
    for shape, size in [((3, 1, 5), (4, 9)), ((4, 6, 1), (11, 3)), ((2, 1, 1), (5, 7)), ((5, 6, 7), (1, 1)),
                        ((5, 6, 7), (1, 9))]:
        logits = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)))
        assert torch.equal(resized_labels(logits, size), reference(logits, size))


@pytest.mark.parametrize("k, size, threads, reproduced", [
    (5, (60, 68), None, False), (5, (60, 69), None, True), (5, (64, 64), None, False), (5, (200, 13), None, True),
    (3, (60, 69), 1, False), (3, (60, 69), 2, True), (4, (60, 69), 1, True)])
def test_reference_values_only_where_pytorch_runs_its_generic_kernel(k, size, threads, reproduced):
    """PyTorch's CPU bilinear resize takes its generic kernel (the arithmetic ``_pytorch_bilinear``
    reproduces) when H + W > 128, except for 3 channels on one thread: elsewhere no values."""
    before = torch.get_num_threads()
    threads = threads or before
    if threads > before and "MUTANT_UNDER_TEST" in os.environ:  # OpenMP pools do not survive fork
        pytest.skip(f"needs {threads} torch threads; under mutmut (scripts/mutation.sh, one thread) "
                    "raising the count would deadlock the children it forks")
    torch.set_num_threads(threads)
    try:
        x = torch.randn(k, 11, 13, generator=torch.Generator().manual_seed(k)) * 8
        pixels = x.permute(1, 2, 0).reshape(-1, k)
        ys, xs = (t.reshape(-1) for t in torch.meshgrid(torch.arange(size[0]), torch.arange(size[1]), indexing="ij"))
        got = post._reference_values(x, pixels, size, ys, xs)
        ref = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0][:, ys, xs].T
        plain = post._pytorch_bilinear(pixels, 13, ys, xs, post.source_coordinates(11, size[0]),
                                       post.source_coordinates(13, size[1]))[0]
        assert torch.equal(plain, ref) == reproduced  # what the condition is about
        assert (got is not None) == reproduced
        if reproduced:
            assert torch.equal(got[0], ref) and not got[1].any()
    finally:
        torch.set_num_threads(before)


def test_on_cpu_the_kernel_runs_and_the_definition_only_for_non_finite_logits(monkeypatch):
    if not label_kernel.available():
        pytest.skip("numba is not installed (an install requirement: pip install numba)")
    calls = []
    def spy(name, fn):
        return lambda *a: calls.append(name) or fn(*a)

    for name in ("resized_labels_cpu", "summarise"):
        monkeypatch.setattr(label_kernel, name, spy(name, getattr(label_kernel, name)))
    whole = post._resize_whole
    monkeypatch.setattr(post, "_resize_whole", lambda *a: calls.append("whole") or whole(*a))
    logits = kinds(k=6, seed=4)["smooth"]
    assert torch.equal(resized_labels(logits, (90, 111)), reference(logits, (90, 111)))
    assert calls == ["summarise", "resized_labels_cpu"]
    logits[1, 2, 3] = float("nan")
    calls.clear()
    assert torch.equal(resized_labels(logits, (90, 111)), reference(logits, (90, 111)))
    assert calls == ["summarise", "whole"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (scripts/gpu_check.sh runs this)")
def test_labels_on_cuda_equal_the_definition():
    """GPU tensors take the strips path; near ties are settled by F.interpolate on the GPU."""
    for logits in list(kinds(k=9, seed=8).values()) + [kinds(k=150, h=60, w=60, seed=9)["noise"]]:
        for size in [(120, 148), (61, 45), (240, 240)]:
            want = reference(logits.cuda(), size)
            assert torch.equal(resized_labels(logits.cuda(), size), want)
            labels, confidence = labels_and_confidence(logits.cuda(), size)
            assert labels.is_cuda and torch.equal(labels, want) and confidence.is_cuda


def test_the_kernel_compiles_without_a_cache_where_none_can_be_written(monkeypatch):
    """numba refuses ``cache=True`` when no cache location is writable (a read-only install run by
    a user without a home): the kernel is then compiled for the process only."""
    if not label_kernel.available():
        pytest.skip("numba is not installed (an install requirement: pip install numba)")
    njit = label_kernel.numba.njit
    cached = []

    def no_locator(*args, **options):
        if args and args[0] in (label_kernel._kernel, label_kernel._summarise):
            cached.append(options["cache"])
            if options["cache"]:
                raise RuntimeError(f"cannot cache function {args[0].__name__!r}: no locator available")
        return njit(*args, **options)

    monkeypatch.setattr(label_kernel.numba, "njit", no_locator)
    monkeypatch.setattr(label_kernel, "_compiled", {})
    logits = kinds(k=5, seed=6)["smooth"]
    assert torch.equal(resized_labels(logits, (90, 111)), reference(logits, (90, 111)))
    assert cached == [True, False, True, False]  # summarise, then the main kernel


def test_an_engine_on_cpu_compiles_the_kernel_before_its_first_frame(monkeypatch):
    if not label_kernel.available():
        pytest.skip("numba is not installed (an install requirement: pip install numba)")
    from sdcpc_core.checkpoints import BASELINE_CHECKPOINT
    from sdcpc_core.engine import StreamingSegmenter

    monkeypatch.setattr(label_kernel, "_compiled", {})
    StreamingSegmenter.from_checkpoint(BASELINE_CHECKPOINT, device="cpu")
    assert set(label_kernel._compiled) == {"summarise", "kernel"}


def test_without_numba_the_pytorch_path_is_used(monkeypatch):
    monkeypatch.setattr(label_kernel, "numba", None)
    assert not label_kernel.available()
    for logits in kinds(k=7, seed=2).values():
        assert torch.equal(resized_labels(logits, (120, 148)), reference(logits, (120, 148)))


def test_calls_from_several_threads_at_once_are_each_exact():
    """The node's worker and an evaluation may resize at the same time (the kernel is shared)."""
    from concurrent.futures import ThreadPoolExecutor

    cases = [logits for seed in range(3) for logits in kinds(k=11, h=24, w=31, seed=seed).values()]
    sizes = [(96 + i, 124 - i) for i in range(len(cases))]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(resized_labels, cases * 3, sizes * 3))
    for logits, size, labels in zip(cases * 3, sizes * 3, results):
        assert torch.equal(labels, reference(logits, size))


@pytest.mark.parametrize("size, strip_rows", [((480, 480), None), ((97, 131), 7), ((61, 45), 1),
                                              ((20, 13), None), ((33, 200), 64)])
def test_labels_and_confidence_equal_resizing_the_logits(size, strip_rows):
    """Labels exact, confidence = max softmax probability, for any strip height."""
    torch.manual_seed(0)
    for logits in (torch.randn(11, 30, 37) * 3, torch.randint(0, 3, (11, 30, 37)).float()):
        full = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
        labels, confidence = labels_and_confidence(logits, size, strip_rows)
        assert labels.shape == confidence.shape == size
        assert torch.equal(labels, full.argmax(0))
        torch.testing.assert_close(confidence, full.softmax(0).amax(0), rtol=1e-5, atol=1e-6)


def test_bad_input_is_named():
    batch_hint = r"\(K, h, w\); got shape \(1, 3, 4, 4\) \(pass logits\[0\] for a batch of one\)"
    with pytest.raises(ValueError, match=batch_hint):
        resized_labels(torch.zeros(1, 3, 4, 4), (8, 8))
    with pytest.raises(ValueError, match="floating-point"):
        resized_labels(torch.zeros(3, 4, 4, dtype=torch.long), (8, 8))
    with pytest.raises(ValueError, match="size"):
        labels_and_confidence(torch.zeros(3, 4, 4), (0, 8))


KEEPS_THREADS = """
import torch
torch.set_num_threads(1)
from sdcpc_core import postprocess
postprocess.resized_labels(torch.randn(5, 12, 16), (48, 64))  # the label kernel's first launch
print(torch.get_num_threads())
"""


def test_the_label_kernels_first_launch_keeps_pytorchs_thread_count():
    """numba's OpenMP layer sets the OpenMP thread count PyTorch shares when it starts; it once
    doubled a process's PyTorch threads (``sdcpc adapt --threads 1``'s report ran 5-8x slower)."""
    out = subprocess.run([sys.executable, "-c", KEEPS_THREADS], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "1"
