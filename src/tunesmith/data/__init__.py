"""Loading training data: read rows from files or the hub, normalise them to chat examples, split them."""
