"""The location stage changes nothing in the forward pass; its candidate scores, the off-centre data and the
location report measure what they say."""

from types import SimpleNamespace

import pytest
import torch

from mgnet import location
from mgnet.evaluate import glimpse_overlap, location_report
from mgnet.model import build_model
from mgnet.train import LocationStage, parameter_groups, training_loss

SIZE = 64
SCALE = 4.0  # 16 px glimpses: the first one sees the photo at a quarter of its resolution


def quadrant_batch(n, seed):
    """Dark photos with one bright 32 px quadrant; a 2 px dot at its centre is red or green (the class).
    The bright quadrant shows at any resolution, the dot's colour only when zoomed in."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=gen)
    quad = torch.randint(0, 4, (n,), generator=gen)
    x = torch.full((n, 3, SIZE, SIZE), 0.1) + 0.03 * torch.randn(n, 3, SIZE, SIZE, generator=gen)
    half, dot = SIZE // 2, 2
    for i in range(n):
        r, c = divmod(int(quad[i]), 2)
        x[i, :, r * half : (r + 1) * half, c * half : (c + 1) * half] = 0.6
        top, left = r * half + (half - dot) // 2, c * half + (half - dot) // 2
        x[i, :, top : top + dot, left : left + dot] = 0.0
        x[i, int(y[i]), top : top + dot, left : left + dot] = 1.0
    return x.clamp(0, 1), y, quad


def train(model, steps, stage=None, seed=0, lr=1e-3):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    criterion = torch.nn.CrossEntropyLoss()
    for step in range(steps):
        x, y, _ = quadrant_batch(32, seed * 10_000 + step)
        model.train()
        loss, _ = training_loss(model, model, x, y, criterion, stage)
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.fixture(scope="module")
def pretrained():
    """A small MGNet trained briefly with the paper's loss alone (it learns the classes, not where to look)."""
    torch.manual_seed(0)
    model = build_model("mgnet", num_classes=2, image_size=SIZE, n_glimpses=2, scale=SCALE)
    train(model, 60, seed=1)
    return model.state_dict()


def fresh(state):
    model = build_model("mgnet", num_classes=2, image_size=SIZE, n_glimpses=2, scale=SCALE)
    model.load_state_dict(state)
    return model


@pytest.mark.slow
def test_replaying_saved_glimpses_gives_identical_logits_after_the_stage(pretrained):
    """The stage trains weights only: the forward pass still reads its own proposals, so feeding the
    glimpses it chose back in as glimpse_params reproduces the logits exactly."""
    model = fresh(pretrained)
    train(model, 5, LocationStage(weight=1.0), seed=3)
    x, _, _ = quadrant_batch(8, 7)
    model.eval()
    with torch.no_grad():
        own = model(x)
        again = model(x, glimpse_params=own.glimpses[1:])
        with_states = model(x, return_states=True)
    assert torch.equal(own.logits, again.logits)
    assert torch.equal(own.logits, with_states.logits) and torch.equal(own.glimpses, with_states.glimpses)
    assert with_states.states.shape == (2, 8, model.feat_dim + 3)


@pytest.mark.slow
def test_candidate_losses_score_each_candidate_as_a_forced_glimpse(pretrained):
    model = fresh(pretrained).eval()
    x, y, _ = quadrant_batch(4, 5)
    grid = location.candidate_grid(2)
    losses = location.candidate_losses(model, x, y, grid)
    assert losses.shape == (1, 4, len(grid))
    k = 3
    with torch.no_grad():
        forced = model(x, glimpse_params=model.place(grid[k : k + 1]).expand(1, 4, 3).contiguous())
    expected = torch.nn.functional.cross_entropy(forced.logits[1], y, reduction="none")
    assert torch.allclose(losses[0, :, k], expected, atol=1e-5)


def test_overlap_cost_adds_the_largest_iou_with_earlier_own_glimpses():
    torch.manual_seed(0)
    model = build_model("mgnet", num_classes=2, image_size=SIZE, n_glimpses=3, scale=SCALE).eval()
    x, y, _ = quadrant_batch(3, 2)
    grid = location.candidate_grid(2)
    plain = location.candidate_losses(model, x, y, grid)
    pushed = location.candidate_losses(model, x, y, grid, overlap=0.7)
    assert torch.equal(plain[0], pushed[0])  # glimpse 2 has no earlier glimpse but the whole photo
    with torch.no_grad():
        own = model(x).glimpses[1]  # [B, 3]
    iou = location.box_iou(own[:, None, :], model.place(grid)[None])  # [B, K]
    assert torch.allclose(pushed[1] - plain[1], 0.7 * iou, atol=1e-5)
    assert float(iou.max()) > 0


