import pytest

from dus_gym.core.config import CMDConfig, ConfigError, LearnerConfig, RunConfig, from_dict
from tests.helpers import REWARD_WEIGHTS


def test_from_dict_nested_and_types():
    config = from_dict(RunConfig, {"task": "synthetic", "learner": {"lr": "1e-3", "batch_size": 32.0},
                                   "cmd": {"source": "probe", "window": None}, "n_iterations": 5})
    assert config.learner.lr == 1e-3 and config.learner.batch_size == 32 and config.cmd.source == "probe"


@pytest.mark.parametrize("data, message", [
    ({"learner": {"batchsize": 3}}, "did you mean 'batch_size'"),
    ({"learner": {"batch_size": "many"}}, "must be an integer"),
    ({"tensorboard": "yes"}, "true or false"),
    ({"learner": 3}, "must be a mapping"),
    ({"cmd": {"source": "test"}}, "cmd.source"),
    ({"n_iterations": None}, "exactly one of n_iterations and epochs"),
    ({"n_iterations": None, "epochs": -1}, "epochs must be > 0"),
    ({"learner": {"unimodal_loss": "sum"}}, "unimodal_loss"),
])
def test_bad_configs_raise_with_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(RunConfig, data)


def test_budget_in_iterations_from_epochs():
    assert RunConfig(n_iterations=None, epochs=2.5, learner=LearnerConfig(batch_size=64)).budget(1000) == 40
    assert RunConfig(n_iterations=7).budget(1000) == 7
    assert CMDConfig().source == "train"


@pytest.mark.parametrize("key", REWARD_WEIGHTS)
def test_nan_reward_weights_are_refused_in_python_and_by_the_env(key):
    from dus_gym.core.config import EnvConfig
    from dus_gym.envs.env import DUSEnv

    with pytest.raises(ConfigError, match=f"'env.{key}' is nan"):
        EnvConfig(**{key: float("nan")})
    with pytest.raises(ConfigError, match="finite"):
        DUSEnv(n_iterations=4, task_kwargs={"hidden_dim": 4}, **{key: float("inf")})


def test_values_in_messages_are_bounded():
    from dus_gym.core.config import RunConfig, from_dict

    nested = [[list(range(10_000))] * 10_000] * 3
    with pytest.raises(ConfigError) as info:
        from_dict(RunConfig, {"seed": nested})
    assert len(str(info.value)) < 400
