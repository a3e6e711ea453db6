"""The observation layouts: "cmd" and "modalities" by hand, hidden feature groups, and decode."""

import numpy as np
import pytest

from dus_gym.core.config import ConfigError, EnvConfig, from_dict
from dus_gym.core.discrepancy import CMDMonitor
from dus_gym.core.observation import GLOBAL_FEATURES, MODALITY_FEATURES, ObservationLayout, cmd_observation


def test_observation_layout():
    monitor = CMDMonitor(2)
    monitor.update([0.6, 0.2])
    obs = cmd_observation(monitor, np.array([32, 96]), 64, 0.25)
    assert obs.dtype == np.float32 and obs.shape == (9,)
    assert obs == pytest.approx([0.6, 0.2, 0.6, 0.5, 0.2, -0.2, 0.2, 1.5, 0.25])


def test_modalities_observation_by_hand():
    monitor = CMDMonitor(2)
    monitor.update([0.8, 0.4])
    layout = ObservationLayout("modalities", 2, 32, 120, n_slots=3)
    obs = layout.build(monitor, np.array([16, 48]), 0.25, np.array([0.5, 0.35]), 0.6)
    rows = obs[:24].reshape(3, 8)
    assert rows[0].tolist() == pytest.approx([0.8, 0.2, 1.0, 0.8, 0.5, 0.3, 0.5, 1.0])
    assert rows[1].tolist() == pytest.approx([0.4, -0.2, -1.0, 0.4, 0.35, 0.05, 1.5, 1.0])
    assert rows[2].tolist() == [0.0] * 8 and obs[24:].tolist() == pytest.approx([0.25, 0.6])
    blind = ObservationLayout("modalities", 2, 32, 120, n_slots=3, blind=True)
    b = blind.build(monitor, np.array([16, 48]), 0.25, np.array([0.5, 0.35]), 0.6)
    assert b[:24].reshape(3, 8)[:, :7].max() == 0.0 and b[24:].tolist() == [0.25, 0.0]
    assert len(obs) == layout.size == 3 * len(MODALITY_FEATURES) + len(GLOBAL_FEATURES)


def test_hidden_feature_groups_are_zero_and_the_rest_is_kept():
    monitor = CMDMonitor(2)
    monitor.update([0.7, 0.3])
    full = ObservationLayout("modalities", 2, 32, 60, 3)
    no_cmd = ObservationLayout("modalities", 2, 32, 60, 3, hide=("cmd",))
    no_val = ObservationLayout("modalities", 2, 32, 60, 3, hide=("val",))
    args = (monitor, np.array([40, 24]), 0.5, np.array([0.6, 0.4]), 0.8)
    f = len(MODALITY_FEATURES)
    a, b, c = (layout.build(*args) for layout in (full, no_cmd, no_val))
    col = {name: [k * f + MODALITY_FEATURES.index(name) for k in range(2)] for name in MODALITY_FEATURES}
    val_acc = 3 * f + GLOBAL_FEATURES.index("val_acc")
    for name in ("cumulative", "discrepancy", "relative_discrepancy", "status", "memorisation"):
        assert (b[col[name]] == 0).all() and (a[col[name]] != 0).any()
    assert (b[col["val_status"]] == a[col["val_status"]]).all() and b[val_acc] == a[val_acc] == pytest.approx(0.8)
    for name in ("val_status", "memorisation"):
        assert (c[col[name]] == 0).all()
    assert c[val_acc] == 0 and (c[col["discrepancy"]] == a[col["discrepancy"]]).all()
    assert (b[col["count"]] == a[col["count"]]).all() and (c[col["mask"]] == 1).all()
    with pytest.raises(ConfigError, match="env.hide"):
        from_dict(EnvConfig, {"observation": "modalities", "hide": ["progress"]}, "env")
    with pytest.raises(ConfigError, match="'modalities' observation only"):
        from_dict(EnvConfig, {"hide": ["cmd"]}, "env")


def test_decode_reads_back_what_build_wrote():
    monitor = CMDMonitor(2)
    monitor.update(np.array([0.8, 0.4]))
    monitor.update(np.array([0.6, 0.2]))
    for kind, slots in (("cmd", None), ("modalities", 3)):
        layout = ObservationLayout(kind, 2, 64, 256, slots)
        obs = layout.build(monitor, np.array([8, 192]), 0.25, np.array([0.5, 0.3]), 0.6)
        state = layout.decode(obs)
        np.testing.assert_allclose(state["cumulative"], [0.7, 0.3], atol=1e-6)
        np.testing.assert_allclose(state["discrepancy"], [0.2, -0.2], atol=1e-6)
        np.testing.assert_allclose(state["status"], [0.6, 0.2], atol=1e-6)
        assert state["counts"].tolist() == [8, 192] and state["progress"] == 0.25