def test_mirror_averages_with_the_mirrored_candidate_on_the_mirror_image():
    torch.manual_seed(0)
    model = build_model("mgnet", num_classes=2, image_size=SIZE, n_glimpses=3, scale=SCALE).eval()
    x, y, _ = quadrant_batch(3, 2)
    grid = location.candidate_grid(3)
    plain = location.candidate_losses(model, x, y, grid, overlap=0.3)
    both = location.candidate_losses(model, x, y, grid, overlap=0.3, mirror=True)
    # candidate (s, ux, uy) on the photo is (s, 1 - ux, uy) on its mirror image
    for k, (s, ux, uy) in enumerate(grid.tolist()):
        m = next(j for j, u in enumerate(grid.tolist()) if u[::2] == [s, uy] and abs(u[1] - (1 - ux)) < 1e-6)
        with torch.no_grad():
            forced = model(
                x.flip(-1), n_glimpses=2, glimpse_params=model.place(grid[m : m + 1]).expand(1, 3, 3).contiguous()
            )
        mirrored = torch.nn.functional.cross_entropy(forced.logits[1], y, reduction="none")
        assert torch.allclose(both[0, :, k], (plain[0, :, k] + mirrored) / 2, atol=1e-5)
    assert not torch.allclose(both, plain)  # the mirror image does change the numbers


def test_prob_reward_scores_a_candidate_by_minus_the_true_class_probability():
    torch.manual_seed(0)
    model = build_model("mgnet", num_classes=2, image_size=SIZE, n_glimpses=3, scale=SCALE).eval()
    x, y, _ = quadrant_batch(3, 2)
    grid = location.candidate_grid(2)
    k = 1
    with torch.no_grad():
        forced = model(x, n_glimpses=2, glimpse_params=model.place(grid[k : k + 1]).expand(1, 3, 3).contiguous())
    p_true = forced.logits[1].softmax(-1).gather(1, y[:, None])[:, 0]
    prob = location.candidate_losses(model, x, y, grid, overlap=0.4, reward="prob")
    assert torch.allclose(prob[0, :, k], -p_true, atol=1e-6)
    # the overlap cost is added to either score alike
    ce = location.candidate_losses(model, x, y, grid, overlap=0.4)
    plain = location.candidate_losses(model, x, y, grid)
    assert torch.allclose(prob[1] + torch.exp(-plain[1]), ce[1] - plain[1], atol=1e-5)
    with pytest.raises(ValueError, match="unknown reward"):
        location.candidate_losses(model, x, y, grid, reward="gain")


def test_cost_objective_moves_to_the_nearest_good_candidate_and_match_settles_between():
    """Two equally good candidates left and right of a start just left of the middle: matching the soft
    target ends between them, lowering the expected cost ends on the left one."""
    grid = torch.tensor([[0.5, 0.1, 0.5], [0.5, 0.9, 0.5], [0.5, 0.5, 0.5], [0.5, 0.5, 0.1]])
    losses = torch.tensor([0.2, 0.2, 1.0, 1.0]).expand(1, 8, 4)
    states = torch.zeros(1, 8, 4)

    def settle(objective):
        torch.manual_seed(0)
        head = torch.nn.Linear(4, 3)
        with torch.no_grad():
            head.weight.zero_()
            head.bias.copy_(torch.logit(torch.tensor([0.5, 0.4, 0.5])))
        model = SimpleNamespace(loc_network=head)
        opt = torch.optim.SGD(head.parameters(), lr=0.05)
        for _ in range(300):
            opt.zero_grad()
            location.location_loss(model, states, losses, grid, width=0.05, objective=objective).backward()
            opt.step()
        return float(torch.sigmoid(head.bias.detach()[1]))

    assert settle("cost") < 0.2  # on the left candidate (0.1)
    assert 0.35 < settle("match") < 0.65  # between the two
    with pytest.raises(ValueError, match="unknown location objective"):
        location.location_loss(SimpleNamespace(loc_network=torch.nn.Linear(4, 3)), states, losses, grid, objective="x")


