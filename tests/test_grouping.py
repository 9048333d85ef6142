"""Seeded neighbour grouping (SPEC §2)."""

import numpy as np
import pytest

from ptyparity import grouping
from ptyparity.errors import PtyparityError
from ptyparity.simulate import raster_positions


@pytest.fixture
def positions():
    return raster_positions(128, 32, 4.0)  # 25 x 25 raster, step 4


def test_same_seed_same_groups(positions):
    a = grouping.group_positions(positions, gridsize=2, n_groups=100, seed=7)
    b = grouping.group_positions(positions, gridsize=2, n_groups=100, seed=7)
    c = grouping.group_positions(positions, gridsize=2, n_groups=100, seed=8)
    assert np.array_equal(a.indices, b.indices)
    assert not np.array_equal(a.indices, c.indices)


def test_groups_are_within_max_offset_and_consistent(positions):
    g = grouping.group_positions(positions, gridsize=2, n_groups=300, seed=0)
    assert grouping.default_max_offset(positions) == 6  # ceil(1.5 * 4)
    assert np.abs(g.rel).max() <= 6
    np.testing.assert_allclose(g.pos, positions[g.indices])
    np.testing.assert_allclose(g.centre, g.pos.mean(axis=1))
    np.testing.assert_allclose(g.rel, g.pos - g.centre[:, None])
    assert all(len(set(row)) == 4 for row in g.indices.tolist())  # partners without replacement


def test_partners_are_among_the_nearest_neighbours(positions):
    g = grouping.group_positions(positions, gridsize=2, n_groups=50, neighbor_count=4, seed=1)
    dist = np.linalg.norm(g.pos[:, 1:] - g.pos[:, :1], axis=-1)
    assert dist.max() <= 4 * np.sqrt(2) + 1e-9  # the 4 nearest of a step-4 raster


def test_tight_max_offset_redraws(positions):
    g = grouping.group_positions(positions, gridsize=2, n_groups=200, max_offset=3, seed=0)
    assert np.abs(g.rel).max() <= 3


def test_seeds_without_replacement_up_to_m(positions):
    m = len(positions)
    g = grouping.group_positions(positions, gridsize=1, n_groups=m, seed=3)
    assert sorted(g.indices[:, 0].tolist()) == list(range(m))
    g2 = grouping.group_positions(positions, gridsize=1, n_groups=m + 50, seed=3)
    assert len(g2) == m + 50


def test_gridsize_one_has_zero_offsets(positions):
    g = grouping.group_positions(positions, gridsize=1, n_groups=10, seed=0)
    assert g.indices.shape == (10, 1)
    assert np.all(g.rel == 0)


def test_neighbor_count_too_small_is_a_clear_error(positions):
    with pytest.raises(PtyparityError, match="neighbor_count=2 is too small for gridsize=2.*>= 3"):
        grouping.group_positions(positions, gridsize=2, n_groups=10, neighbor_count=2)


def test_impossible_max_offset_is_a_clear_error(positions):
    with pytest.raises(PtyparityError, match="exceed max_offset=0 px after 1000 redraws"):
        grouping.group_positions(positions, gridsize=2, n_groups=5, max_offset=0)


def test_inference_groups_seed_every_position_once(positions):
    g = grouping.inference_groups(positions, gridsize=2, seed=0)
    assert np.array_equal(g.indices[:, 0], np.arange(len(positions)))
    again = grouping.inference_groups(positions, gridsize=2, seed=0)
    assert np.array_equal(g.indices, again.indices)


def test_unlimited_offsets_keep_the_first_draw(positions):
    # PtychoPINN's convention (ModelConfig.group_offsets = "unlimited"): no redraw, so the
    # groups equal the first draw of the limited rule's generator, offsets beyond max_offset kept.
    kept = grouping.group_positions(positions, gridsize=2, n_groups=200, max_offset=3, seed=0,
                                    enforce_max_offset=False)
    limited = grouping.group_positions(positions, gridsize=2, n_groups=200, max_offset=3, seed=0)
    assert np.abs(kept.rel).max() > 3 >= np.abs(limited.rel).max()
    wide = grouping.group_positions(positions, gridsize=2, n_groups=200, max_offset=100, seed=0)
    assert np.array_equal(kept.indices, wide.indices)  # max_offset 100: nothing was redrawn
    inf = grouping.inference_groups(positions, gridsize=2, max_offset=0, seed=0, enforce_max_offset=False)
    assert len(inf) == len(positions)


def test_group_offsets_convention_chooses_the_rule():
    from ptyparity import training
    from ptyparity.config import ModelConfig
    from ptyparity.simulate import SimConfig, simulate

    data, _ = simulate(SimConfig(N=32, object_size_px=96, seed=1))
    tight = ModelConfig(N=32, max_offset=1)
    with pytest.raises(PtyparityError, match="exceed max_offset=1"):
        training.inference_set(data, tight, neighbor_count=7, seed=0)
    groups = training.inference_set(data, ModelConfig(N=32, max_offset=1, group_offsets="unlimited"),
                                    neighbor_count=7, seed=0)
    assert len(groups) == data.n_patterns and np.abs(groups.rel).max() > 1
