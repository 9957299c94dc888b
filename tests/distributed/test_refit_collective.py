"""The collective refit wire format over a real gloo group of three processes (no engine).

Rank 0 broadcasts a stream of mixed dtypes and shapes in several buckets; ranks 1 and 2
(separate processes, outside any torch.distributed world) must rebuild exactly the same
(name, tensor) stream, and a second refit over the same group must work as well.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.slow


def stream(version: int):
    g = torch.Generator().manual_seed(version)
    return [("embed.weight", torch.randn(40, 16, generator=g)),
            ("norm.weight", torch.randn(16, generator=g).to(torch.bfloat16)),
            ("layers.0.mlp.weight", torch.randn(33, 17, generator=g).t()),  # non-contiguous
            ("counts", torch.arange(7, dtype=torch.int64) * version),
            ("flag", torch.tensor([True, False]))]


def _receiver(rank: int, port: int, queue) -> None:
    from gdpo_megatron.generation.collective import join_refit_group, receive_weights

    group = join_refit_group("127.0.0.1", port, rank, 3, "gloo")
    for _ in range(2):
        queue.put((rank, [(name, tensor.clone()) for name, tensor in receive_weights(group)]))
    group.close()


def test_broadcast_stream_reaches_every_member_twice():
    import torch.multiprocessing as mp

    from gdpo_megatron.distributed.setup import free_port
    from gdpo_megatron.generation.collective import broadcast_weights, join_refit_group, receive_weights

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    children = [ctx.Process(target=_receiver, args=(rank, port, queue)) for rank in (1, 2)]
    for child in children:
        child.start()
    group = join_refit_group("127.0.0.1", port, 0, 3, "gloo")
    with pytest.raises(RuntimeError, match="rank 0 is the sender"):
        next(receive_weights(group))
    for version in (1, 2):
        moved = broadcast_weights(group, iter(stream(version)), bucket_bytes=1024)
        assert moved["buckets"] == 3 and moved["tensors"] == 5
        assert moved["bytes"] == sum(t.numel() * t.element_size() for _, t in stream(version))
        received = dict(queue.get(timeout=60) for _ in children)
        for rank in (1, 2):
            got = received[rank]
            assert [name for name, _ in got] == [name for name, _ in stream(version)]
            for (_, want), (_, have) in zip(stream(version), got):
                assert have.dtype == want.dtype and torch.equal(have, want)
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    group.close()