def test_location_lr_scale_gives_the_location_network_its_own_rate_without_decay():
    model = build_model("mgnet", num_classes=2, image_size=SIZE, n_glimpses=2, scale=SCALE)
    args = SimpleNamespace(lr=0.02, location_lr_scale=10.0)
    groups, peaks = parameter_groups(model, args)
    assert peaks == [0.02, 0.2] and groups[1]["weight_decay"] == 0.0
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.loc_network.parameters()}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    one, peak = parameter_groups(model, SimpleNamespace(lr=0.02, location_lr_scale=1.0))
    assert peak == [0.02] and len(one) == 1


def test_candidate_grid_covers_the_image_symmetrically():
    grid = location.candidate_grid(3)
    assert grid.shape == (27, 3)
    assert torch.allclose(grid[:, 1:].mean(0), torch.tensor([0.5, 0.5]))
    assert torch.allclose(grid[:, 0].unique(), torch.tensor(location.CANDIDATE_SCALES))


def test_off_centre_pastes_a_shrunk_photo_at_a_seeded_position():
    imgs = torch.zeros(6, 3, 64, 64, dtype=torch.uint8)
    imgs[:, 0] = 200
    imgs[::2, 0] = 0
    imgs[::2, 2] = 200  # every other photo blue
    out, boxes = location.off_centre(imgs, seed=3)
    again, boxes_again = location.off_centre(imgs, seed=3)
    assert torch.equal(out, again) and torch.equal(boxes, boxes_again)
    assert out.dtype == torch.uint8 and out.shape == imgs.shape
    side = boxes[:, 2] - boxes[:, 0]
    assert torch.equal(side, boxes[:, 3] - boxes[:, 1])
    assert bool(((side >= 0.4 * 64 - 1) & (side <= 0.6 * 64 + 1)).all())
    for i, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
        inside = out[i, :, y0:y1, x0:x1].float().mean((1, 2))
        assert torch.allclose(inside, imgs[i].float().mean((1, 2)), atol=2)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    assert float(centres.std(0).min()) > 2  # positions vary
    assert not torch.equal(location.off_centre(imgs, seed=4)[1], boxes)


def test_glimpse_overlap_is_one_for_identical_boxes_and_zero_for_disjoint():
    same = torch.tensor([[1.0, 0, 0], [0.3, 0.2, 0.1], [0.3, 0.2, 0.1]])[:, None].repeat(1, 5, 1)
    assert glimpse_overlap(same) == pytest.approx(1.0)
    apart = torch.tensor([[1.0, 0, 0], [0.2, -0.5, -0.5], [0.2, 0.5, 0.5]])[:, None]
    assert glimpse_overlap(apart) == pytest.approx(0.0)
    half = torch.tensor([[1.0, 0, 0], [0.5, -0.25, 0.0], [0.5, 0.25, 0.0]])[:, None]
    assert glimpse_overlap(half) == pytest.approx(0.5 / 1.5, abs=1e-3)  # widths 1, shifted by 0.5: inter 0.5, union 1.5


@pytest.mark.slow
def test_location_report_gives_gains_with_intervals(pretrained):
    model = fresh(pretrained)
    x, y, _ = quadrant_batch(40, 11)
    report = location_report(model, (x * 255).round().to(torch.uint8), y)
    assert set(report["accuracy"]) == {"learned", "centre", "shuffled"}
    assert set(report["gain_ci95"]) == {"centre@2", "shuffled@2"}
    for mean, low, high in report["gain_ci95"].values():
        assert low <= mean <= high
    # the mean distance of glimpse 2's centre from the image centre, as a share of the side (at most
    # half the diagonal), from the model's own glimpses
    images = (x * 255).round().to(torch.uint8).float() / 255
    with torch.no_grad():
        own = fresh(pretrained).eval()(images).glimpses[1]  # [B, 3]: s, tx, ty in [-1, 1] units
    expected = float((own[:, 1] ** 2 + own[:, 2] ** 2).sqrt().mean() / 2)
    assert report["glimpse2_offset"] == pytest.approx(expected, abs=1e-3)
    assert 0 <= report["glimpse2_offset"] <= 2**0.5 / 2


# --- A toy where only the location decides: the class shows only in a small glimpse on the object. ---
STRIPE_SIZE = 65
STRIPE_SCALE = 65 / 17  # 17 px glimpses: the whole-image glimpse samples every 4th pixel
OBJECT = 32


