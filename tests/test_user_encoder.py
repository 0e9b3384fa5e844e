"""The user tower at serving time: the numpy path gives the bundle's TorchScript answer, and a tower
it does not know is served by TorchScript."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from funnel.artifacts.catalog import Embeddings
from funnel.artifacts.store import latest_version, read_manifest
from services.retrieval.user_encoder import UserEncoder


def bundle_encoder(artifacts: Path) -> UserEncoder:
    bundle = latest_version(artifacts / "bundles")
    history_length = read_manifest(bundle)["user_tower"]["history_length"]
    return UserEncoder(bundle / "user_tower.pt", Embeddings.load(bundle).items, history_length)


def test_the_numpy_tower_gives_the_torchscript_vector_for_every_history_length_and_country(artifacts):
    encoder = bundle_encoder(artifacts)
    assert encoder.fast is not None, "the trained tower is served by the numpy path"
    rng = np.random.default_rng(3)
    items = len(encoder.item_vectors)
    for length in [0, 1, 2, encoder.history_length - 1, encoder.history_length, 3 * encoder.history_length]:
        for country in range(len(encoder.fast.country)):
            history = rng.integers(0, items, length)  # oldest first; longer than the tower reads, too
            served = encoder.encode(history, country)
            recent = history[-encoder.history_length :][::-1].astype(np.int64)
            expected = encoder.encode_torchscript(recent, country)
            assert served.shape == expected.shape == (1, encoder.item_vectors.shape[1])
            assert served.dtype == np.float32
            np.testing.assert_allclose(served, expected, atol=2e-6)
            # The same items come first in the search the vector drives.
            top = np.argsort(-(encoder.item_vectors @ served[0]))[:50]
            assert top.tolist() == np.argsort(-(encoder.item_vectors @ expected[0]))[:50].tolist()


class OtherTower(torch.nn.Module):
    """A user tower of another shape than the trained one (mean of the history, then a layer)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(dim, dim)

    def forward(
        self, user: torch.Tensor, history: torch.Tensor, mask: torch.Tensor, country: torch.Tensor
    ) -> torch.Tensor:
        pooled = (history * mask.unsqueeze(-1)).sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp(min=1.0)
        return torch.nn.functional.normalize(self.layer(pooled), dim=-1)


def test_a_tower_of_another_shape_is_served_by_torchscript(artifacts, tmp_path):
    bundle = latest_version(artifacts / "bundles")
    vectors = Embeddings.load(bundle).items
    path = tmp_path / "user_tower.pt"
    tower = OtherTower(vectors.shape[1]).eval()
    torch.jit.save(torch.jit.script(tower), str(path))
    encoder = UserEncoder(path, vectors, history_length=5)
    assert encoder.fast is None
    history = np.array([4, 9, 2], dtype=np.int64)
    vector = encoder.encode(history, 1)
    with torch.inference_mode():  # the latest item first, as the tower reads a history
        latest_first = torch.from_numpy(np.asarray(vectors[[2, 9, 4]], dtype=np.float32)[None])
        expected = tower(torch.zeros(1, dtype=torch.int64), latest_first, torch.ones(1, 3), torch.ones(1))
    np.testing.assert_allclose(vector, expected.numpy(), atol=1e-6)
