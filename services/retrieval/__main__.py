"""python -m services.retrieval [--flags]: serve one retrieval shard."""

from funnel.runtime.native import single_threaded_native_libraries

single_threaded_native_libraries()  # before numpy, FAISS and torch load

from funnel.runtime.config import load_or_exit  # noqa: E402
from funnel.runtime.server import run  # noqa: E402
from services.retrieval.servicer import RetrievalService  # noqa: E402
from services.retrieval.settings import RetrievalSettings  # noqa: E402


def main() -> None:
    settings = load_or_exit(RetrievalSettings)
    run(f"retrieval-{settings.shard_index}", settings, lambda runtime: RetrievalService(runtime, settings))


if __name__ == "__main__":
    main()
