"""python -m services.retrieval [--flags]: serve one retrieval shard."""

from funnel.runtime.config import load_or_exit
from funnel.runtime.server import run
from services.retrieval.servicer import RetrievalService
from services.retrieval.settings import RetrievalSettings


def main() -> None:
    settings = load_or_exit(RetrievalSettings)
    run(f"retrieval-{settings.shard_index}", settings, lambda runtime: RetrievalService(runtime, settings))


if __name__ == "__main__":
    main()
