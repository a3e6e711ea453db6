"""CleanRL-style PPO on a DUS env through Gymnasium's own vector API (single file, no SB3).

The N envs come from ``gymnasium.make_vec(env_id, num_envs=N)``, which for a DUS id builds
:class:`dus_gym.envs.vector.gymnasium_vector_env.DUSVectorEnv`: the N learners train in one batched computation. The
envs are asked for Gymnasium's same-step auto-reset, so that the transition stored at step t is
(obs_t, a_t, r_t, done_t) as in CleanRL's ``ppo_continuous_action.py``, whose algorithm this
follows (GAE, clipped surrogate, value clipping off, Gaussian policy with a state-independent log
std, actions clipped to the Box before stepping). A truncation ends the return like a termination
(as CleanRL does); a DUS episode only truncates when the learner diverges.

    pip install tyro        # CleanRL's command-line parser (in the test extra)
    python examples/cleanrl_ppo.py --env-id dus_gym/Synthetic-v0 --num-envs 4 --total-timesteps 2048
    tensorboard --logdir runs

As in CleanRL's scripts, the settings are a dataclass read by tyro, the run logs to TensorBoard
under ``runs/<run name>`` (episodic return, final validation accuracy, losses, steps/s) and, with
``--save-model`` (the default), saves the agent's weights there as ``<exp name>.cleanrl_model``.
A short run (``--total-timesteps 16 --env-kwargs '{"n_iterations": 20, "iterations_per_step": 10}'``)
is a test (tests/test_examples.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import tyro
from gymnasium.vector import AutoresetMode
from torch import nn
from torch.distributions import Normal
from torch.utils.tensorboard import SummaryWriter

import dus_gym  # noqa: F401 (registers the DUS ids)


@dataclass(frozen=True)
class Args:
    """The run's settings (CleanRL's names and defaults, scaled to expensive env steps)."""

    exp_name: str = "cleanrl_ppo"
    """the name of this experiment (the saved model's file name)"""
    runs_dir: str = "runs"
    """the folder of the TensorBoard runs"""
    save_model: bool = True
    """save the agent's weights into the run folder at the end"""
    env_id: str = "dus_gym/Synthetic-v0"
    env_kwargs: str = "{}"
    seed: int = 1
    total_timesteps: int = 2048
    num_envs: int = 4
    num_steps: int = 64
    learning_rate: float = 3e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    num_minibatches: int = 4
    update_epochs: int = 10
    clip_coef: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5


def layer_init(layer: nn.Linear, std: float = float(np.sqrt(2)), bias: float = 0.0) -> nn.Linear:
    """Orthogonal weights, constant bias (CleanRL's initialisation)."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


class Agent(nn.Module):
    """Separate actor and critic MLPs (64-64, tanh) and a learned log std per action."""

    def __init__(self, obs_dim: int, act_dim: int) -> None:
        super().__init__()
        self.critic = nn.Sequential(layer_init(nn.Linear(obs_dim, 64)), nn.Tanh(), layer_init(nn.Linear(64, 64)),
                                    nn.Tanh(), layer_init(nn.Linear(64, 1), std=1.0))
        self.actor_mean = nn.Sequential(layer_init(nn.Linear(obs_dim, 64)), nn.Tanh(), layer_init(nn.Linear(64, 64)),
                                        nn.Tanh(), layer_init(nn.Linear(64, act_dim), std=0.01))
        self.actor_logstd = nn.Parameter(torch.zeros(1, act_dim))

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        """V(x)."""
        return self.critic(x)

    def get_action_and_value(self, x: torch.Tensor, action: torch.Tensor | None = None
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """A sampled (or the given) action, its log-probability, the policy entropy and V(x)."""
        mean = self.actor_mean(x)
        dist = Normal(mean, self.actor_logstd.expand_as(mean).exp())
        if action is None:
            action = dist.sample()
        return action, dist.log_prob(action).sum(1), dist.entropy().sum(1), self.critic(x)


def parse_args(argv: Sequence[str] | None = None) -> Args:
    """The command line as :class:`Args` (tyro, as CleanRL)."""
    return tyro.cli(Args, args=argv, description=__doc__.splitlines()[0])


def train(args: Args) -> dict[str, Any]:
    """Run PPO; return the finished episodes' returns and final validation accuracies, the losses and the run folder."""
    run_name = f"{args.env_id.replace('/', '-')}__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_dir = Path(args.runs_dir) / run_name
    writer = SummaryWriter(str(run_dir))
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" +
                    "\n".join(f"|{key}|{value}|" for key, value in asdict(args).items()))
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    envs = gym.make_vec(args.env_id, num_envs=args.num_envs, vectorization_mode="vector_entry_point",
                        autoreset_mode=AutoresetMode.SAME_STEP, **json.loads(args.env_kwargs))
    assert isinstance(envs.single_action_space, gym.spaces.Box), "this script is for the Box action"
    low, high = envs.single_action_space.low, envs.single_action_space.high
    obs_dim, act_dim = envs.single_observation_space.shape[0], envs.single_action_space.shape[0]
    agent = Agent(obs_dim, act_dim)
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)
    batch_size = args.num_envs * args.num_steps
    minibatch_size = max(batch_size // args.num_minibatches, 1)
    num_iterations = max(args.total_timesteps // batch_size, 1)

    obs = torch.zeros((args.num_steps, args.num_envs, obs_dim))
    actions = torch.zeros((args.num_steps, args.num_envs, act_dim))
    logprobs = torch.zeros((args.num_steps, args.num_envs))
    rewards = torch.zeros((args.num_steps, args.num_envs))
    dones = torch.zeros((args.num_steps, args.num_envs))
    values = torch.zeros((args.num_steps, args.num_envs))
    record: dict[str, Any] = {"episode_return": [], "final_val_acc": [], "policy_loss": [], "value_loss": []}
    global_step = 0
    returns_so_far = np.zeros(args.num_envs)

    start = time.time()
    next_obs_np, _ = envs.reset(seed=args.seed)
    next_obs, next_done = torch.tensor(next_obs_np), torch.zeros(args.num_envs)
    for iteration in range(1, num_iterations + 1):
        for step in range(args.num_steps):
            global_step += args.num_envs
            obs[step], dones[step] = next_obs, next_done
            with torch.no_grad():
                action, logprob, _, value = agent.get_action_and_value(next_obs)
            values[step], actions[step], logprobs[step] = value.flatten(), action, logprob
            next_obs_np, reward, terminations, truncations, infos = envs.step(np.clip(action.numpy(), low, high))
            done = np.logical_or(terminations, truncations)
            rewards[step] = torch.tensor(reward, dtype=torch.float32)
            next_obs, next_done = torch.tensor(next_obs_np), torch.tensor(done, dtype=torch.float32)
            returns_so_far += reward
            for i in np.flatnonzero(done):  # same-step auto-reset: the ended episode's last info is final_info
                record["episode_return"].append(float(returns_so_far[i]))
                record["final_val_acc"].append(float(infos["final_info"]["val_acc"][i]))
                writer.add_scalar("charts/episodic_return", record["episode_return"][-1], global_step)
                writer.add_scalar("charts/final_val_acc", record["final_val_acc"][-1], global_step)
                returns_so_far[i] = 0.0

        with torch.no_grad():  # generalised advantage estimation
            next_value = agent.get_value(next_obs).reshape(1, -1)
            advantages = torch.zeros_like(rewards)
            last = torch.zeros(args.num_envs)
            for t in reversed(range(args.num_steps)):
                not_done = 1.0 - (next_done if t == args.num_steps - 1 else dones[t + 1])
                following = next_value if t == args.num_steps - 1 else values[t + 1]
                delta = rewards[t] + args.gamma * following * not_done - values[t]
                last = delta + args.gamma * args.gae_lambda * not_done * last
                advantages[t] = last
            returns = advantages + values

        b_obs, b_actions = obs.reshape(-1, obs_dim), actions.reshape(-1, act_dim)
        b_logprobs, b_advantages = logprobs.reshape(-1), advantages.reshape(-1)
        b_returns = returns.reshape(-1)
        indices = np.arange(batch_size)
        for _ in range(args.update_epochs):
            np.random.shuffle(indices)
            for begin in range(0, batch_size, minibatch_size):
                mb = indices[begin:begin + minibatch_size]
                _, newlogprob, entropy, newvalue = agent.get_action_and_value(b_obs[mb], b_actions[mb])
                ratio = (newlogprob - b_logprobs[mb]).exp()
                mb_adv = b_advantages[mb]
                if len(mb) > 1:
                    mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                pg_loss = torch.max(-mb_adv * ratio,
                                    -mb_adv * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)).mean()
                v_loss = 0.5 * ((newvalue.view(-1) - b_returns[mb]) ** 2).mean()
                loss = pg_loss - args.ent_coef * entropy.mean() + args.vf_coef * v_loss
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                optimizer.step()
        record["policy_loss"].append(pg_loss.item())
        record["value_loss"].append(v_loss.item())
        writer.add_scalar("losses/policy_loss", pg_loss.item(), global_step)
        writer.add_scalar("losses/value_loss", v_loss.item(), global_step)
        writer.add_scalar("losses/entropy", entropy.mean().item(), global_step)
        writer.add_scalar("charts/SPS", global_step / (time.time() - start), global_step)
        done_returns = record["episode_return"][-args.num_envs:]
        print(f"iteration {iteration}/{num_iterations}: {iteration * batch_size} env steps, "
              f"{(iteration * batch_size) / (time.time() - start):.1f} steps/s, "
              f"mean return of the last episodes {np.mean(done_returns) if done_returns else float('nan'):.3f}, "
              f"policy loss {record['policy_loss'][-1]:.4f}, value loss {record['value_loss'][-1]:.4f}", flush=True)
    if args.save_model:
        model_path = run_dir / f"{args.exp_name}.cleanrl_model"
        torch.save(agent.state_dict(), model_path)
        print(f"model saved to {model_path}")
        record["model_path"] = str(model_path)
    envs.close()
    writer.close()
    record["run_dir"] = str(run_dir)
    return record


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse the command line and train."""
    return train(parse_args(argv))


if __name__ == "__main__":
    main()
