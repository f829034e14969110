"""Run state, shutdown and the commands that control them."""
