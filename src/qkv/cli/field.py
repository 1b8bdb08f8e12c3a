"""``qkv field``: what one pixel of an image model depends on, as a PNG and/or an explorer page."""

from __future__ import annotations

import argparse
from pathlib import Path

from qkv.cli.common import add_device_option

__all__ = ["add_parser", "pixel_fields"]

FIELD_PAGE_LIMIT = 256  # pixels: up to this many, the page holds every pixel's maps (click to switch)


def add_parser(verbs: argparse._SubParsersAction, name: str) -> None:
    p = verbs.add_parser(
        name,
        help="show which earlier pixels a pixel of an image model depends on (receptive field, mask, attention)",
        description="For PIXEL of a test image, draw what the prediction of the image model in RUN depends on: the "
        "gradient of its logits w.r.t. every input pixel (PixelCNN's receptive field and blind spot, Gated "
        "PixelCNN's without), MADE's connectivity mask, and the pixel Transformer's attention per layer.",
    )
    p.add_argument("run_dir", metavar="RUN", help="a run or checkpoint directory of qkv train configs/digits-*.toml")
    p.add_argument("--pixel", required=True, help="ROW,COLUMN of the pixel, e.g. 4,2")
    p.add_argument("--image", type=int, default=0, help="which test image to use as the context (default 0)")
    p.add_argument("--png", type=Path, help="draw the maps here (.png, .svg or .pdf)")
    p.add_argument("--html", type=Path, help="write the explorer page here (.html): every pixel's maps, click one")
    add_device_option(p)
    p.set_defaults(run=run)


def _parse_pixel(text: str) -> tuple[int, int]:
    from qkv.errors import ConfigError

    try:
        row, column = (int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"--pixel takes ROW,COLUMN, e.g. 4,2; got {text!r}") from None
    return row, column


def pixel_fields(model, image, label, pixel: tuple[int, int]) -> dict:  # noqa: ANN001
    """``{name: (H, W)}`` maps of what ``pixel`` depends on for this model: gradients always; MADE's mask; the
    Transformer's attention per layer (heads averaged)."""
    from qkv.analysis import made_connectivity, pixel_attention, pixel_dependence
    from qkv.models.pixels import MADE, PixelTransformer

    c = model.config
    maps = {"gradient": pixel_dependence(model, image, label, pixel)}
    if isinstance(model, MADE):
        maps["MADE mask"] = made_connectivity(model)[pixel[0] * c.width + pixel[1]].view(c.height, c.width).double()
    if isinstance(model, PixelTransformer):
        attention, _ = pixel_attention(model, image, label, pixel)
        maps.update({f"attention, layer {i}": a for i, a in enumerate(attention)})
    return maps


def run(args: argparse.Namespace) -> int:
    import torch

    from qkv.attention.memory import activation_bytes, check_fits
    from qkv.cli.common import HTML_SUFFIXES, check_output_files
    from qkv.errors import ConfigError
    from qkv.models.pixels import PixelTransformer
    from qkv.runs import load_image_model
    from qkv.training.images import run_image_data
    from qkv.visualization.grid import IMAGE_SUFFIXES
    from qkv.visualization.html import PixelFields, write_attention_page
    from qkv.visualization.images import plot_pixel_fields

    if args.png is None and args.html is None:
        raise ConfigError("say where to write: --png FILE and/or --html FILE")
    check_output_files({"png": IMAGE_SUFFIXES, "html": HTML_SUFFIXES}, png=args.png, html=args.html)
    pixel = _parse_pixel(args.pixel)
    model, info = load_image_model(args.run_dir, args.device)
    c = model.config
    if not (0 <= pixel[0] < c.height and 0 <= pixel[1] < c.width):
        raise ConfigError(f"--pixel {args.pixel} is outside the {c.height}x{c.width} image")
    pages = c.pixels if args.html is not None and c.pixels <= FIELD_PAGE_LIMIT else 1  # maps computed
    check_fits(  # one forward and backward over one image, and the maps kept (one per pixel shown, several kinds)
        activation_bytes(model, c.pixels) + pages * c.pixels * 4 * 4,
        f"the fields of a {c.height}x{c.width} image",
        "use a smaller image size",
        next(model.parameters()).device,
    )
    images, labels = run_image_data(info.meta["config"]).splits["test"]
    if not 0 <= args.image < len(images):
        raise ConfigError(f"--image {args.image}: the test split has {len(images)} images")
    device = next(model.parameters()).device
    image = images[args.image : args.image + 1].to(device)
    label = labels[args.image : args.image + 1].to(device) if c.num_classes else None
    name = Path(args.run_dir).name
    if args.png is not None:
        maps = pixel_fields(model, image, label, pixel)
        print(f"written: {plot_pixel_fields(maps, pixel, args.png, image=image[0], levels=c.levels, title=name)}")
    if args.html is not None:
        chosen = pixel[0] * c.width + pixel[1]
        every = list(range(c.pixels)) if c.pixels <= FIELD_PAGE_LIMIT else [chosen]
        per_pixel = [pixel_fields(model, image, label, divmod(p, c.width)) for p in every]
        maps = {key: torch.stack([m[key].cpu() for m in per_pixel]) for key in per_pixel[0]}
        fields = PixelFields(maps, every, image[0].cpu(), c.levels, chosen)
        attentions, tokens = [], []
        if isinstance(model, PixelTransformer):  # its own weights over the sequence, for the attention views
            attentions = [w[0].cpu() for w in model.attention(image, label)]
            values = image[0].flatten().tolist()
            tokens = ["start"] + [f"{p // c.width},{p % c.width}={values[p]}" for p in range(c.pixels - 1)]
        path = write_attention_page(args.html, attentions, tokens, title=f"{name}: pixel fields", pixel_fields=fields)
        print(f"written: {path}")
    return 0