def stripes_batch(n, seed):
    """Dark photos with one 32 px object in a random quadrant: 1 px stripes, horizontal for class 0 and
    vertical for class 1. The whole-image glimpse samples every 4th row and column, so it sees a flat
    patch (where the object is, not what it is); only a small glimpse on the object resolves the stripes."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=gen)
    quad = torch.randint(0, 4, (n,), generator=gen)
    x = torch.full((n, 3, STRIPE_SIZE, STRIPE_SIZE), 0.05)
    wave = 0.4 + 0.6 * (torch.arange(OBJECT) % 2).float()
    for i in range(n):
        patch = wave[:, None].expand(OBJECT, OBJECT) if y[i] == 0 else wave[None, :].expand(OBJECT, OBJECT)
        r, c = divmod(int(quad[i]), 2)
        x[i, :, r * 33 : r * 33 + OBJECT, c * 33 : c * 33 + OBJECT] = patch
    return x, y, quad


def stripes_model():
    return build_model("mgnet", num_classes=2, image_size=STRIPE_SIZE, n_glimpses=2, scale=STRIPE_SCALE)


@pytest.fixture(scope="module")
def knows_the_classes():
    """A small MGNet taught the classes with glimpse 2 forced to random candidate glimpses (some land on the
    object), so it can read the stripes when it looks at them but has never chosen where to look."""
    torch.manual_seed(0)
    model = stripes_model()
    assert model.glimpse_size() == 17
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    grid = location.candidate_grid(3)
    model.train()
    for step in range(100):
        x, y, _ = stripes_batch(32, 10_000 + step)
        u = grid[torch.randint(0, len(grid), (32,), generator=gen)]
        loss = model.loss(model(x, glimpse_params=model.place(u)[None]), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.state_dict()


def continue_training(state, stage):
    model = stripes_model()
    model.load_state_dict(state)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    criterion = torch.nn.CrossEntropyLoss()
    for step in range(60):
        x, y, _ = stripes_batch(32, 20_000 + step)
        model.train()
        loss, _ = training_loss(model, model, x, y, criterion, stage)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def where_it_looks(model):
    """(share of glimpse 2's box on the object, accuracy after glimpse 2 with its own glimpse, with the
    glimpse moved to the centre at the same scale), on 200 held-out photos."""
    x, y, quad = stripes_batch(200, 999)
    with torch.no_grad():
        out = model(x)
        centred = out.glimpses[1:].clone()
        centred[..., 1:] = 0
        acc_centred = float((model(x, glimpse_params=centred).logits[-1].argmax(-1) == y).float().mean())
    acc_own = float((out.logits[-1].argmax(-1) == y).float().mean())
    s, tx, ty = out.glimpses[1].unbind(1)  # box = centre +- s in [-1, 1] coordinates, 64 px across
    half, cx, cy = s * 32, (tx + 1) * 32, (ty + 1) * 32
    ox, oy = (quad % 2 * 33).float(), (quad // 2 * 33).float()
    w = (torch.minimum(cx + half, ox + OBJECT) - torch.maximum(cx - half, ox)).clamp_min(0)
    h = (torch.minimum(cy + half, oy + OBJECT) - torch.maximum(cy - half, oy)).clamp_min(0)
    return float((w * h / (2 * half) ** 2).mean()), acc_own, acc_centred


@pytest.mark.slow
def test_a_short_location_stage_learns_to_look_at_the_object_and_the_paper_loss_alone_does_not(knows_the_classes):
    paper_on_object, paper_own, paper_centred = where_it_looks(continue_training(knows_the_classes, None))
    stage_on_object, stage_own, stage_centred = where_it_looks(
        continue_training(knows_the_classes, LocationStage(weight=1.0))
    )
    numbers = (paper_on_object, paper_own, paper_centred, stage_on_object, stage_own, stage_centred)
    # The same steps with the paper's loss alone leave glimpse 2 mostly off the object ...
    assert paper_on_object < 0.45, numbers
    # ... the location stage moves it onto the object, and that is what makes the answer right.
    assert stage_on_object >= 0.45 and stage_on_object >= paper_on_object + 0.1, numbers
    assert stage_own >= 0.85 and stage_own - stage_centred >= 0.1, numbers
