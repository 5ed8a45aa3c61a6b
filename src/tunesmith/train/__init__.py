"""The training loop and the maths it shares: precision, schedules, loss normalisation, checkpoints."""
