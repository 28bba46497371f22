"""One router per resource; routes parse, authorize, call one service function, return a schema."""
