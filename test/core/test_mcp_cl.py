"""MCP-CL loss: prototypes, momentum bank, InfoNCE behaviour on small synthetic features."""

import torch
import torch.nn.functional as F

from sdcpc_core.losses import MCPContrastiveLoss, spherical_kmeans


def _labels(b=2, h=8, w=8, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, classes, (b, h, w), generator=g)


def test_loss_falls_when_features_separate():
    torch.manual_seed(0)
    labels = _labels()
    feats = torch.randn(2, 16, 8, 8, requires_grad=True)
    crit = MCPContrastiveLoss(num_classes=3, feat_dim=16, prototypes_per_class=2)
    opt = torch.optim.Adam([feats], lr=0.05)
    losses = []
    for _ in range(60):
        loss = crit(feats, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    # the learned features are now class-separable: nearest class mean = label
    f = F.normalize(feats.detach(), dim=1).permute(0, 2, 3, 1).reshape(-1, 16)
    y = labels.reshape(-1)
    means = F.normalize(torch.stack([f[y == c].mean(0) for c in range(3)]), dim=1)
    assert ((f @ means.t()).argmax(1) == y).float().mean() > 0.95


def test_separated_features_score_lower_than_mixed():
    torch.manual_seed(0)
    labels = _labels()
    dirs = F.normalize(torch.randn(3, 16), dim=1)
    separated = dirs[labels].permute(0, 3, 1, 2) + 0.05 * torch.randn(2, 16, 8, 8)
    mixed = torch.randn(2, 16, 8, 8)
    crit = MCPContrastiveLoss(num_classes=3, feat_dim=16)
    crit(separated, labels)  # build the bank from the separated features
    bank = crit.state_dict()
    low = crit(separated, labels).item()
    crit.load_state_dict(bank)
    high = crit(mixed, labels).item()
    assert low < 0.1 < high


def test_prototypes_stay_unit_norm_and_absent_classes_untouched():
    torch.manual_seed(0)
    crit = MCPContrastiveLoss(num_classes=5, feat_dim=8, prototypes_per_class=4)
    for step in range(5):
        crit(torch.randn(2, 8, 6, 6) * (step + 1), _labels(h=6, w=6, classes=3, seed=step))
    assert crit.initialized.tolist() == [True, True, True, False, False]
    norms = crit.prototypes[:3].norm(dim=2)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    assert crit.prototypes[3:].abs().sum() == 0
    assert {"prototypes", "initialized"} <= set(crit.state_dict())


def test_all_ignore_batch_gives_zero_with_grad():
    crit = MCPContrastiveLoss(num_classes=3, feat_dim=8)
    feats = torch.randn(1, 8, 4, 4, requires_grad=True)
    loss = crit(feats, torch.full((1, 4, 4), 255))
    assert loss.item() == 0 and loss.grad_fn is not None
    loss.backward()
    assert torch.isfinite(feats.grad).all()
    assert not crit.initialized.any()
    # labels outside [0, num_classes) count as ignored too
    loss = crit(feats, torch.full((1, 4, 4), 7))
    assert loss.item() == 0 and not crit.initialized.any()


def test_single_class_has_no_negatives_and_no_nan():
    crit = MCPContrastiveLoss(num_classes=3, feat_dim=8)
    feats = torch.randn(1, 8, 4, 4, requires_grad=True)
    loss = crit(feats, torch.ones(1, 4, 4, dtype=torch.long))
    assert loss.item() == 0 and loss.grad_fn is not None
    assert crit.initialized.tolist() == [False, True, False]


def test_gradients_reach_features_and_labels_are_downsampled():
    torch.manual_seed(0)
    crit = MCPContrastiveLoss(num_classes=3, feat_dim=8, prototypes_per_class=2)
    feats = torch.randn(2, 8, 4, 4, requires_grad=True)
    labels = _labels(h=16, w=16)  # 4x the feature size, resized by nearest inside
    labels[:, :4] = 255
    loss = crit(feats, labels)
    loss.backward()
    assert loss.item() > 0
    assert torch.isfinite(feats.grad).all() and feats.grad.abs().sum() > 0
    # pixels whose (downsampled) label is ignore get no gradient
    small = F.interpolate(labels[:, None].float(), size=(4, 4), mode="nearest")[:, 0]
    assert feats.grad.permute(0, 2, 3, 1)[small == 255].abs().sum() == 0


def test_bank_updates_with_momentum():
    crit = MCPContrastiveLoss(num_classes=2, feat_dim=4, prototypes_per_class=2, momentum=0.9)
    eye = torch.eye(4)
    crit.prototypes.copy_(torch.stack([eye[:2], eye[2:]]))
    crit.initialized.fill_(True)
    # one pixel per prototype, each tilted off its prototype's axis
    v = F.normalize(torch.stack([eye[0] + 0.3 * eye[1], eye[1] + 0.2 * eye[0],
                                 eye[2] - 0.1 * eye[3], eye[3] + 0.4 * eye[2]]), dim=1)
    feats = v.t().reshape(1, 4, 1, 4)
    crit(feats, torch.tensor([[[0, 0, 1, 1]]]))
    expected = F.normalize(0.9 * eye + 0.1 * v, dim=1).reshape(2, 2, 4)
    torch.testing.assert_close(crit.prototypes, expected)


def test_first_update_copies_kmeans_centres():
    torch.manual_seed(0)
    dirs = F.normalize(torch.randn(2, 6), dim=1)
    x = F.normalize(dirs.repeat_interleave(10, 0) + 0.01 * torch.randn(20, 6), dim=1)
    crit = MCPContrastiveLoss(num_classes=1, feat_dim=6, prototypes_per_class=2)
    crit(x.t().reshape(1, 6, 4, 5), torch.zeros(1, 4, 5, dtype=torch.long))
    sim = crit.prototypes[0] @ dirs.t()  # (2, 2): each prototype matches one mode
    assert sorted(sim.argmax(1).tolist()) == [0, 1] and sim.max(1).values.min() > 0.99


def test_spherical_kmeans_keeps_empty_slot():
    x = F.normalize(torch.tensor([[1.0, 0.1], [1.0, -0.1]]), dim=1)
    init = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    out = spherical_kmeans(x, init, iters=3)
    torch.testing.assert_close(out, init)  # slot 0: mean direction (1, 0); slot 1 keeps its centre


def _two_mode_class(n=64, c=8):
    """Class 0 has two modes: A (predicted right) and B (predicted as class 1); class 1 has C."""
    torch.manual_seed(0)
    a, b, other = F.normalize(torch.randn(3, c), dim=1)
    jitter = lambda: 0.05 * torch.randn(n, c)  # noqa: E731
    feats = torch.cat([a + jitter(), b + jitter(), other + jitter()])  # (3n, C)
    labels = torch.tensor([0] * (2 * n) + [1] * n)
    predictions = torch.tensor([0] * n + [1] * n + [1] * n)  # mode B of class 0 is confused
    as_map = lambda x: x.T.reshape(1, -1, 3 * n, 1) if x.ndim == 2 else x.reshape(1, 3 * n, 1)  # noqa: E731
    return as_map(feats), as_map(labels), as_map(predictions), (a, b, other)


def test_prediction_variant_builds_prototypes_from_correct_pixels_only():
    feats, labels, predictions, (a, b, _) = _two_mode_class()
    by_label = MCPContrastiveLoss(num_classes=2, feat_dim=8, prototypes_per_class=2)
    by_prediction = MCPContrastiveLoss(num_classes=2, feat_dim=8, prototypes_per_class=2,
                                       pixels="prediction")
    by_label(feats, labels)
    by_prediction(feats, labels, predictions)
    near = lambda protos, mode: (protos @ mode).max().item()  # noqa: E731
    assert near(by_label.prototypes[0], a) > 0.95 and near(by_label.prototypes[0], b) > 0.95
    assert near(by_prediction.prototypes[0], a) > 0.95 and near(by_prediction.prototypes[0], b) < 0.8


def test_prediction_variant_anchors_wrong_pixels_first():
    _, labels, predictions, _ = _two_mode_class(n=64)
    crit = MCPContrastiveLoss(num_classes=2, feat_dim=8, max_pixels_per_class=64, pixels="prediction")
    flat_labels, flat_wrong = labels.reshape(-1), (predictions != labels).reshape(-1)
    index, classes = crit._sample(flat_labels, flat_wrong)
    picked = flat_wrong[index[flat_labels[index] == 0]]
    assert classes.tolist() == [0, 1] and picked.numel() == 64 and picked.all()  # all 64 confused ones


def test_prediction_variant_pulls_the_confused_mode_and_needs_predictions():
    feats, labels, predictions, _ = _two_mode_class()
    feats = feats.clone().requires_grad_()
    crit = MCPContrastiveLoss(num_classes=2, feat_dim=8, prototypes_per_class=1, pixels="prediction")
    loss = crit(feats, labels, predictions)
    assert torch.isfinite(loss) and loss.item() > 0
    grad = torch.autograd.grad(loss, feats)[0].reshape(8, -1)
    n = 64
    assert grad[:, n:2 * n].norm() > grad[:, :n].norm()  # the confused mode gets the larger pull
    never_right = torch.zeros_like(labels)  # class 1 is never predicted: no prototypes, no anchors
    fresh = MCPContrastiveLoss(num_classes=2, feat_dim=8, pixels="prediction")
    assert torch.isfinite(fresh(feats, labels, never_right))
    assert fresh.initialized.tolist() == [True, False]
    import pytest

    with pytest.raises(ValueError, match="needs the predicted classes"):
        fresh(feats, labels)
    with pytest.raises(ValueError, match="is not one of"):
        MCPContrastiveLoss(num_classes=2, feat_dim=8, pixels="confidence")


def test_prediction_variant_prototypes_do_not_depend_on_the_anchor_budget():
    """Class 0 has as many confused pixels as the per-class budget: the anchors are all confused
    ones, yet the prototypes still come from its correctly predicted pixels."""
    feats, labels, predictions, (a, _, _) = _two_mode_class(n=64)
    crit = MCPContrastiveLoss(num_classes=2, feat_dim=8, prototypes_per_class=1,
                              max_pixels_per_class=64, pixels="prediction")
    crit(feats, labels, predictions)
    assert crit.initialized[0] and (crit.prototypes[0, 0] @ a).item() > 0.95
