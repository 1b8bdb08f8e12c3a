"""Autoregressive image models: the gradient of pixel d's logits w.r.t. the input is zero at d and every pixel after it
in the model's order and non-zero before it; PixelCNN's blind spot is found by the same test and Gated PixelCNN has
none; MADE's masks for 3 inputs are the texts' figure; the likelihood is the sum of the per-pixel log-probabilities;
sampling is reproducible, and the Transformer's cached sampling equals recomputation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qkv.analysis import made_connectivity, pixel_attention, pixel_dependence
from qkv.decoding.images import sample_images
from qkv.errors import ConfigError, ShapeError
from qkv.models.pixels import MADE, PIXEL_FAMILIES, GatedPixelCNN, PixelCNN, PixelTransformer
from qkv.models.pixels.base import GatedPixelCNNConfig, MADEConfig, PixelCNNConfig, PixelTransformerConfig
from qkv.models.pixels.cached import sample_gated

AUTOREGRESSIVE = [name for name in PIXEL_FAMILIES if name != "pixel-independent"]


def _model(name: str, **overrides):
    torch.manual_seed(0)
    config_class, model_class = PIXEL_FAMILIES[name]
    settings = {"hidden": 32, "layers": 4, "num_heads": 4, "num_classes": 10, **overrides}
    return model_class(config_class(**settings)).double().eval()


def dependence(model, images, labels, pixel: int) -> torch.Tensor:
    """``(H, W)`` gradient-norm map of raster pixel ``pixel``'s logits (qkv.analysis.pixel_dependence)."""
    return pixel_dependence(model, images, labels, divmod(pixel, model.config.width))


def _images(batch: int = 3, levels: int = 17) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, levels, (batch, 8, 8), generator=g), torch.tensor([3, 1, 7][:batch])


@pytest.mark.parametrize("name", AUTOREGRESSIVE)
@pytest.mark.parametrize("pixel", [0, 1, 9, 27, 63])
def test_every_pixel_depends_only_on_the_pixels_before_it(name, pixel):
    model = _model(name)
    images, labels = _images()
    order = model.sampling_order()
    rank = {p: k for k, p in enumerate(order)}
    grad = dependence(model, images, labels, pixel).flatten()
    later = torch.tensor([rank[p] >= rank[pixel] for p in range(64)])
    assert torch.all(grad[later] == 0), f"{name}: pixel {pixel} depends on pixels at or after it"
    if rank[pixel] > 0:
        assert grad[~later].max() > 0, f"{name}: pixel {pixel} depends on nothing before it"


def test_made_with_random_orderings_follows_each_masks_ordering():
    model = _model("made", ordering="random", num_masks=3)
    images, labels = _images()
    for mask in range(3):
        model.active = mask
        order = model.sampling_order()
        assert order != list(range(64)) or mask == 0
        rank = {p: k for k, p in enumerate(order)}
        for pixel in (order[0], order[10], order[40]):
            grad = dependence(model, images, labels, pixel).flatten()
            later = torch.tensor([rank[p] >= rank[pixel] for p in range(64)])
            assert torch.all(grad[later] == 0)


def test_pixelcnn_has_the_blind_spot_and_gated_pixelcnn_has_none():
    """Pixel (4, 2): every pixel of rows 0-3 and (4, 0), (4, 1) is within reach of both models' kernels. Plain
    PixelCNN misses the ones up and to the right beyond its first layer ((3, 6), (3, 7)); Gated PixelCNN sees all."""
    images, labels = _images()
    pixel = 4 * 8 + 2
    before = torch.arange(64) < pixel
    plain = dependence(_model("pixelcnn", layers=6), images, labels, pixel).flatten()
    blind = [p for p in range(pixel) if plain[p] == 0]
    assert blind and {3 * 8 + 6, 3 * 8 + 7} <= set(blind), blind
    gated = dependence(_model("gated-pixelcnn", layers=4), images, labels, pixel).flatten()
    assert torch.all(gated[before] > 0), [p for p in range(pixel) if gated[p] == 0]


def test_made_masks_for_three_inputs_are_the_texts_figure():
    """Output 1 sees nothing, output 2 sees x1, output 3 sees x1 and x2: paths through the product of the layer masks
    and the direct connections, for every connectivity; a nonzero gradient only ever flows along such a path."""
    torch.manual_seed(0)
    model = MADE(MADEConfig(height=1, width=3, levels=2, hidden=8, layers=2, num_masks=4)).double()
    images = torch.tensor([[[1, 0, 1]], [[0, 1, 1]]])
    for m in range(4):
        connected = made_connectivity(model, mask=m)
        assert connected.int().tolist() == [[0, 0, 0], [1, 0, 0], [1, 1, 0]]
        model.active = m
        for output in range(3):
            grad = pixel_dependence(model, images, None, (0, output)).flatten()
            assert torch.all((grad > 0) <= connected[output])


