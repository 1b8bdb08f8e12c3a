"""``qkv field``: what one pixel of an image model depends on, as a PNG and/or an explorer page."""

from __future__ import annotations

import argparse
from pathlib import Path

from qkv.cli.common import add_device_option

__all__ = ["add_parser"]


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


def run(args: argparse.Namespace) -> int:

    from qkv.analysis.pixels import FIELD_PAGE_LIMIT, pixel_explorer, pixel_maps
    from qkv.attention.memory import activation_bytes, check_fits
    from qkv.cli.common import HTML_SUFFIXES, check_output_files
    from qkv.errors import ConfigError
    from qkv.runs import load_image_model
    from qkv.training.images import run_image_data
    from qkv.visualization.grid import IMAGE_SUFFIXES
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
        maps = pixel_maps(model, image, label, pixel)
        print(f"written: {plot_pixel_fields(maps, pixel, args.png, image=image[0], levels=c.levels, title=name)}")
    if args.html is not None:
        explorer = pixel_explorer(model, image, label, pixel, title=f"{name}: pixel fields")
        print(f"written: {explorer.save(args.html)}")
    return 0
