"""python -m services.ranking [--flags]: serve the ranking stage in front of Triton."""

from funnel.runtime.native import single_threaded_native_libraries

single_threaded_native_libraries()  # before numpy, FAISS and torch load

from funnel.runtime.config import load_or_exit  # noqa: E402
from funnel.runtime.server import run  # noqa: E402
from services.ranking.servicer import RankingService  # noqa: E402
from services.ranking.settings import RankingSettings  # noqa: E402


def main() -> None:
    settings = load_or_exit(RankingSettings)
    run("ranking", settings, lambda runtime: RankingService(runtime, settings))


if __name__ == "__main__":
    main()
