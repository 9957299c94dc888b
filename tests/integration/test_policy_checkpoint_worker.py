"""Checkpoint resume run (launched by test_policy_checkpoint.py; no tests here).

Two updates uninterrupted vs. one update, save, fresh policy, load, one update: the final
probe logprobs, metrics and scheduler lr must be bit-identical on CPU.
"""

import sys

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "distributed"))


def main():
    import torch

    from test_train_step_worker import SEED, make_batch, recipe

    from gdpo_megatron.distributed.setup import destroy_distributed, init_distributed
    from gdpo_megatron.megatron_policy import MegatronPolicy

    work = sys.argv[1]
    r = recipe(1, 1, 2, "token-mean")
    r.policy.optimizer.warmup_steps = 2
    r.policy.optimizer.schedule = "cosine"
    init_distributed(r.policy.parallel, seed=SEED)

    def fresh():
        policy = MegatronPolicy(r)
        policy.load_weights(f"{work}/init")
        return policy

    def step(policy):
        batch = make_batch()
        batch.old_logprobs = policy.compute_logprobs(batch)
        batch.ref_logprobs = batch.old_logprobs - 0.01 * batch.response_mask
        return policy.train(batch, num_mini_batches=1)

    torch.manual_seed(SEED)
    first = MegatronPolicy(r)
    first.save_weights(f"{work}/init")
    a = fresh()
    step(a)
    last_a = step(a)
    b = fresh()
    step(b)
    b.save_checkpoint(f"{work}/ckpt")
    c = fresh()
    c.load_checkpoint(f"{work}/ckpt")
    last_c = step(c)
    probe = make_batch()
    torch.save({"a": a.compute_logprobs(probe), "c": c.compute_logprobs(probe), "ma": last_a, "mc": last_c,
                "updates": (a.updates, c.updates)}, f"{work}/result.pt")
    destroy_distributed()


if __name__ == "__main__":
    main()
