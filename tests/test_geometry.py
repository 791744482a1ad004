import numpy as np
import pytest
import torch

from mgnet import geometry
from mgnet.analysis import analyze, display_crop, focus_map
from mgnet.model import MGNet, build_model


def smooth_image(size, seed=0):
    """A smooth random image, so bilinear resampling differences stay tiny."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    chans = [np.sin(rng.uniform(2, 6) * xx + rng.uniform(0, 3)) * np.cos(rng.uniform(2, 6) * yy) for _ in range(3)]
    return (np.stack(chans, -1) * 0.5 + 0.5).astype(np.float32)


@pytest.mark.parametrize("params", [(1.0, 0.0, 0.0), (0.3, 0.4, -0.2), (0.2, -0.8, 0.8), (0.5, 0.5, 0.5)])
@pytest.mark.parametrize("image_size,glimpse", [(128, 48), (224, 96), (64, 27)])
def test_box_crop_equals_the_glimpse_the_network_sampled(params, image_size, glimpse):
    img = smooth_image(image_size)
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    sampled = MGNet.sample(x, torch.tensor([params]), glimpse)[0].permute(1, 2, 0).numpy()
    box = geometry.glimpse_boxes(params, image_size, glimpse)
    cropped = geometry.crop(img, box, glimpse)
    np.testing.assert_allclose(cropped, sampled, atol=2e-3)
    assert box[2] - box[0] == pytest.approx(params[0] * (image_size - 1) * glimpse / (glimpse - 1))


def test_full_glimpse_box_covers_the_image_exactly():
    np.testing.assert_allclose(geometry.glimpse_boxes((1, 0, 0), 128, 128), [0, 0, 128, 128])


def test_boxes_in_the_original_photo_match_the_photo_content():
    """A box drawn on the full-resolution photo shows the same content as the glimpse."""
    photo = (smooth_image(600)[:, :, :] * 255).astype(np.uint8)[:450]  # 600 wide, 450 high
    model = build_model("mgnet", num_classes=4, image_size=64, n_glimpses=3).eval()
    result = analyze(model, photo)
    assert result.boxes.shape == (3, 4) and result.seen.shape == (3, 27, 27, 3)
    for t in range(3):
        crop = display_crop(photo, result.boxes[t], size=27).astype(np.float32)
        seen = result.seen[t].astype(np.float32)
        assert np.abs(crop - seen).mean() < 4.0  # same region, resampled from a different resolution
    x0, y0, x1, y1 = result.boxes[1]
    assert -5 < x0 < x1 < 605 and -5 < y0 < y1 < 455


def test_box_mask_and_focus_map():
    m = geometry.box_mask((1.5, 0, 3, 2), 4, 3)
    np.testing.assert_allclose(m, [[0, 0.5, 1, 0], [0, 0.5, 1, 0], [0, 0, 0, 0]])
    boxes = np.array([[0, 0, 100, 80], [10, 10, 30, 30], [60, 40, 100, 80]])
    fm = focus_map(boxes, 100, 80, blur=0)
    assert fm.max() == pytest.approx(1.0)
    assert fm[20, 20] > fm[60, 80] > 0  # the smaller glimpse is denser
    assert fm[5, 50] == 0  # the first (whole-image) glimpse is skipped


def test_location_check_moves_only_the_positions_of_later_glimpses():
    from mgnet import build_model
    from mgnet.analysis import analyze, location_check

    torch.manual_seed(0)
    model = build_model("mgnet", num_classes=10, image_size=64, n_glimpses=3).eval()
    image = (np.random.default_rng(0).random((50, 80, 3)) * 255).astype(np.uint8)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    check = location_check(model, image, n_random=5, seed=1)
    a = analyze(model, image)
    assert check.target == a.predicted()
    np.testing.assert_allclose(check.own, a.probs[:, check.target], atol=1e-5)
    assert check.centre.shape == (3,) and check.moved.shape == (5, 3) and check.moved_params.shape == (5, 3, 3)
    np.testing.assert_allclose(check.centre[0], check.own[0], atol=1e-5)  # glimpse 1 is never moved
    np.testing.assert_allclose(check.moved[:, 0], check.own[0], atol=1e-5)
    moved = check.moved_params[:, 1:]
    np.testing.assert_allclose(moved[..., 0], np.broadcast_to(a.params[1:, 0], moved[..., 0].shape), atol=1e-6)
    assert (np.abs(moved[..., 1:]) <= 1 - moved[..., :1] + 1e-6).all()  # every moved glimpse stays inside
    assert np.abs(moved[..., 1:]).max() > 0.05  # and they really moved
    again = location_check(model, image, n_random=5, seed=1)
    np.testing.assert_array_equal(again.moved, check.moved)  # fixed seed: reproducible
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items()) and not model.training
    with pytest.raises(ValueError, match="single look"):
        location_check(build_model("baseline", num_classes=10, image_size=64), image)
    with pytest.raises(ValueError, match="single look"):
        location_check(model, image, n_glimpses=1)
