"""The shared runtime on a real in-process grpc.aio server: error mapping, request ids, artifacts."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import numpy as np
import pytest

from funnel.artifacts.store import ArtifactError, latest_version, read_manifest, save_array, write_manifest
from funnel.runtime.calls import CallPolicy, InstrumentedServer
from funnel.runtime.errors import InvalidArgument, Unavailable
from funnel.v2 import ranking_pb2, ranking_pb2_grpc
from launcher.ports import bind_reserved_port


class Raising(ranking_pb2_grpc.RankingServicer):
    def __init__(self, error: Exception) -> None:
        self.error = error

    async def Rank(self, request, context):
        raise self.error


async def call_raising(error: Exception, metadata=()) -> grpc.aio.AioRpcError:
    server = grpc.aio.server()
    ranking_pb2_grpc.add_RankingServicer_to_server(Raising(error), InstrumentedServer(server, CallPolicy()))
    port = bind_reserved_port(server)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await ranking_pb2_grpc.RankingStub(channel).Rank(
                    ranking_pb2.RankRequest(), timeout=5, metadata=metadata
                )
            return caught.value
    finally:
        await server.stop(0)


def test_an_uncaught_exception_becomes_internal_with_the_request_id_not_unknown_with_a_trace():
    error = asyncio.run(call_raising(ZeroDivisionError("secret stack detail"), (("x-request-id", "req-123"),)))
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == "internal error (request id req-123)"
    assert ("x-request-id", "req-123") in tuple(error.trailing_metadata())


@pytest.mark.parametrize(
    ("raised", "code"),
    [
        (InvalidArgument("bad k"), grpc.StatusCode.INVALID_ARGUMENT),
        (Unavailable("triton down"), grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_typed_errors_map_to_their_status_and_message(raised, code):
    error = asyncio.run(call_raising(raised))
    assert error.code() == code
    assert error.details() == raised.message


def test_a_malformed_request_id_is_replaced_by_a_fresh_one():
    error = asyncio.run(call_raising(RuntimeError(), (("x-request-id", "bad id with spaces"),)))
    returned = dict(error.trailing_metadata())["x-request-id"]
    assert returned != "bad id with spaces" and len(returned) == 32


def make_version(root: Path, name: str, complete: bool = True) -> Path:
    directory = root / name
    directory.mkdir(parents=True)
    save_array(directory, "vectors", np.ones((3, 2), dtype=np.float32))
    if complete:
        write_manifest(directory, name, {"note": "test"})
    return directory


def test_latest_version_ignores_directories_without_a_manifest(tmp_path):
    make_version(tmp_path, "20260101T000000Z")
    make_version(tmp_path, "20260301T000000Z", complete=False)
    assert latest_version(tmp_path).name == "20260101T000000Z"
    assert latest_version(tmp_path / "missing") is None


def test_manifest_records_shapes_and_detects_corruption(tmp_path):
    directory = make_version(tmp_path, "v1")
    manifest = read_manifest(directory)
    assert manifest["files"]["vectors.npy"]["shape"] == [3, 2]
    assert json.loads((directory / "manifest.json").read_text())["note"] == "test"
    with (directory / "vectors.npy").open("r+b") as handle:
        handle.seek(-1, 2)
        handle.write(b"\x01")
    with pytest.raises(ArtifactError, match="does not match its manifest checksum"):
        read_manifest(directory)
