"""Reference agents: the normalised scores by hand, and the strength agents are the rules they name."""

import numpy as np
import pytest

from dus_gym.experiments.reference import normalised_scores

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def test_normalised_scores_by_hand():
    returns = {"uniform": [1.0, 1.2, 1.1], "constant[16,128]": [1.5, 1.8, 1.6], "constant[128,64]": [0.9, 1.0, 1.0],
               "heuristic": [1.4, 1.5, 1.5]}
    s = normalised_scores(returns)
    # best constant 16,128: mean 1.6333 vs uniform 1.1; paired gains 0.5, 0.6, 0.5: mean 0.5333, sd 0.0577,
    # t(0.975, 2) = 4.3027: interval 0.5333 -+ 0.1434 = [0.390, 0.677], above zero
    assert s.best == "constant[16,128]" and s.defined
    assert s.gain[1] == pytest.approx(0.5333333 - 4.302653 * 0.0577350 / np.sqrt(3), abs=1e-5)
    assert s.scores["uniform"] == 0 and s.scores["constant[16,128]"] == pytest.approx(1.0)
    assert s.scores["heuristic"] == pytest.approx((1.4666667 - 1.1) / (1.6333333 - 1.1))
    assert s.scores["constant[128,64]"] == pytest.approx((0.9666667 - 1.1) / 0.5333333)
    noisy = normalised_scores({"uniform": [1.0, 1.2, 1.1], "constant[16,128]": [1.3, 1.0, 1.1]})  # gain +0.033 +- ...
    assert noisy.best == "constant[16,128]" and not noisy.defined and np.isnan(noisy.scores["uniform"])


def test_strength_reference_agents_are_the_rules_they_name():
    import gymnasium as gym

    from dus_gym.experiments.reference import SamplerAgent
    from dus_gym.samplers.rules import ConstantSampler, HeuristicSampler, UniformSampler

    env = gym.make("dus_gym/SyntheticFamily-v1", n_iterations=20, iterations_per_step=10,
                   task_kwargs={"n_samples": 300, "hidden_dim": 8}).unwrapped
    obs, _ = env.reset(seed=0)
    assert SamplerAgent(env, UniformSampler(32, env.n_modalities)).act(obs).tolist() == [-1.0]
    heuristic = HeuristicSampler(32, env.n_modalities, alpha=15.0, allocation=True, n_min=4)
    assert env.actions.alpha(SamplerAgent(env, heuristic).act(obs)) == pytest.approx(15.0)
    with pytest.raises(ValueError, match="no strength action"):
        SamplerAgent(env, ConstantSampler(32, env.n_modalities, [32] * env.n_modalities)).act(obs)
