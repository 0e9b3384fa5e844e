"""python -m services.events [--flags]: serve the Events API (users' events into the online store)."""

from funnel.runtime.config import load_or_exit
from funnel.runtime.server import run
from services.events.servicer import EventsService
from services.events.settings import EventsSettings


def main() -> None:
    settings = load_or_exit(EventsSettings)
    run("events", settings, lambda runtime: EventsService(runtime, settings))


if __name__ == "__main__":
    main()
