"""python -m services.gateway [--flags]: serve the public Recommender API."""

from funnel.runtime.native import single_threaded_native_libraries

single_threaded_native_libraries()  # before numpy, FAISS and torch load

from funnel.runtime.config import load_or_exit  # noqa: E402
from funnel.runtime.server import run  # noqa: E402
from services.gateway.servicer import RecommenderService  # noqa: E402
from services.gateway.settings import GatewaySettings  # noqa: E402


def main() -> None:
    settings = load_or_exit(GatewaySettings)
    run("gateway", settings, lambda runtime: RecommenderService(runtime, settings))


if __name__ == "__main__":
    main()
