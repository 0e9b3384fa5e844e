"""python -m services.reranking [--flags]: serve the re-ranking stage."""

from funnel.runtime.native import single_threaded_native_libraries

single_threaded_native_libraries()  # before numpy, FAISS and torch load

from funnel.runtime.config import load_or_exit  # noqa: E402
from funnel.runtime.server import run  # noqa: E402
from services.reranking.servicer import RerankingService  # noqa: E402
from services.reranking.settings import RerankingSettings  # noqa: E402


def main() -> None:
    settings = load_or_exit(RerankingSettings)
    run("reranking", settings, lambda runtime: RerankingService(runtime, settings))


if __name__ == "__main__":
    main()
