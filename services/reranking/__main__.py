"""python -m services.reranking [--flags]: serve the re-ranking stage."""

from funnel.runtime.config import load_or_exit
from funnel.runtime.server import run
from services.reranking.servicer import RerankingService
from services.reranking.settings import RerankingSettings


def main() -> None:
    settings = load_or_exit(RerankingSettings)
    run("reranking", settings, lambda runtime: RerankingService(runtime, settings))


if __name__ == "__main__":
    main()
