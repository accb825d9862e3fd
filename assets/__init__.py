"""Files the code ships with: CLIP tokenizers, SDXL configs, the page's script and style, the embedded shapes model
and its judge. Found through importlib.resources, so a checkout and an installed wheel (a Space's `pip install .`)
read them the same way."""

from importlib.resources import files
from pathlib import Path

ROOT = Path(str(files(__name__)))
