"""One live session, whatever carries it: admission, the governor's effects, enforcement."""
