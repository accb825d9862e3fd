"""--sizes: SDXL's aspect buckets by name or WIDTHxHEIGHT, and a clear refusal of anything else."""

import pytest

from pipelines import InvalidModel
from pipelines.sizes import SDXL_BUCKETS, label, parse


def test_sizes_parse_from_presets_and_width_x_height_in_order_without_repeats():
    assert parse(["1152x896", "896X1152", "1152x896"]) == ((1152, 896), (896, 1152))
    assert parse(["1024"]) == ((1024, 1024),)  # a side alone is its square
    assert parse(["sdxl"]) == SDXL_BUCKETS and SDXL_BUCKETS[0] == (1024, 1024) and len(SDXL_BUCKETS) == 9
    assert parse(["768x1344", "sdxl"])[:2] == ((768, 1344), (1024, 1024))
    assert all(w % 64 == 0 and h % 64 == 0 and 0.9 < w * h / 1024**2 < 1.0 + 1e-9 for w, h in SDXL_BUCKETS)  # ~1 megapixel
    assert label((1216, 832)) == "1216x832"


@pytest.mark.parametrize("bad", ["1024x", "x1024", "axb", "big"])
def test_a_size_that_is_neither_a_preset_nor_width_x_height_is_refused(bad):
    with pytest.raises(InvalidModel, match="neither WIDTHxHEIGHT"):
        parse([bad])
