"""What a user or item id may be, everywhere: the API's checks and the import of a user's own data
hold ids to the same limit. No dependencies, so every image carries it."""

MAX_ID_LENGTH = 128  # characters
