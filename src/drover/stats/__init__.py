"""Statistics: the scoreboard workers write and the server the master runs on it."""
