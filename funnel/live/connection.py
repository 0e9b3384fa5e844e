"""Commands that must share one connection, on one Redis or on the cluster node owning a key.

WAIT counts the replicas that have the writes of the connection it is sent on, so it has to follow
the write on that very connection. A client's own pipeline does that on one Redis; a cluster
client routes WAIT to every node, so on a cluster the commands go as one pipeline to the node
that owns the key's slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import PipelineCommand, RedisCluster


async def on_one_connection(
    client: aioredis.Redis | RedisCluster, key: str, commands: Sequence[tuple[Any, ...]]
) -> list[Any]:
    """Each command's answer, in order; a command's error is raised (the first one)."""
    if isinstance(client, RedisCluster):
        await client.initialize()  # the slots, if this client has not learnt them yet
        node = client.get_node_from_key(key)
        piped = [PipelineCommand(n, *command) for n, command in enumerate(commands)]
        await node.execute_pipeline(piped)
        answers = [command.result for command in piped]
    else:
        pipe = client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        answers = await pipe.execute(raise_on_error=False)
    for answer in answers:
        if isinstance(answer, Exception):
            raise answer
    return answers
