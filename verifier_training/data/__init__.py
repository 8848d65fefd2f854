"""Data: ``records`` (every sample and step label, the source of truth), ``sampling`` (a
policy's candidates through the server's engine), ``labels`` (step labels: Monte-Carlo
rollouts, or a world's exact checker)."""
