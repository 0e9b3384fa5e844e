"""The ranker as Triton serves it, reached only through tritonclient's asyncio gRPC client."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc.aio as triton
from tritonclient.utils import InferenceServerException

from funnel.runtime.errors import DeadlineExceeded, Unavailable
from services.ranking.model_repository import INPUT_NAME, OUTPUT_NAME


@dataclass
class Scores:
    values: np.ndarray  # float32, one per input row
    model_version: str


class TritonRanker:
    def __init__(self, url: str, model_name: str, max_batch: int) -> None:
        self.url = url
        self.model_name = model_name
        self.max_batch = max_batch
        self._client = triton.InferenceServerClient(url)

    async def model_ready(self, timeout_s: float = 1.0) -> bool:
        try:
            return bool(await self._client.is_model_ready(self.model_name, client_timeout=timeout_s))
        except InferenceServerException:
            return False

    async def score(self, features: np.ndarray, timeout_s: float) -> Scores:
        """Score every row: one Triton request, split only above the model's max batch."""
        if timeout_s <= 0:
            raise DeadlineExceeded("no time left to call Triton")
        chunks = [features[i : i + self.max_batch] for i in range(0, len(features), self.max_batch)]
        results = await asyncio.gather(*(self._infer(chunk, timeout_s) for chunk in chunks))
        versions = {version for _, version in results}
        return Scores(np.concatenate([values for values, _ in results]), ",".join(sorted(versions)))

    async def _infer(self, rows: np.ndarray, timeout_s: float) -> tuple[np.ndarray, str]:
        tensor = triton.InferInput(INPUT_NAME, list(rows.shape), "FP32")
        tensor.set_data_from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
        try:
            result = await self._client.infer(
                self.model_name,
                [tensor],
                outputs=[triton.InferRequestedOutput(OUTPUT_NAME)],
                client_timeout=timeout_s,
            )
        except InferenceServerException as exc:
            status = str(exc.status() or "")
            if "DEADLINE_EXCEEDED" in status:
                raise DeadlineExceeded(f"Triton did not answer within {timeout_s * 1000:.0f} ms") from exc
            raise Unavailable(f"Triton {self.url} model {self.model_name}: {exc.message()}") from exc
        return result.as_numpy(OUTPUT_NAME).reshape(-1), result.get_response().model_version

    async def close(self) -> None:
        await self._client.close()
