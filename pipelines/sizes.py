"""The sizes a studio serves: a declared set, warmed at start, and nothing else (a compiled UNet has static shapes,
so a new size would compile on the request path: ~100 s for SDXL on an H200, every client waiting).

SDXL was fine-tuned on aspect-ratio buckets of about one megapixel; those are its natural declared sizes.
"""

from .errors import InvalidModel

Size = tuple[int, int]  # (width, height) in pixels

# SDXL's aspect-ratio buckets of about a megapixel (the SDXL report's multi-aspect fine-tuning), square first.
SDXL_BUCKETS: tuple[Size, ...] = ((1024, 1024), (1152, 896), (896, 1152), (1216, 832), (832, 1216), (1344, 768), (768, 1344), (1536, 640), (640, 1536))
PRESETS = {"sdxl": SDXL_BUCKETS}
MULTIPLE = 8  # the VAE downsamples by 8: a latent pixel per 8×8 image pixels


def label(size: Size) -> str:
    """(1152, 896) -> '1152x896', the form --sizes and the page use."""
    return f"{size[0]}x{size[1]}"


def parse(items) -> tuple[Size, ...]:
    """--sizes values -> sizes in the order given, duplicates dropped: each item is a preset name (sdxl: every
    SDXL bucket), WIDTHxHEIGHT, or N for the square NxN."""
    sizes: list[Size] = []
    for item in items:
        item = item.strip().lower()
        if item in PRESETS:
            sizes += PRESETS[item]
            continue
        width, cross, height = item.replace("×", "x").partition("x")
        height = height if cross else width  # "1024" is the square 1024x1024
        if not (width.isdigit() and height.isdigit()):
            raise InvalidModel(f"size {item!r} is neither WIDTHxHEIGHT (e.g. 1152x896), a side N (NxN) nor a preset ({', '.join(PRESETS)})")
        sizes.append((int(width), int(height)))
    return tuple(dict.fromkeys(sizes))


def check(sizes: tuple[Size, ...], low: int, high: int) -> tuple[Size, ...]:
    """The sizes, if every side is a multiple of 8 within [low, high] (what the model can render), else InvalidModel."""
    if not sizes:
        raise InvalidModel("no sizes declared: give at least one WIDTHxHEIGHT")
    for size in sizes:
        if any(side % MULTIPLE or not low <= side <= high for side in size):
            raise InvalidModel(f"size {label(size)} is not servable: both sides must be multiples of {MULTIPLE} between {low} and {high} for this model")
    return sizes
