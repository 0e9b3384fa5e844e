"""The ranker as Triton serves it, reached only through tritonclient's gRPC API.

Inference takes Triton's cheapest standard path: one `ModelInferRequest` built from a template
(tensor metadata set once) carrying binary tensors. Where ranking and Triton share a host (a
sidecar in the pod, or loopback locally), the input tensors go through Triton's system shared
memory instead (`shared_memory.py`): the features are written straight into a registered region and
the request carries only their offsets. Control calls (readiness, model loads, region registration)
use tritonclient's asyncio client.

An inference call is never cancelled. The Triton of the nvidia-pytriton wheel (2.51) can crash when
a client cancels a call just as it completes (a race in its gRPC frontend, fixed upstream later:
triton-inference-server/server#7368, #8034); the bench's overload steps hit it. So the ranking
service stops *waiting* at its budget and answers DEADLINE_EXCEEDED, while the call runs on: each
request carries its budget as Triton's "timeout" parameter, and the model's queue policy rejects a
request still queued past it, so late work is dropped by Triton itself. A shared-memory slot is
freed only once Triton is done with the call, never while Triton may still read it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc
import numpy as np
import tritonclient.grpc.aio as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from funnel.features import NUM_CATEGORICAL, NUM_DENSE, FeatureBatch
from funnel.runtime.channels import channel_options
from funnel.runtime.errors import DeadlineExceeded, Unavailable
from funnel.runtime.tls import PLAINTEXT, Tls
from funnel.triton.model_repository import CATEGORICAL_INPUT, DENSE_INPUT, SCORE_OUTPUT
from funnel.triton.shared_memory import InputRegion, Slot

log = logging.getLogger("funnel.ranking.triton")
_MESSAGE_BYTES = 64 * 1024 * 1024
# How much longer than its budget an abandoned call may run before gRPC gives up on it: only a Triton
# that never answers gets there (a queued request is rejected at its timeout, a running one finishes).
_BACKSTOP_S = 5.0


@dataclass
class Scores:
    values: np.ndarray  # float32, one per input row
    model_version: str


class TritonRanker:
    def __init__(
        self, url: str, model_name: str, max_batch: int, tls: Tls = PLAINTEXT, shared_memory_rows: int = 0
    ) -> None:
        """`shared_memory_rows` > 0 asks for a system shared memory region of that many feature rows
        (split into slots for concurrent calls); 0 sends every tensor in the gRPC message."""
        self.url = url
        self.model_name = model_name
        self.max_batch = max_batch
        creds = tls.channel_credentials() if tls.calls_with_tls else None
        options = channel_options(_MESSAGE_BYTES, tls=tls)
        # Round-robin over every Triton pod behind a headless Service (`dns:///triton:8001`);
        # (mutual) TLS when this process trusts a CA, as for every other hop.
        self._control = triton.InferenceServerClient(url, creds=creds, channel_args=options)
        self._channel = (
            grpc.aio.secure_channel(url, creds, options=options) if creds else grpc.aio.insecure_channel(url, options)
        )
        self._infer = service_pb2_grpc.GRPCInferenceServiceStub(self._channel).ModelInfer
        self._template = request_template(model_name)
        self.region = InputRegion(shared_memory_rows) if shared_memory_rows > 0 else None
        self._registered = False

    @property
    def uses_shared_memory(self) -> bool:
        return self._registered

    def features_buffer(self, rows: int) -> tuple[FeatureBatch, Slot | None]:
        """Where to write `rows` feature rows: a shared-memory slot when one is free and registered
        (the request then carries only offsets), else fresh arrays sent in the message."""
        slot = self.region.acquire(rows) if self._registered and self.region is not None else None
        if slot is not None:
            return slot.batch(rows), slot
        return FeatureBatch(np.empty((rows, NUM_DENSE), np.float32), np.empty((rows, NUM_CATEGORICAL), np.int64)), None

    async def model_ready(self, timeout_s: float = 1.0) -> bool:
        """Whether the model is ready; also (re-)registers the shared-memory region with a Triton that
        lost it (a restart), so the cheap path comes back by itself."""
        try:
            ready = bool(await self._control.is_model_ready(self.model_name, client_timeout=timeout_s))
        except InferenceServerException:
            ready = False
        if ready and self.region is not None and not self._registered:
            await self._register(timeout_s)
        return ready

    async def _register(self, timeout_s: float) -> None:
        region = self.region
        assert region is not None
        try:
            await self._control.unregister_system_shared_memory(region.name, client_timeout=timeout_s)
            await self._control.register_system_shared_memory(
                region.name, region.key, region.byte_size, client_timeout=timeout_s
            )
        except InferenceServerException as exc:
            log.warning("Triton refused the shared-memory region; tensors go in the gRPC message",
                        extra={"region": region.name, "error": exc.message()})  # fmt: skip
            return
        self._registered = True
        log.info("shared-memory region registered", extra={"region": region.name, "bytes": region.byte_size})

    async def score(self, features: FeatureBatch, slot: Slot | None, timeout_s: float) -> Scores:
        """Score every row: one Triton request, split only above the model's max batch. `slot` is
        where `features` lives when it is in shared memory; it is released once this call and
        Triton are both done with it."""
        if timeout_s <= 0:
            if slot is not None:
                slot.release()
            raise DeadlineExceeded("no time left to call Triton")
        lease = _Lease(slot) if slot is not None else None
        try:
            if slot is not None and len(features) <= self.max_batch:
                try:
                    return await self._call(shared_request(self._template, slot, len(features)), timeout_s, lease)
                except Unavailable as exc:
                    if "shared memory" not in str(exc).lower():
                        raise
                    # Triton restarted and forgot the region: this call goes the plain way, and the
                    # readiness watch registers the region again.
                    self._registered = False
            step = self.max_batch
            requests = [
                plain_request(self._template, features.dense[i : i + step], features.categorical[i : i + step])
                for i in range(0, len(features), step)
            ]
            parts = await asyncio.gather(*(self._call(request, timeout_s) for request in requests))
        finally:
            if lease is not None:
                lease.drop()
        versions = {part.model_version for part in parts}
        return Scores(np.concatenate([part.values for part in parts]), ",".join(sorted(versions)))

    async def _call(
        self, request: service_pb2.ModelInferRequest, timeout_s: float, lease: _Lease | None = None
    ) -> Scores:
        """One inference, waited for at most `timeout_s` and never cancelled (see the module's note)."""
        request.parameters["timeout"].int64_param = max(1, int(timeout_s * 1_000_000))
        call = asyncio.ensure_future(self._infer(request, timeout=timeout_s + _BACKSTOP_S))
        if lease is not None:
            lease.hold()
        call.add_done_callback(lambda done: _finished(done, lease))
        try:
            async with asyncio.timeout(timeout_s):
                response = await asyncio.shield(call)  # a timeout or a cancelled caller stops the wait only
        except TimeoutError:
            raise DeadlineExceeded(f"Triton did not answer within {timeout_s * 1000:.0f} ms") from None
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise DeadlineExceeded(f"Triton did not answer within {timeout_s * 1000:.0f} ms") from exc
            raise Unavailable(f"Triton {self.url} model {self.model_name}: {exc.details()}") from exc
        return Scores(np.frombuffer(response.raw_output_contents[0], dtype=np.float32), response.model_version)

    async def reload(self, timeout_s: float = 120.0) -> list[str]:
        """Load the newest version of the model through the model-control API; its ready versions."""
        try:
            await self._control.load_model(self.model_name, client_timeout=timeout_s)
            index = await self._control.get_model_repository_index(as_json=True, client_timeout=5.0)
        except InferenceServerException as exc:
            raise Unavailable(f"Triton {self.url} could not load {self.model_name}: {exc.message()}") from exc
        models = index.get("models", [])
        return sorted(m["version"] for m in models if m.get("name") == self.model_name and m.get("state") == "READY")

    async def close(self) -> None:
        if self.region is not None:
            if self._registered:
                try:
                    await self._control.unregister_system_shared_memory(self.region.name, client_timeout=1.0)
                except InferenceServerException:
                    pass  # Triton is gone: nothing holds the region there any more
            self.region.close()
        await self._channel.close()
        await self._control.close()


class _Lease:
    """A shared-memory slot freed when its last holder lets go: the call that writes the features
    into it, and each Triton inference reading from it."""

    def __init__(self, slot: Slot) -> None:
        self.slot = slot
        self.holders = 1

    def hold(self) -> None:
        self.holders += 1

    def drop(self) -> None:
        self.holders -= 1
        if self.holders == 0:
            self.slot.release()


def _finished(call: asyncio.Future, lease: _Lease | None) -> None:
    """When an inference ends, answered or not: free its hold on the slot, and read its outcome so
    an abandoned call's error is not reported as never retrieved."""
    if lease is not None:
        lease.drop()
    if not call.cancelled():
        call.exception()


def request_template(model_name: str) -> service_pb2.ModelInferRequest:
    """The parts of every inference request that never change: model, tensor names, types, widths."""
    request = service_pb2.ModelInferRequest(model_name=model_name)
    for name, datatype, width in ((DENSE_INPUT, "FP32", NUM_DENSE), (CATEGORICAL_INPUT, "INT64", NUM_CATEGORICAL)):
        request.inputs.add(name=name, datatype=datatype, shape=[0, width])
    request.outputs.add(name=SCORE_OUTPUT)
    return request


def plain_request(
    template: service_pb2.ModelInferRequest, dense: np.ndarray, categorical: np.ndarray
) -> service_pb2.ModelInferRequest:
    """An inference request carrying the tensors' bytes in the message."""
    request = service_pb2.ModelInferRequest()
    request.CopyFrom(template)
    request.inputs[0].shape[0] = request.inputs[1].shape[0] = len(dense)
    request.raw_input_contents.extend((dense.tobytes(), categorical.tobytes()))
    return request


def shared_request(template: service_pb2.ModelInferRequest, slot: Slot, rows: int) -> service_pb2.ModelInferRequest:
    """An inference request naming where the tensors of `rows` rows lie in the shared-memory region."""
    request = service_pb2.ModelInferRequest()
    request.CopyFrom(template)
    for tensor, (offset, size) in zip(request.inputs, slot.extents(rows), strict=True):
        tensor.shape[0] = rows
        tensor.parameters["shared_memory_region"].string_param = slot.region_name
        tensor.parameters["shared_memory_offset"].int64_param = offset
        tensor.parameters["shared_memory_byte_size"].int64_param = size
    return request