def test_pixel_attention_is_the_transformers_row_for_that_pixel_over_the_grid():
    model = _model("pixel-transformer")
    images, labels = _images()
    maps, start = pixel_attention(model, images, labels, (3, 5))
    weights = model.attention(images[:1], labels[:1])
    index = 3 * 8 + 5
    for layer, w in enumerate(weights):
        row = w[0, :, index].mean(dim=0)  # keys: start, pixel 0, 1, ...
        torch.testing.assert_close(start[layer], row[0])
        torch.testing.assert_close(maps[layer].flatten()[:index], row[1 : index + 1])
        assert maps[layer].flatten()[index:].eq(0).all()
        torch.testing.assert_close(maps[layer].sum() + start[layer], torch.tensor(1.0, dtype=torch.float64))


@pytest.mark.parametrize("name", list(PIXEL_FAMILIES))
def test_log_prob_is_the_sum_of_each_pixels_log_probability(name):
    model = _model(name, num_masks=1)
    images, labels = _images()
    logits = model(images, labels).logits
    by_hand = torch.log_softmax(logits, dim=-1).gather(-1, images[..., None]).sum(dim=(1, 2, 3))
    torch.testing.assert_close(model.log_prob(images, labels), by_hand, rtol=1e-12, atol=1e-12)


