"""python -m gateway [--flags]: serve the public Recommender API."""

from funnel.runtime.config import load_or_exit
from funnel.runtime.server import run
from gateway.servicer import RecommenderService
from gateway.settings import GatewaySettings


def main() -> None:
    settings = load_or_exit(GatewaySettings)
    run("gateway", settings, lambda runtime: RecommenderService(runtime, settings))


if __name__ == "__main__":
    main()
