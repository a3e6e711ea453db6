import numpy as np
import pytest
import torch

from dus_gym.core.discrepancy import CMDMonitor, learning_status


def test_learning_status_is_mean_true_class_probability():
    probabilities = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.25, 0.25]])
    labels = torch.tensor([0, 2, 1])
    assert learning_status(probabilities, labels) == pytest.approx((0.7 + 0.3 + 0.25) / 3)


def test_running_mean_and_discrepancy_by_hand():
    monitor = CMDMonitor(2)
    statuses = [[0.5, 0.1], [0.7, 0.3], [0.9, 0.2]]
    for s in statuses:
        d = monitor.update(s)
    c = np.mean(statuses, axis=0)  # running mean = plain mean of the statuses
    assert monitor.cumulative == pytest.approx(c)
    assert d == pytest.approx([(c[0] - c[1]) / 2, (c[1] - c[0]) / 2])
    assert monitor.gap == pytest.approx(c[0] - c[1])
    # the running-mean recursion (docs/method.md): c_t = (t-1)/t c_{t-1} + s_t / t
    monitor.update([0.1, 0.1])
    assert monitor.cumulative == pytest.approx(3 / 4 * c + np.array([0.1, 0.1]) / 4)


def test_three_modalities_discrepancy_sums_to_zero():
    monitor = CMDMonitor(3)
    monitor.update([0.9, 0.3, 0.3])
    assert monitor.discrepancy == pytest.approx([0.4, -0.2, -0.2])
    assert monitor.discrepancy.sum() == pytest.approx(0.0)


def test_exponential_window_forgets_old_statuses():
    mean, ema = CMDMonitor(2), CMDMonitor(2, window=2)
    for s in [[0.9, 0.1]] * 5 + [[0.1, 0.9]] * 5:
        mean.update(s)
        ema.update(s)
    assert mean.cumulative == pytest.approx([0.5, 0.5])
    assert ema.cumulative[0] < 0.15 and ema.cumulative[1] > 0.85
    first = CMDMonitor(2, window=4)
    first.update([0.8, 0.4])  # no bias towards the zero start
    assert first.cumulative == pytest.approx([0.8, 0.4])


def test_cmd_moves_toward_the_modality_that_learns():
    monitor = CMDMonitor(2)
    gaps = []
    for t in range(1, 50):
        monitor.update([min(1.0, 0.1 + 0.02 * t), 0.1])
        gaps.append(monitor.discrepancy[0])
    assert all(b > a for a, b in zip(gaps, gaps[1:], strict=False))


def test_bad_status_rejected():
    monitor = CMDMonitor(2)
    with pytest.raises(ValueError):
        monitor.update([0.1, float("nan")])
    with pytest.raises(ValueError):
        monitor.update([0.1, 0.2, 0.3])
    with pytest.raises(ValueError):
        CMDMonitor(1)


def test_state_dict_round_trip():
    monitor = CMDMonitor(2)
    monitor.update([0.3, 0.1])
    other = CMDMonitor(2)
    other.load_state_dict(monitor.state_dict())
    other.update([0.5, 0.5])
    monitor.update([0.5, 0.5])
    assert other.cumulative == pytest.approx(monitor.cumulative) and other.t == 2
