"""python -m services.ranking [--flags]: serve the ranking stage in front of Triton."""

from funnel.runtime.config import load_or_exit
from funnel.runtime.server import run
from services.ranking.servicer import RankingService
from services.ranking.settings import RankingSettings


def main() -> None:
    settings = load_or_exit(RankingSettings)
    run("ranking", settings, lambda runtime: RankingService(runtime, settings))


if __name__ == "__main__":
    main()