def test_made_ensemble_log_prob_is_the_log_of_the_mean_probability():
    model = _model("made", num_masks=3)
    images, labels = _images()
    joint = []
    for m in range(3):
        logits = model.predict(model.embed(images), labels, mask=m)
        joint.append(-F.cross_entropy(logits.permute(0, 3, 1, 2), images, reduction="none").sum(dim=(1, 2)))
    want = torch.stack(joint).exp().mean(dim=0).log()
    torch.testing.assert_close(model.log_prob(images, labels), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", list(PIXEL_FAMILIES))
def test_sampling_with_a_seed_is_reproducible_and_in_range(name):
    model = _model(name).float()
    first = sample_images(model, 4, labels=3, seed=5)
    assert first.shape == (4, 8, 8) and first.dtype == torch.long
    assert int(first.min()) >= 0 and int(first.max()) < 17
    assert torch.equal(first, sample_images(model, 4, labels=3, seed=5))


@pytest.mark.parametrize("name", AUTOREGRESSIVE)
def test_at_28x28_every_model_is_autoregressive_by_gradients(name):
    """MNIST's size: the gradient of pixel d's logits is zero at d and after it (in the model's order), and not zero
    everywhere before it (MADE with a random ordering: its own order)."""
    size = {"height": 28, "width": 28, "levels": 2, "hidden": 16, "layers": 2, "num_heads": 2}
    model = _model(name, **size, **({"ordering": "random", "num_masks": 2} if name == "made" else {}))
    images = torch.randint(0, 2, (2, 28, 28), generator=torch.Generator().manual_seed(4))
    labels = torch.tensor([3, 8])
    rank = {p: k for k, p in enumerate(model.sampling_order())}
    for pixel in (0, 29, 14 * 28 + 3, 783):
        grad = dependence(model, images, labels, pixel).flatten()
        later = torch.tensor([rank[p] >= rank[pixel] for p in range(784)])
        assert torch.all(grad[later] == 0), f"{name}: pixel {pixel} depends on pixels at or after it"
        if rank[pixel] > 0:
            assert grad[~later].max() > 0, f"{name}: pixel {pixel} depends on nothing before it"


def test_the_transformers_cached_sampling_equals_recomputation():
    for window in (0, 2):
        model = _model("pixel-transformer", window=window)
        labels = torch.tensor([0, 4, 9])
        cached = sample_images(model, 3, labels, seed=11)
        recomputed = sample_images(model, 3, labels, seed=11, cached=False)
        assert torch.equal(cached, recomputed)
        assert len(set(cached.flatten().tolist())) > 3  # really sampled, not a constant image


@pytest.mark.parametrize("name", ["gated-pixelcnn", "pixelsnail"])
@pytest.mark.parametrize(("kernel", "first_kernel", "attention_every"), [(3, 7, 2), (5, 3, 1)])
def test_gated_and_pixelsnail_cached_sampling_equals_recomputation(name, kernel, first_kernel, attention_every):
    """The stacks' caches (and PixelSNAIL's cached keys) give every pixel the logits that the full forward of the
    sampled images gives (float64, to rounding), and so the very pixels that recomputing the whole image for every
    pixel draws from the same generator: 17 levels, three classes, a non-square image, every first pixel."""
    model = _model(name, kernel=kernel, first_kernel=first_kernel, attention_every=attention_every, height=6, width=9)
    labels = torch.tensor([0, 4, 9])
    logits = torch.empty(3, 6, 9, 17, dtype=torch.float64)
    with torch.no_grad():
        cached = sample_gated(model, labels, 3, torch.Generator().manual_seed(11), logits_out=logits)
        torch.testing.assert_close(logits, model(cached, labels).logits, rtol=1e-12, atol=1e-12)
    assert torch.equal(cached, sample_images(model, 3, labels, seed=11))  # (sample_images takes this route)
    assert torch.equal(cached, sample_images(model, 3, labels, seed=11, cached=False))
    assert len(set(cached.flatten().tolist())) > 3  # really sampled, not a constant image


def test_the_transformers_window_restricts_attention_to_the_neighbourhood():
    model = _model("pixel-transformer", window=1)
    images, labels = _images()
    grad = dependence(model, images, labels, 5 * 8 + 4).view(8, 8)  # pixel (5, 4)
    near = torch.zeros(8, 8, dtype=torch.bool)
    near[4, 3:6] = True  # the row above, one column aside
    near[5, 3] = True  # the pixel to its left
    # through 4 layers the field grows by one row and column per layer; a pixel 5 rows up stays out of reach
    assert grad[0].eq(0).all() and grad[near].gt(0).all()


def test_bad_input_is_named():
    model = _model("pixelcnn")
    images, labels = _images()
    with pytest.raises(ShapeError, match=r"images must be int64 \(batch, 8, 8\)"):
        model(images[:, :4], labels)
    with pytest.raises(ShapeError, match=r"pixel levels must be in \[0, 17\)"):
        model(images + 20, labels)
    with pytest.raises(ConfigError, match="class-conditional"):
        model(images)
    with pytest.raises(ConfigError, match=r"labels must be classes in \[0, 10\)"):
        model(images, torch.tensor([3, 1, 12]))
    with pytest.raises(ConfigError, match="not class-conditional"):
        sample_images(_model("pixelcnn", num_classes=0), 2, labels=1)
    with pytest.raises(ConfigError, match="class-conditional: give a class"):
        sample_images(model, 2)
    for config in (PixelCNNConfig(kernel=4), GatedPixelCNNConfig(levels=1), PixelTransformerConfig(hidden=30)):
        with pytest.raises(ConfigError):
            config.validate()
    assert isinstance(PixelCNN(PixelCNNConfig()), PixelCNN) and GatedPixelCNN and PixelTransformer


def test_pixelsnail_at_28x28_sees_every_earlier_pixel_and_nothing_after():
    """The text's point: a convolution is local attention, self-attention global. With two gated layers (kernels
    of 3: a few pixels of reach) and one attention block, every pixel before (14, 3) of a 28 × 28 image moves its
    logits and none from it on; Gated PixelCNN, the same layers without attention, reaches only its neighbourhood."""
    settings = {"height": 28, "width": 28, "levels": 2, "layers": 2, "first_kernel": 3, "attention_every": 2}
    g = torch.Generator().manual_seed(2)
    images, labels = torch.randint(0, 2, (2, 28, 28), generator=g), torch.tensor([3, 8])
    pixel = 14 * 28 + 3
    before = torch.arange(28 * 28) < pixel
    snail = dependence(_model("pixelsnail", **settings), images, labels, pixel).flatten()
    assert torch.all(snail[~before] == 0) and torch.all(snail[before] > 0), int((snail[before] == 0).sum())
    gated = dependence(_model("gated-pixelcnn", **settings), images, labels, pixel).flatten()
    assert torch.all(gated[~before] == 0) and (gated[before] > 0).sum() < before.sum() // 4


def test_pixelsnails_attention_weights_every_earlier_pixel_and_not_itself_or_after():
    from qkv.models.families import family_of, get_family
    from qkv.visualization import capture_attention

    model = _model("pixelsnail", height=28, width=28, levels=2, layers=2, attention_every=1)
    assert family_of(model) is get_family("pixelsnail")  # (a Gated PixelCNN with attention: its own family)
    images = torch.randint(0, 2, (1, 28, 28), generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), capture_attention(model) as cap:
        model(images, torch.tensor([5]))
    assert len(cap.layers) == 2  # an attention block after each gated layer
    for layer in cap.layers:
        weights = cap.weights(layer)[0]  # (heads, 784, 784) over the pixels in raster order
        not_before = torch.ones(784, 784, dtype=torch.bool).triu()  # the pixel itself and every one after it
        assert torch.all(weights[:, not_before] == 0) and torch.all(weights[:, ~not_before] > 0)
        rows = torch.ones(4, 784)
        rows[:, 0] = 0  # the first pixel has nothing before it: no weights (not NaN)
        torch.testing.assert_close(weights.sum(-1), rows, rtol=1e-5, atol=1e-6)


def test_pixelsnails_field_view_covers_every_earlier_pixel():
    """`qkv field` / pixel_explorer for PixelSNAIL: its gradient map and each attention block's map are nonzero on
    every pixel before the chosen one and zero from it on."""
    from qkv.analysis import pixel_maps

    model = _model("pixelsnail", height=12, width=12, levels=2, layers=2, attention_every=1).float()
    images = torch.randint(0, 2, (1, 12, 12), generator=torch.Generator().manual_seed(4))
    maps = pixel_maps(model, images, torch.tensor([2]), (6, 5))
    assert set(maps) == {"gradient", "attention, block 0", "attention, block 1"}
    before = (torch.arange(144) < 6 * 12 + 5).view(12, 12)
    for name, values in maps.items():
        assert torch.all(values[~before] == 0) and torch.all(values[before] > 0), name


def test_at_28x28_pixelcnn_has_its_blind_spot_and_gated_pixelcnn_has_none():
    """The same test as at 8 × 8, on MNIST's size: for pixel (14, 14), every pixel of the three rows above, from
    three columns left to six right, moves Gated PixelCNN's logits; plain PixelCNN (the same 7 × 7 first kernel,
    then 3 × 3 ones) misses those up and to the right beyond its first kernel's reach."""
    settings = {"height": 28, "width": 28, "levels": 2, "layers": 5, "first_kernel": 7}
    images = torch.randint(0, 2, (2, 28, 28), generator=torch.Generator().manual_seed(6))
    labels = torch.tensor([1, 4])
    pixel = 14 * 28 + 14
    near = [(r, c) for r in range(11, 14) for c in range(11, 21)]  # rows 11-13, columns 11-20
    gated = dependence(_model("gated-pixelcnn", **settings), images, labels, pixel)
    assert all(gated[r, c] > 0 for r, c in near), [(r, c) for r, c in near if gated[r, c] == 0]
    assert torch.all(gated.flatten()[pixel:] == 0)
    plain = dependence(_model("pixelcnn", **settings), images, labels, pixel)
    blind = [(r, c) for r, c in near if plain[r, c] == 0]
    assert blind and all(c > 17 for _, c in blind), blind  # up and to the right, past the first kernel
    assert torch.all(plain.flatten()[pixel:] == 0)


def test_binary_made_has_one_logit_per_pixel_and_the_same_distribution_as_a_sigmoid():
    """levels = 2: the output layer holds one logit z per pixel and the model's logits are (0, z), so p(1) is
    sigmoid(z) exactly; log_prob is the sum of the Bernoulli log-likelihoods computed by PyTorch's own BCE."""
    torch.manual_seed(0)
    model = MADE(MADEConfig(height=3, width=4, levels=2, hidden=16, layers=1, num_masks=1)).double().eval()
    assert model.output.out_features == 12 and model.direct.out_features == 12
    images = torch.randint(0, 2, (5, 3, 4))
    logits = model(images).logits
    assert torch.equal(logits[..., 0], torch.zeros_like(logits[..., 0]))
    z = logits[..., 1]
    bce = torch.nn.functional.binary_cross_entropy_with_logits(z, images.double(), reduction="none").sum((1, 2))
    torch.testing.assert_close(model.log_prob(images), -bce, rtol=1e-12, atol=1e-12)


def test_made_derives_its_masked_weights_once_while_sampling_and_samples_what_the_plain_loop_samples():
    from qkv.attention.frozen import frozen_weights

    torch.manual_seed(0)
    model = MADE(MADEConfig(height=3, width=4, levels=4, hidden=16, layers=2, num_masks=1)).eval()
    with torch.no_grad(), frozen_weights():
        first = model.masked(model.input.weight, 0, 0)
        assert model.masked(model.input.weight, 0, 0) is first  # kept for the context's later forwards
        torch.testing.assert_close(first, model.input.weight * model.mask(0, 0), rtol=0, atol=0)
    with torch.no_grad():
        assert model.masked(model.input.weight, 0, 0) is not first  # outside: made per call, nothing kept
    images = sample_images(model, 5, seed=3)
    # the plain loop, written out: the same draws from the same generator, each pixel from a full forward
    generator = torch.Generator().manual_seed(3)
    want = torch.zeros(5, 3, 4, dtype=torch.long)
    with torch.no_grad():
        for index in model.sampling_order():
            row, column = divmod(index, 4)
            probs = torch.softmax(model(want).logits[:, row, column].float(), dim=-1)
            want[:, row, column] = torch.multinomial(probs, 1, generator=generator)[:, 0]
    assert torch.equal(images, want)
