"""Frame sampling against docs/method.md section 2, with hand-computed cases."""

import numpy as np
import pytest

from stadapter_deploy.video.sampling import eval_indices, train_indices


def test_eval_uniform_hand_computed():
    # n=16, T=8: seg = 15/8; segment bounds (0,2) (2,4) (4,6) (6,8) (8,9) (9,11) (11,13) (13,15)
    assert eval_indices(16, 8, 0) == [[1, 3, 5, 7, 8, 10, 12, 14]]
    # n=6, T=4: seg = 1.25; round(2.5) = 2 (half to even, as Python's round in the reference)
    assert eval_indices(6, 4, 0) == [[0, 1, 3, 4]]
    assert eval_indices(1, 8, 0) == [[0] * 8]


def test_eval_uniform_has_one_temporal_view():
    with pytest.raises(ValueError, match="temporal_views=1"):
        eval_indices(100, 8, 0, temporal_views=3)


def test_eval_strided_views_hand_computed():
    # n=200, T=8, r=16: length 113, slide 87; 3 views start at 0, round(43.5) = 44, 87
    views = eval_indices(200, 8, 16, temporal_views=3)
    assert [v[0] for v in views] == [0, 44, 87]
    assert views[1] == [44 + 16 * i for i in range(8)]
    assert eval_indices(200, 8, 16) == [[43 + 16 * i for i in range(8)]]  # one view: slide // 2


def test_eval_strided_short_video_repeats_last_frame():
    expected = [0, 16, 32, 48, 49, 49, 49, 49]
    assert eval_indices(50, 8, 16, temporal_views=3) == [expected] * 3


def test_train_uniform_draws_cover_each_segment_inclusive():
    rng = np.random.default_rng(0)
    bounds = [(0, 2), (2, 4), (4, 6), (6, 8), (8, 9), (9, 11), (11, 13), (13, 15)]  # n=16, T=8
    draws = np.array([train_indices(16, 8, 0, rng) for _ in range(2000)])  # [2000, 8]
    for i, (start, end) in enumerate(bounds):
        assert set(draws[:, i]) == set(range(start, end + 1))


def test_train_strided_short_video_clamps():
    rng = np.random.default_rng(0)
    assert train_indices(100, 8, 16, rng) == [0, 16, 32, 48, 64, 80, 96, 99]
    assert train_indices(113, 8, 16, rng) == [16 * i for i in range(8)]  # r*(T-1)+1 >= n


def test_train_strided_start_range():
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(3000):
        idx = train_indices(200, 8, 16, rng)
        assert idx == [idx[0] + 16 * i for i in range(8)]
        starts.add(idx[0])
    assert starts == set(range(0, 88))  # start in [0, n - r*(T-1) - 1] = [0, 87]


def test_train_is_deterministic_under_a_seed():
    a = train_indices(300, 8, 0, np.random.default_rng(5))
    b = train_indices(300, 8, 0, np.random.default_rng(5))
    assert a == b


def test_bad_arguments():
    with pytest.raises(ValueError):
        eval_indices(0, 8, 0)
    with pytest.raises(ValueError):
        train_indices(10, 8, -1, np.random.default_rng(0))
