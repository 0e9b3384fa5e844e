"""The ranker as Triton serves it, reached only through tritonclient's asyncio gRPC client."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc.aio as triton
from tritonclient.utils import InferenceServerException

from funnel.features import FeatureBatch
from funnel.runtime.channels import channel_options
from funnel.runtime.errors import DeadlineExceeded, Unavailable
from funnel.runtime.tls import PLAINTEXT, Tls
from services.ranking.model_repository import CATEGORICAL_INPUT, DENSE_INPUT, SCORE_OUTPUT


@dataclass
class Scores:
    values: np.ndarray  # float32, one per input row
    model_version: str


def request_tensors(dense: np.ndarray, categorical: np.ndarray) -> list[triton.InferInput]:
    """The ranker's input tensors, named as the model repository writer names them."""
    tensors = [
        triton.InferInput(DENSE_INPUT, list(dense.shape), "FP32"),
        triton.InferInput(CATEGORICAL_INPUT, list(categorical.shape), "INT64"),
    ]
    tensors[0].set_data_from_numpy(np.ascontiguousarray(dense, dtype=np.float32))
    tensors[1].set_data_from_numpy(np.ascontiguousarray(categorical, dtype=np.int64))
    return tensors


class TritonRanker:
    def __init__(self, url: str, model_name: str, max_batch: int, tls: Tls = PLAINTEXT) -> None:
        self.url = url
        self.model_name = model_name
        self.max_batch = max_batch
        # Round-robin over every Triton pod behind a headless Service (`dns:///triton:8001`);
        # (mutual) TLS when this process trusts a CA, as for every other hop.
        self._client = triton.InferenceServerClient(
            url,
            creds=tls.channel_credentials() if tls.calls_with_tls else None,
            channel_args=channel_options(64 * 1024 * 1024, tls=tls),
        )

    async def model_ready(self, timeout_s: float = 1.0) -> bool:
        try:
            return bool(await self._client.is_model_ready(self.model_name, client_timeout=timeout_s))
        except InferenceServerException:
            return False

    async def score(self, features: FeatureBatch, timeout_s: float) -> Scores:
        """Score every row: one Triton request, split only above the model's max batch."""
        if timeout_s <= 0:
            raise DeadlineExceeded("no time left to call Triton")
        step = self.max_batch
        chunks = [
            (features.dense[i : i + step], features.categorical[i : i + step]) for i in range(0, len(features), step)
        ]
        results = await asyncio.gather(*(self._infer(dense, categorical, timeout_s) for dense, categorical in chunks))
        versions = {version for _, version in results}
        return Scores(np.concatenate([values for values, _ in results]), ",".join(sorted(versions)))

    async def _infer(self, dense: np.ndarray, categorical: np.ndarray, timeout_s: float) -> tuple[np.ndarray, str]:
        inputs = request_tensors(dense, categorical)
        try:
            result = await self._client.infer(
                self.model_name, inputs, outputs=[triton.InferRequestedOutput(SCORE_OUTPUT)], client_timeout=timeout_s
            )
        except InferenceServerException as exc:
            status = str(exc.status() or "")
            if "DEADLINE_EXCEEDED" in status:
                raise DeadlineExceeded(f"Triton did not answer within {timeout_s * 1000:.0f} ms") from exc
            raise Unavailable(f"Triton {self.url} model {self.model_name}: {exc.message()}") from exc
        return result.as_numpy(SCORE_OUTPUT).reshape(-1), result.get_response().model_version

    async def reload(self, timeout_s: float = 120.0) -> list[str]:
        """Load the newest version of the model through the model-control API; its ready versions."""
        try:
            await self._client.load_model(self.model_name, client_timeout=timeout_s)
            index = await self._client.get_model_repository_index(as_json=True, client_timeout=5.0)
        except InferenceServerException as exc:
            raise Unavailable(f"Triton {self.url} could not load {self.model_name}: {exc.message()}") from exc
        models = index.get("models", [])
        return sorted(m["version"] for m in models if m.get("name") == self.model_name and m.get("state") == "READY")

    async def close(self) -> None:
        await self._client.close()
