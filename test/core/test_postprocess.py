"""resized_labels / labels_and_confidence == argmax (and max softmax) of F.interpolate of the whole
volume, exactly: pruned cells, the dense strip path, near ties settled by F.interpolate."""

import pytest
import torch
import torch.nn.functional as F

import sdcpc_core.postprocess as post
from sdcpc_core.postprocess import labels_and_confidence, resized_labels

SIZES = [(480, 480), (97, 131), (61, 45), (20, 13), (30, 37), (31, 38), (120, 50)]


def reference(logits, size):
    return F.interpolate(logits.float()[None], size=size, mode="bilinear", align_corners=False)[0].argmax(0)


def kinds(k=9, h=30, w=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    smooth = F.interpolate(torch.randn(1, k, 6, 7, generator=g) * 4, size=(h, w), mode="bilinear")[0]
    noise = torch.randn(k, h, w, generator=g)
    ties = torch.randint(0, 3, (k, h, w), generator=g).float()  # exact ties everywhere
    return {"smooth": smooth, "noise": noise, "ties": ties}


@pytest.mark.parametrize("dense", [False, True], ids=["pruned", "strips"])
@pytest.mark.parametrize("size", SIZES)
def test_equal_to_argmax_of_the_resized_volume(size, dense, monkeypatch):
    """Upsampling, downsampling, non-integer factors; both paths (DENSE_CELLS forces one)."""
    monkeypatch.setattr(post, "DENSE_CELLS", 0.0 if dense else 1.1)
    for name, logits in kinds().items():
        got = resized_labels(logits, size)
        assert got.dtype == torch.long and got.shape == size
        assert torch.equal(got, reference(logits, size)), name


@pytest.mark.parametrize("k", [1, 2, 3, 4, 300])
def test_class_counts(k):
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


@pytest.mark.parametrize("dense", [False, True], ids=["pruned", "strips"])
def test_near_ties_are_settled_by_the_reference_values(dense, monkeypatch):
    """A duplicated class (exact ties: the lower index wins) and a class one ulp above another
    (a tie our own rounding cannot decide) both go through F.interpolate of the contenders."""
    monkeypatch.setattr(post, "DENSE_CELLS", 0.0 if dense else 1.1)
    calls = []
    exact = post._exact_labels
    monkeypatch.setattr(post, "_exact_labels", lambda *a: calls.append(a[2].numel()) or exact(*a))
    base = kinds(k=6, seed=5)["smooth"]
    for twin in (base[4].clone(), torch.nextafter(base[4], torch.tensor(float("inf")))):
        logits = torch.cat([base[:2], twin[None], base[2:]])  # class 2 ~ class 5
        for size in [(120, 148), (77, 53)]:
            assert torch.equal(resized_labels(logits, size), reference(logits, size))
    assert calls and min(calls) > 0


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
    with pytest.raises(ValueError, match=r"\(K, h, w\)"):
        resized_labels(torch.zeros(1, 3, 4, 4), (8, 8))
    with pytest.raises(ValueError, match="floating-point"):
        resized_labels(torch.zeros(3, 4, 4, dtype=torch.long), (8, 8))
    with pytest.raises(ValueError, match="size"):
        labels_and_confidence(torch.zeros(3, 4, 4), (0, 8))
